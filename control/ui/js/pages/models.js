// Models (/models): every model of the route snapshot this control plane pushes, with its kind,
// endpoint count, healthy share and (expandable) endpoints: which backend or instance each is.
// The snapshot is public; kinds and endpoint sources need the admin key (backends, instances).
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('modelsPage', () => ({
    loading: true,
    snapshot: { version: '', models: [] },
    backends: [],
    instances: [],
    plane: '',
    q: MV.param('q') || '',

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
        const [snap, health] = await Promise.all([MV.get('/snapshot'), MV.get('/health')]);
        this.snapshot = snap;
        this.plane = health.control_plane_id;
        if (this.$store.auth.ok) {
          this.backends = (await MV.get('/admin/backends')).backends;
          this.instances = (await MV.get('/instances')).instances;
        }
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) MV.fail('Loading models', e);
      } finally {
        this.loading = false;
      }
    },
    /** What an endpoint id (a backend's or an instance's name) is. */
    source(id) {
      const b = this.backends.find((x) => x.name === id);
      if (b) return { type: 'backend', href: '/backends/' + encodeURIComponent(b.id), kind: b.kind };
      const i = this.instances.find((x) => x.name === id);
      if (i) return { type: 'instance', href: '/instances/' + encodeURIComponent(i.name), kind: i.spec.kind || 'embedding' };
      return { type: this.$store.auth.ok ? 'unknown' : '—', href: null, kind: null };
    },
    get models() {
      const q = this.q.trim().toLowerCase();
      return this.snapshot.models
        .filter((m) => !q || m.name.toLowerCase().includes(q))
        .map((m) => {
          const eps = m.endpoints.map((e) => ({ ...e, health: MV.healthName(e.health), src: this.source(e.id) }));
          const healthy = eps.filter((e) => e.health === 'healthy' || e.health === 'unknown').length;
          const kinds = [...new Set(eps.map((e) => e.src.kind).filter(Boolean))];
          return {
            name: m.name,
            kind: kinds.join(', ') || '—',
            endpoints: eps,
            healthyPct: eps.length ? Math.round((100 * healthy) / eps.length) : 0,
          };
        })
        .sort((a, b) => a.name.localeCompare(b.name));
    },
  }));
});
