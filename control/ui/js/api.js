// The UI's core: which page this URL is, the admin key (sessionStorage), calls to the operator
// API with typed errors, toasts, feature detection from /openapi.json, and formatting helpers.
// Everything hangs off one global, MV; pages are Alpine components in js/pages/.
'use strict';

const MV = (window.MV = {});

// ---- Which page ---------------------------------------------------------------------------
MV.ROUTES = [
  [/^\/$/, 'dashboard'],
  [/^\/register\/?$/, 'register'],
  [/^\/backends\/([^/]+)\/?$/, 'backend'],
  [/^\/backends\/([^/]+)\/edit\/?$/, 'edit'],
  [/^\/models\/?$/, 'models'],
  [/^\/instances\/?$/, 'instances'],
  [/^\/instances\/([^/]+)\/?$/, 'instance'],
  [/^\/gpus\/?$/, 'gpus'],
  [/^\/proxies\/?$/, 'proxies'],
  [/^\/playground\/?$/, 'playground'],
  [/^\/docs\/?$/, 'docs'],
];

MV.route = (() => {
  for (const [re, page] of MV.ROUTES) {
    const m = location.pathname.match(re);
    if (m) return { page, params: m.slice(1).map(decodeURIComponent) };
  }
  return { page: 'not-found', params: [] };
})();

// ---- Errors and calls -----------------------------------------------------------------------
/** An operator-API error: HTTP status, stable code, message, and the field it names if any. */
MV.ApiError = class extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
    // Validation messages start with the field: "`url`: must use http:// or https://".
    const m = /^`([a-z_]+)`:\s*/.exec(message || '');
    const byCode = {
      INVALID_URL: 'url',
      PRIVATE_ADDRESS_NOT_ALLOWED: 'url',
      BACKEND_UNAVAILABLE: 'url',
      BACKEND_EXISTS: 'name',
      INSTANCE_EXISTS: 'name',
      INVALID_NAME: 'name',
      INVALID_MODEL_ID: 'model_id',
      INVALID_GPU_ID: 'gpu_id',
      INSUFFICIENT_VRAM: 'gpu_id',
      INVALID_PORT: 'port',
      PORT_CONFLICT: 'port',
      PORT_IN_USE: 'port',
    };
    this.field = m ? m[1] : byCode[code] || null;
    this.detail = m ? message.slice(m[0].length) : message;
  }
};

MV.KEY = 'multiverse-admin-key';
MV.key = () => sessionStorage.getItem(MV.KEY) || '';

/** Headers of an admin call. */
MV.authHeaders = () => {
  const k = MV.key();
  return k ? { authorization: 'Bearer ' + k } : {};
};

/**
 * Calls the operator API: JSON in and out; resolves to the parsed body (null for 204), rejects
 * with MV.ApiError. A 401/403 sends the user back to the key prompt with the API's reason.
 */
MV.api = async (method, path, body) => {
  const headers = { accept: 'application/json', ...MV.authHeaders() };
  const init = { method, headers };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new MV.ApiError(0, 'NETWORK', 'the control plane did not answer (' + e.message + ')');
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!r.ok) {
    const err = new MV.ApiError(
      r.status,
      (data && data.code) || 'HTTP_' + r.status,
      (data && data.error) || text || r.statusText,
    );
    if (r.status === 401 || r.status === 403) Alpine.store('auth').rejected(err.message);
    throw err;
  }
  return data;
};
MV.get = (path) => MV.api('GET', path);

// ---- Toasts -------------------------------------------------------------------------------
MV.toast = (kind, text, ms) => Alpine.store('toasts').push(kind, text, ms);
MV.ok = (text) => MV.toast('ok', text);
MV.fail = (what, e) => MV.toast('error', what + ': ' + (e && e.message ? e.message : e), 9000);

/** Copies text to the clipboard, with a toast either way. */
MV.copy = async (text, what) => {
  try {
    await navigator.clipboard.writeText(text);
    MV.ok((what || 'Text') + ' copied');
  } catch (_) {
    MV.toast('error', 'The browser refused the clipboard; select and copy: ' + text, 9000);
  }
};

// ---- Formatting ---------------------------------------------------------------------------
MV.ago = (iso) => {
  if (!iso) return '—';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(s)) return iso;
  if (s < 5) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
};
MV.dur = (s) => {
  if (s == null) return '—';
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
};
MV.bytes = (n) => {
  if (n == null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
};
// 0.97 -> "97%" (one decimal below 100 when it matters: "99.5%").
MV.pct = (r) => (r == null ? '—' : (Math.round(r * 1000) / 10).toString().replace(/\.0$/, '') + '%');
// A duration in ms, as "0.4 ms" / "12 ms".
MV.ms = (v) => (v == null ? '—' : (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ms');
MV.tags = (t) =>
  Object.entries(t || {})
    .map(([k, v]) => (v ? k + '=' + v : k))
    .join(', ');

/** The colour class of a health or instance status. */
MV.tone = (status) =>
  ({
    healthy: 'good',
    ready: 'good',
    unhealthy: 'bad',
    failed: 'bad',
    unknown: 'warn',
    pending: 'warn',
    starting: 'warn',
    restarting: 'warn',
    stopping: 'off',
    stopped: 'off',
    deregistered: 'off',
  })[status] || 'warn';

/** The snapshot's numeric endpoint health (discovery.proto's HealthStatus) as a word. */
MV.HEALTH = ['unknown', 'healthy', 'unhealthy', 'draining', 'timeout', 'degraded'];
MV.healthName = (h) => (typeof h === 'number' ? MV.HEALTH[h] || 'unknown' : String(h || 'unknown'));

/**
 * Shows or hides a <dialog> as a modal (focus moves into it, the page behind is inert, Escape
 * closes it: bind its @close to the state).
 */
MV.modal = (el, open) => {
  if (open && !el.open) el.showModal();
  else if (!open && el.open) el.close();
};

/** A value of a query-string parameter of this page. */
MV.param = (name) => new URLSearchParams(location.search).get(name);

// ---- Stores -------------------------------------------------------------------------------
document.addEventListener('alpine:init', () => {
  Alpine.store('toasts', {
    items: [],
    n: 0,
    push(kind, text, ms) {
      const id = ++this.n;
      this.items.push({ id, kind, text });
      setTimeout(() => this.dismiss(id), ms || 5000);
    },
    dismiss(id) {
      this.items = this.items.filter((t) => t.id !== id);
    },
  });

  Alpine.store('auth', {
    ok: !!MV.key(),
    prompting: false,
    reason: '',
    /** Opens the key prompt, saying why. */
    prompt(reason) {
      this.reason = reason;
      this.prompting = true;
    },
    /** The API refused the key (or there was none): forget it and ask again. */
    rejected(reason) {
      sessionStorage.removeItem(MV.KEY);
      this.ok = false;
      // The first refusal says why; calls failing after it (no key left) would only say "none".
      if (!this.prompting) this.prompt(reason);
    },
    signOut() {
      sessionStorage.removeItem(MV.KEY);
      this.ok = false;
      MV.ok('Admin key forgotten for this tab');
      window.dispatchEvent(new CustomEvent('mv:auth'));
    },
    /** For pages that need the key: true when there is one, else prompts. */
    require() {
      if (this.ok) return true;
      if (!this.prompting) this.prompt('This page needs the admin key.');
      return false;
    },
  });

  Alpine.data('keyPrompt', () => ({
    key: '',
    busy: false,
    init() {
      this.$watch('$store.auth.prompting', (v) => v && this.$nextTick(() => this.$refs.input.focus()));
    },
    async save() {
      this.busy = true;
      try {
        // Check the key on a cheap admin call before keeping it.
        const r = await fetch('/admin/backends', {
          headers: { accept: 'application/json', authorization: 'Bearer ' + this.key },
        });
        if (r.status === 401 || r.status === 403) {
          const d = await r.json().catch(() => ({}));
          this.$store.auth.reason = d.error || 'the API key is not valid';
          return;
        }
        sessionStorage.setItem(MV.KEY, this.key);
        this.key = '';
        this.$store.auth.ok = true;
        this.$store.auth.prompting = false;
        this.$store.auth.reason = '';
        MV.ok('Signed in');
        window.dispatchEvent(new CustomEvent('mv:auth'));
      } catch (e) {
        this.$store.auth.reason = 'the control plane did not answer: ' + e.message;
      } finally {
        this.busy = false;
      }
    },
    cancel() {
      this.$store.auth.prompting = false;
    },
  }));
});
