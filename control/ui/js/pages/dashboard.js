// Dashboard (/): summary cards, every backend and instance in one table (filter, sort, live).
//
// Live: instance and backend events arrive on GET /events (SSE, with a key); each reloads its
// list (a backend event also the snapshot and proxies behind the cards). Last-check times,
// latencies and proxies' ACKs change without an event: everything is reloaded every 10 s.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('dashboard', () => ({
    loading: true,
    backends: [],
    instances: [],
    snapshot: { version: '', models: [] },
    proxies: { current_version: '', proxies: [] },
    live: 'off',
    filter: { q: '', model: '', health: '', owner: '', tag: '' },
    sort: { key: 'name', dir: 1 },
    abort: null,
    timers: [],

    async init() {
      const s = new URLSearchParams(location.search);
      for (const k of Object.keys(this.filter)) this.filter[k] = s.get(k) || '';
      if (s.get('sort')) this.sort.key = s.get('sort');
      this.$watch('filter', () => this.keepInUrl(), { deep: true });
      window.addEventListener('mv:auth', () => this.start());
      await this.start();
    },
    destroy() {
      this.stop();
    },
    stop() {
      if (this.abort) this.abort.abort();
      this.timers.forEach(clearInterval);
      this.timers = [];
    },
    async start() {
      this.stop();
      this.loading = true;
      await Promise.all([this.loadPublic(), this.loadAdmin()]);
      this.loading = false;
      this.timers.push(setInterval(() => this.loadPublic(), 10000));
      if (!this.$store.auth.ok) return;
      this.abort = new AbortController();
      MV.followEvents('', {
        signal: this.abort.signal,
        onState: (st) => (this.live = st),
        // Backend events (backend_*) carry `backend`; instance events carry `instance`.
        onEvent: (e) => (e.backend ? this.backendChanged() : this.loadInstances()),
      });
      this.timers.push(setInterval(() => this.loadBackends(), 10000));
    },
    /** A backend event: its list now; the cards once the route snapshot has followed (a
     * registration, removal, update or health transition moves its version, after the
     * republish's coalescing and the version's save: a few tries, not a timer). */
    async backendChanged() {
      this.loadBackends();
      const before = this.snapshot.version;
      for (let i = 0; i < 10; i++) {
        await new Promise((res) => setTimeout(res, 200 + 100 * i));
        await this.loadPublic();
        if (this.snapshot.version !== before) return;
      }
    },
    async loadPublic() {
      try {
        const [snap, prox] = await Promise.all([MV.get('/snapshot'), MV.get('/proxies')]);
        this.snapshot = snap;
        this.proxies = prox;
      } catch (e) {
        /* shown by the cards staying empty; the next tick retries */
      }
    },
    async loadAdmin() {
      if (!this.$store.auth.ok) {
        this.backends = [];
        this.instances = [];
        return;
      }
      await this.loadBackends();
      if (this.$store.auth.ok) await this.loadInstances();
    },
    async loadBackends() {
      try {
        this.backends = (await MV.get('/admin/backends')).backends;
        window.dispatchEvent(new CustomEvent('mv:backends', { detail: this.backends }));
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) MV.fail('Loading backends', e);
      }
    },
    async loadInstances() {
      try {
        this.instances = (await MV.get('/instances')).instances;
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) MV.fail('Loading instances', e);
      }
    },
    keepInUrl() {
      const s = new URLSearchParams();
      for (const [k, v] of Object.entries(this.filter)) if (v) s.set(k, v);
      if (this.sort.key !== 'name') s.set('sort', this.sort.key);
      history.replaceState(null, '', location.pathname + (s.toString() ? '?' + s : ''));
    },

    // ---- rows ----
    get rows() {
      const b = this.backends.map((x) => ({
        key: 'b:' + x.id,
        type: 'backend',
        name: x.name,
        href: '/backends/' + encodeURIComponent(x.id),
        status: x.deregistered ? 'deregistered' : x.health.status,
        models: x.models,
        owner: x.owner || '',
        tags: x.tags || {},
        lastCheck: x.health.last_check ? x.health.last_check.at : '',
        latency: x.health.last_check ? x.health.last_check.latency_ms : null,
        lastOk: x.health.last_check ? x.health.last_check.ok : null,
        successRate: x.success_rate,
        avgLatency: x.avg_latency_ms,
        created: x.created_at,
      }));
      const i = this.instances.map((x) => ({
        key: 'i:' + x.name,
        type: 'instance',
        name: x.name,
        href: '/instances/' + encodeURIComponent(x.name),
        status: x.status,
        models: [x.model],
        owner: '',
        tags: x.spec.tags || {},
        lastCheck: '',
        latency: null,
        lastOk: null,
        successRate: null,
        avgLatency: null,
        created: x.created_at,
      }));
      return [...b, ...i];
    },
    get shown() {
      const f = this.filter;
      const q = f.q.trim().toLowerCase();
      const [tk, tv] = f.tag.split('=').map((s) => s.trim());
      const healthOf = (r) => ({ ready: 'healthy', failed: 'unhealthy' })[r.status] || r.status;
      const rows = this.rows.filter(
        (r) =>
          (!q || r.name.toLowerCase().includes(q)) &&
          (!f.model || r.models.includes(f.model)) &&
          (!f.health || healthOf(r) === f.health || (f.health === 'other' && !['healthy', 'unhealthy'].includes(healthOf(r)))) &&
          (!f.owner || r.owner === f.owner) &&
          (!tk || (tk in r.tags && (tv === undefined || tv === '' || r.tags[tk] === tv))),
      );
      const k = this.sort.key;
      const rank = { unhealthy: 0, failed: 0, unknown: 1, starting: 1, pending: 1, restarting: 1, healthy: 2, ready: 2 };
      const val = (r) =>
        k === 'status' ? (rank[r.status] ?? 3) : k === 'last_check' ? r.lastCheck || '' : k === 'created' ? r.created || '' : r.name.toLowerCase();
      return rows.sort((a, b) => (val(a) < val(b) ? -1 : val(a) > val(b) ? 1 : 0) * this.sort.dir);
    },
    sortBy(key) {
      this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
      this.keepInUrl();
    },
    ariaSort(key) {
      return this.sort.key === key ? (this.sort.dir > 0 ? 'ascending' : 'descending') : 'none';
    },
    get models() {
      return [...new Set([...this.snapshot.models.map((m) => m.name), ...this.rows.flatMap((r) => r.models)])].sort();
    },
    get owners() {
      return [...new Set(this.rows.map((r) => r.owner).filter(Boolean))].sort();
    },
    open(r) {
      location.href = r.href;
    },

    // ---- cards ----
    get endpoints() {
      const all = this.snapshot.models.flatMap((m) => m.endpoints);
      const healthy = all.filter((e) => ['healthy', 'unknown'].includes(MV.healthName(e.health))).length;
      return { all: all.length, healthy };
    },
    get connected() {
      return this.proxies.proxies.filter((p) => p.connected);
    },
    get ackSummary() {
      const cur = this.proxies.current_version;
      const c = this.connected;
      if (!c.length) return 'none connected';
      const behind = c.filter((p) => p.acked_version !== cur).length;
      return behind ? behind + ' not on v' + cur : 'all on v' + cur;
    },
    count(list, pred) {
      return list.filter(pred).length;
    },
  }));
});
