// Backend detail (/backends/{id}): metadata (never the upstream key), the last 100 health
// checks as a chart (latency of each check, failures in red), its probes and their statistics
// per kind (startup, liveness, readiness), and the actions Edit, Delete
// (confirmed), Check now, Restore (when softly deregistered) and Copy URL.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('backendPage', () => ({
    id: MV.route.params[0],
    b: null,
    loading: true,
    error: '',
    busy: '',
    confirming: false,
    plot: null,

    async init() {
      window.addEventListener('mv:auth', () => this.load());
      if (this.$store.auth.require()) await this.load();
      else this.loading = false;
      this.timer = setInterval(() => document.visibilityState === 'visible' && this.b && this.load(true), 10000);
      this.onResize = () => this.draw();
      window.addEventListener('resize', this.onResize);
    },
    destroy() {
      clearInterval(this.timer);
      window.removeEventListener('resize', this.onResize);
    },
    async load(quiet) {
      if (!quiet) this.loading = true;
      try {
        this.b = await MV.get('/admin/backends/' + encodeURIComponent(this.id));
        this.error = '';
        this.$nextTick(() => this.draw());
      } catch (e) {
        if (!quiet) this.error = e.status === 404 ? 'No backend with id ' + this.id + '.' : e.message;
      } finally {
        this.loading = false;
      }
    },
    get history() {
      return this.b ? this.b.health.history : [];
    },
    get failures() {
      return this.history.filter((c) => !c.ok).length;
    },
    probeSpecs() {
      const p = (this.b && this.b.probes) || {};
      const one = (kind, dflt) => {
        const s = p[kind];
        if (!s) return dflt ? kind + ': ' + dflt : '';
        let t = kind + ': ' + (s.method || 'GET') + ' ' + s.path;
        if (s.json_pointer) t += ' (' + s.json_pointer + (s.json_equals != null ? ' = ' + s.json_equals : '') + ')';
        return t;
      };
      // A config backend is never admitted through the API, so it has no startup check.
      const startup = this.b && this.b.source === 'config' ? '' : 'GET /v1/models';
      return [one('startup', startup), one('liveness', ''), one('readiness', 'GET /v1/models')]
        .filter(Boolean)
        .join(' · ');
    },
    draw() {
      const el = this.$refs.chart;
      if (!el || !this.b || typeof uPlot === 'undefined') return;
      const h = this.history;
      // Check times have one-second resolution and several checks can share one, so the x
      // axis is the check's position (oldest first); its time shows in the legend.
      const xs = h.map((_, n) => n + 1);
      const ok = h.map((c) => (c.ok ? c.latency_ms : null));
      const bad = h.map((c) => (c.ok ? null : c.latency_ms));
      const width = Math.max(280, el.clientWidth);
      if (this.plot) this.plot.destroy();
      el.replaceChildren();
      if (!h.length) return;
      this.plot = new uPlot(
        {
          width,
          height: 220,
          scales: { x: { time: false }, y: { range: (u, lo, hi) => [0, Math.max(10, hi * 1.2)] } },
          axes: [{ label: 'check (oldest → newest)' }, { label: 'latency, ms', size: 50 }],
          series: [
            { label: 'check', value: (u, n) => (n == null || !h[n - 1] ? '—' : '#' + n + ' at ' + h[n - 1].at) },
            { label: 'latency (ok)', stroke: '#1f6feb', width: 2, points: { show: true, size: 5 } },
            { label: 'failed', stroke: '#cf222e', width: 0, paths: () => null, points: { show: true, size: 8, fill: '#cf222e' } },
          ],
        },
        [xs, ok, bad],
        el,
      );
    },
    async act(what, fn) {
      this.busy = what;
      try {
        await fn();
      } catch (e) {
        MV.fail(what, e);
      } finally {
        this.busy = '';
      }
    },
    check() {
      return this.act('Check now', async () => {
        const r = await MV.api('POST', '/admin/backends/' + encodeURIComponent(this.id) + '/check');
        if (r.result.ok) MV.ok('Check passed in ' + r.result.latency_ms + ' ms; health ' + r.health.status);
        else MV.toast('error', 'Check failed: ' + (r.result.reason || 'unknown') + '; health ' + r.health.status, 9000);
        await this.load(true);
      });
    },
    restore() {
      return this.act('Restore', async () => {
        this.b = await MV.api('POST', '/admin/backends/' + encodeURIComponent(this.id) + '/restore');
        MV.ok('Restored ' + this.b.name);
      });
    },
    remove() {
      return this.act('Delete', async () => {
        await MV.api('DELETE', '/admin/backends/' + encodeURIComponent(this.id));
        this.confirming = false;
        MV.ok('Deleted ' + this.b.name);
        setTimeout(() => (location.href = '/'), 600);
      });
    },
  }));
});
