// Proxies (/proxies): every proxy that connected to this control plane: node id, build,
// connected since, the snapshot version it ACKed (against the current one), its last NACK and
// the reason. Refreshed every 5 s.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('proxiesPage', () => ({
    loading: true,
    data: { current_version: '', proxies: [] },
    async init() {
      await this.load();
      this.timer = setInterval(() => document.visibilityState === 'visible' && this.load(), 5000);
    },
    destroy() {
      clearInterval(this.timer);
    },
    async load() {
      try {
        this.data = await MV.get('/proxies');
      } catch (e) {
        MV.fail('Loading proxies', e);
      } finally {
        this.loading = false;
      }
    },
  }));
});
