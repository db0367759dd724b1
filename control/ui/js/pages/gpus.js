// GPUs (/gpus): memory used/total, utilisation, temperature and processes (named after the
// instances that own them, when signed in) of every GPU of this host; when NVML cannot be used,
// that is said plainly with the reason. Refreshed every 5 s.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('gpusPage', () => ({
    loading: true,
    st: null,
    instances: [],
    error: '',

    async init() {
      window.addEventListener('mv:auth', () => this.load());
      await this.load();
      this.timer = setInterval(() => document.visibilityState === 'visible' && this.load(), 5000);
    },
    destroy() {
      clearInterval(this.timer);
    },
    async load() {
      try {
        this.st = await MV.get('/gpus');
        this.error = '';
        if (this.$store.auth.ok) this.instances = (await MV.get('/instances')).instances;
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) this.error = e.message;
      } finally {
        this.loading = false;
      }
    },
    owner(pid) {
      const i = this.instances.find((x) => x.pid === pid);
      return i ? i.name : null;
    },
    pct(g) {
      return g.memory_total_bytes ? Math.round((100 * (g.memory_used_bytes || 0)) / g.memory_total_bytes) : 0;
    },
  }));
});
