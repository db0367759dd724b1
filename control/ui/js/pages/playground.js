// Playground (/playground): talks to a proxy straight from the browser, as any client would.
// Chat: model from the proxy's /v1/models, system prompt, messages, temperature, max_tokens,
// stream; the reply streams in token by token; shows the endpoint that served it
// (x-multiverse-endpoint), time to first token, total time, tokens and tokens/s from `usage`
// (stream_options.include_usage). Embeddings: dimensions, L2 norm, first values.
//
// Which proxy: ?proxy=URL, else the one saved here, else the control plane's `[ui] proxy_url`
// from GET /ui/config, else this host on port 8080. The proxy must allow this page's origin
// (`[cors] allowed_origins` in proxy.toml); when it does not, the failure says so.
'use strict';

MV.PROXY_KEY = 'multiverse-proxy-url';

document.addEventListener('alpine:init', () => {
  Alpine.data('playground', () => ({
    tab: 'chat',
    proxy: '',
    proxyInput: '',
    proxySource: '',
    guessed: false,
    models: [],
    modelsError: '',
    model: '',
    system: 'You are a helpful assistant.',
    messages: [{ role: 'user', content: 'Hello! Tell me about Multiverse.' }],
    temperature: 0.7,
    max_tokens: 128,
    stream: true,
    reply: '',
    running: false,
    error: '',
    m: {},
    embedModel: '',
    embedInput: 'The quick brown fox jumps over the lazy dog.',
    embedding: null,

    async init() {
      await this.resolveProxy();
      // A guessed URL is only offered: asking it unasked would log a failed request.
      if (!this.guessed) await this.loadModels();
    },
    async resolveProxy() {
      const fromUrl = MV.param('proxy');
      if (fromUrl) {
        localStorage.setItem(MV.PROXY_KEY, fromUrl);
        return this.setProxy(fromUrl, '?proxy= in the address');
      }
      const saved = localStorage.getItem(MV.PROXY_KEY);
      if (saved) return this.setProxy(saved, 'saved in this browser');
      try {
        const c = await MV.get('/ui/config');
        if (c.proxy_url) return this.setProxy(c.proxy_url, 'the control plane ([ui] proxy_url)');
      } catch (_) {
        /* fall through to the guess */
      }
      this.setProxy(location.protocol + '//' + location.hostname + ':8080', 'a guess (this host, port 8080): press Use to load its models');
      this.guessed = true;
    },
    setProxy(url, source) {
      this.proxy = url.replace(/\/+$/, '');
      this.proxyInput = this.proxy;
      this.proxySource = source;
    },
    async useProxy() {
      try {
        new URL(this.proxyInput);
      } catch (_) {
        return MV.toast('error', 'Not a URL: ' + this.proxyInput);
      }
      localStorage.setItem(MV.PROXY_KEY, this.proxyInput);
      this.setProxy(this.proxyInput, 'saved in this browser');
      this.guessed = false;
      await this.loadModels();
    },
    /** A failed fetch to the proxy, explained. */
    unreachable(e) {
      return (
        'Could not reach the proxy at ' + this.proxy + ' (' + e.message + '). If it is running, it does not allow ' +
        'this page\'s origin: add ' + location.origin + ' to [cors] allowed_origins in its proxy.toml.'
      );
    },
    async loadModels() {
      this.modelsError = '';
      try {
        const r = await fetch(this.proxy + '/v1/models');
        const d = await r.json();
        if (!r.ok) throw new Error((d.error && d.error.message) || 'HTTP ' + r.status);
        this.models = d.data.map((x) => ({ id: x.id, kind: (x.multiverse && String(x.multiverse.kind)) || '' }));
        const chat = this.chatModels;
        if (!chat.some((x) => x.id === this.model)) this.model = (chat[0] || {}).id || '';
        const emb = this.embedModels;
        if (!emb.some((x) => x.id === this.embedModel)) this.embedModel = (emb[0] || {}).id || '';
      } catch (e) {
        this.models = [];
        this.modelsError = e instanceof TypeError ? this.unreachable(e) : e.message;
      }
    },
    get chatModels() {
      const c = this.models.filter((x) => !/embed|rerank|classif/i.test(x.kind));
      return c.length ? c : this.models;
    },
    get embedModels() {
      const e = this.models.filter((x) => /embed/i.test(x.kind));
      return e.length ? e : this.models;
    },
    addMessage() {
      const last = this.messages[this.messages.length - 1];
      this.messages.push({ role: last && last.role === 'user' ? 'assistant' : 'user', content: '' });
    },

    // ---- chat ----
    async send() {
      if (!this.model) return MV.toast('error', 'Pick a model first');
      this.reply = '';
      this.error = '';
      this.m = {};
      this.running = true;
      this.abort = new AbortController();
      const body = {
        model: this.model,
        messages: [...(this.system.trim() ? [{ role: 'system', content: this.system }] : []), ...this.messages.filter((x) => x.content.trim())],
        temperature: Number(this.temperature),
        max_tokens: Number(this.max_tokens),
        stream: this.stream,
      };
      if (this.stream) body.stream_options = { include_usage: true };
      const t0 = performance.now();
      const seen = (r) => (this.m.endpoint = r.headers.get('x-multiverse-endpoint') || '(header not exposed)');
      try {
        if (this.stream) {
          await MV.stream(this.proxy + '/v1/chat/completions', {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(body),
            signal: this.abort.signal,
            onResponse: seen,
            onEvent: (e) => {
              if (e.data === '[DONE]') return;
              const c = JSON.parse(e.data);
              const delta = c.choices && c.choices[0] && c.choices[0].delta && c.choices[0].delta.content;
              if (delta) {
                if (this.m.ttft == null) this.m.ttft = performance.now() - t0;
                this.reply += delta;
              }
              if (c.usage) this.m.usage = c.usage;
            },
          });
        } else {
          const r = await fetch(this.proxy + '/v1/chat/completions', {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(body),
            signal: this.abort.signal,
          });
          seen(r);
          const d = await r.json();
          if (!r.ok) throw new MV.ApiError(r.status, (d.error && d.error.code) || 'HTTP_' + r.status, (d.error && d.error.message) || r.statusText);
          this.m.ttft = performance.now() - t0;
          this.reply = d.choices[0].message.content;
          this.m.usage = d.usage;
        }
        this.m.total = performance.now() - t0;
        MV.ok('Reply from ' + this.m.endpoint + ' in ' + Math.round(this.m.total) + ' ms');
      } catch (e) {
        if (e.name === 'AbortError') MV.toast('info', 'Stopped');
        else {
          this.error = e instanceof TypeError ? this.unreachable(e) : e.message;
          MV.fail('Chat request', e);
        }
      } finally {
        this.running = false;
      }
    },
    stop() {
      if (this.abort) this.abort.abort();
    },
    get tokens() {
      return this.m.usage ? this.m.usage.completion_tokens : null;
    },
    /** Decode speed: completion tokens over the time after the first token. */
    get tps() {
      if (!this.tokens || this.m.total == null) return null;
      const gen = (this.m.total - (this.m.ttft || 0)) / 1000;
      return gen > 0 ? this.tokens / gen : null;
    },
    fmt(ms) {
      return ms == null ? '—' : Math.round(ms) + ' ms';
    },

    // ---- embeddings ----
    async embed() {
      if (!this.embedModel) return MV.toast('error', 'Pick a model first');
      this.embedding = null;
      this.error = '';
      this.running = true;
      const t0 = performance.now();
      try {
        const r = await fetch(this.proxy + '/v1/embeddings', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: this.embedModel, input: this.embedInput }),
        });
        const d = await r.json();
        if (!r.ok) throw new Error((d.error && d.error.message) || d.error || 'HTTP ' + r.status);
        const v = d.data[0].embedding;
        this.embedding = {
          endpoint: r.headers.get('x-multiverse-endpoint') || '(header not exposed)',
          dims: v.length,
          norm: Math.sqrt(v.reduce((s, x) => s + x * x, 0)),
          first: v.slice(0, 8).map((x) => x.toFixed(4)).join(', '),
          ms: performance.now() - t0,
          tokens: d.usage ? d.usage.prompt_tokens : null,
        };
        MV.ok('Embedded: ' + v.length + ' dimensions');
      } catch (e) {
        this.error = e instanceof TypeError ? this.unreachable(e) : e.message;
        MV.fail('Embeddings request', e);
      } finally {
        this.running = false;
      }
    },
  }));
});
