// One instance (/instances/{name}): its state, its GPU (GET …/gpu-stats: the device's memory,
// utilisation and temperature and the instance's own VRAM, refreshed every 5 s), the actions,
// and the log viewer, which follows
// the log live (GET …/logs?follow=true&start=-100, SSE) or shows a slice (?start=&end=, Python
// slice semantics: negative counts from the end).
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('instancePage', () => ({
    name: MV.route.params[0],
    i: null,
    gs: null,
    loading: true,
    error: '',
    busy: '',
    deleting: false,
    lines: [],
    mode: 'follow',
    following: false,
    slice: { start: '-100', end: '' },
    sliceInfo: '',
    MAX_LINES: 2000,

    async init() {
      window.addEventListener('mv:auth', () => this.start());
      await this.start();
    },
    destroy() {
      this.stopAll();
    },
    stopAll() {
      if (this.events) this.events.abort();
      clearInterval(this.gpuTimer);
      this.unfollow();
    },
    async loadGpu() {
      try {
        this.gs = await MV.get('/instances/' + encodeURIComponent(this.name) + '/gpu-stats');
      } catch (e) {
        this.gs = null;
      }
    },
    memPct() {
      const g = this.gs && this.gs.gpu;
      return g && g.memory_total_bytes ? Math.round((100 * (g.memory_used_bytes || 0)) / g.memory_total_bytes) : 0;
    },
    async start() {
      this.stopAll();
      if (!this.$store.auth.require()) return (this.loading = false);
      await this.load();
      if (!this.i || !this.$store.auth.ok) return;
      await this.loadGpu();
      this.gpuTimer = setInterval(() => document.visibilityState === 'visible' && this.loadGpu(), 5000);
      this.events = new AbortController();
      MV.followEvents('instance=' + encodeURIComponent(this.name), {
        signal: this.events.signal,
        onState: () => {},
        onEvent: () => this.load(true),
      });
      this.follow();
    },
    async load(quiet) {
      try {
        this.i = await MV.get('/instances/' + encodeURIComponent(this.name));
        this.error = '';
      } catch (e) {
        if (!quiet) this.error = e.status === 404 ? 'No instance named ' + this.name + '.' : e.message;
      } finally {
        this.loading = false;
      }
    },
    async act(action) {
      this.busy = action;
      const done = await MV.instanceAction(this.name, action);
      this.busy = '';
      if (done && action === 'delete') {
        this.stopAll();
        setTimeout(() => (location.href = '/instances'), 600);
      } else if (done) await this.load(true);
    },

    // ---- logs ----
    push(line) {
      this.lines.push(line);
      if (this.lines.length > this.MAX_LINES) this.lines.splice(0, this.lines.length - this.MAX_LINES);
      const el = this.$refs.logs;
      if (el) {
        const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
        if (atBottom) this.$nextTick(() => (el.scrollTop = el.scrollHeight));
      }
    },
    async follow() {
      this.unfollow();
      this.mode = 'follow';
      this.lines = [];
      this.following = true;
      this.logAbort = new AbortController();
      const url = '/instances/' + encodeURIComponent(this.name) + '/logs?follow=true&start=-100';
      try {
        await MV.stream(url, { headers: MV.authHeaders(), signal: this.logAbort.signal, onEvent: (e) => this.push(e.data) });
        if (this.following) MV.toast('info', 'The log stream ended; press Follow to resume');
      } catch (e) {
        if (!this.logAbort.signal.aborted) MV.fail('Following the log', e);
      } finally {
        this.following = false;
      }
    },
    unfollow() {
      this.following = false;
      if (this.logAbort) this.logAbort.abort();
    },
    async showSlice() {
      this.unfollow();
      this.mode = 'slice';
      const q = new URLSearchParams();
      if (String(this.slice.start).trim()) q.set('start', this.slice.start);
      if (String(this.slice.end).trim()) q.set('end', this.slice.end);
      try {
        const r = await MV.get('/instances/' + encodeURIComponent(this.name) + '/logs?' + q);
        this.lines = r.lines;
        this.sliceInfo = 'lines ' + r.start + '–' + r.end + ' of ' + r.total;
      } catch (e) {
        MV.fail('Reading the log', e);
      }
    },
  }));
});
