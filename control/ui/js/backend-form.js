// The backend form shared by Register and Edit: every field of POST/PUT /admin/backends, the
// same rules the API applies (checked as you type), the request body, and the API's errors put
// next to the field they name.
'use strict';

MV.backendForm = {
  KINDS: ['chat', 'completion', 'embedding', 'sparse_embedding', 'rerank', 'classify'],

  /** An empty form. */
  blank() {
    return { name: '', url: '', models: '', api_key: '', owner: '', tags: '', weight: '1', kind: 'chat' };
  },

  /** The form of a stored backend (the API never returns its key). */
  fromBackend(b) {
    return {
      name: b.name,
      url: b.url,
      models: b.models.join(', '),
      api_key: '',
      owner: b.owner || '',
      tags: MV.tags(b.tags),
      weight: String(b.weight),
      kind: b.kind,
    };
  },

  list(s) {
    return s
      .split(/[,\n]/)
      .map((x) => x.trim())
      .filter(Boolean);
  },

  /** `a=1, b=2` (or one per line) as an object; throws a message naming the bad part. */
  parseTags(s) {
    const out = {};
    for (const part of this.list(s)) {
      const i = part.indexOf('=');
      const k = (i < 0 ? part : part.slice(0, i)).trim();
      const v = i < 0 ? '' : part.slice(i + 1).trim();
      if (!/^[A-Za-z0-9._/-]{1,63}$/.test(k)) throw `key \`${k}\` must be 1-63 letters, digits, '-', '_', '.' or '/'`;
      if (v.length > 256) throw `value of \`${k}\` is over 256 characters`;
      out[k] = v;
    }
    return out;
  },

  /** Field -> message for every rule the API would refuse. */
  validate(f) {
    const e = {};
    if (!/^[A-Za-z0-9._-]{1,63}$/.test(f.name)) e.name = "1-63 letters, digits, '-', '_' or '.'";
    try {
      const u = new URL(f.url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') e.url = 'must use http:// or https://';
      else if (!u.hostname) e.url = 'has no host';
      else if (u.username || u.password) e.url = 'must not contain credentials';
      else if (u.port === '0') e.url = 'has port 0';
    } catch (_) {
      e.url = f.url ? 'not a URL (e.g. http://10.0.0.5:8000)' : 'required';
    }
    if (f.models.trim() && !this.list(f.models).length) e.models = 'list model names, separated by commas';
    if (!/^\d+$/.test(String(f.weight).trim()) || +f.weight < 1 || +f.weight > 4294967295) e.weight = 'a whole number ≥ 1';
    if (f.owner.length > 256) e.owner = 'at most 256 characters';
    try {
      this.parseTags(f.tags);
    } catch (m) {
      e.tags = m;
    }
    if (f.api_key && !/^[\x21-\x7e]+$/.test(f.api_key)) e.api_key = 'printable ASCII without spaces';
    if (!this.KINDS.includes(f.kind)) e.kind = 'one of ' + this.KINDS.join(', ');
    return e;
  },

  /** The request body. On edit an empty key keeps the stored one (`removeKey` sends ""). */
  body(f, { removeKey = false } = {}) {
    const b = {
      name: f.name.trim(),
      url: f.url.trim(),
      owner: f.owner.trim(),
      tags: this.parseTags(f.tags),
      weight: Number(f.weight),
      kind: f.kind,
    };
    const models = this.list(f.models);
    if (models.length) b.models = models;
    if (removeKey) b.api_key = '';
    else if (f.api_key) b.api_key = f.api_key;
    return b;
  },

  /** Puts an API error next to its field (or returns it as the form's general error). */
  place(err, errors) {
    if (err.field && err.field in this.blank()) {
      errors[err.field] = err.detail;
      return '';
    }
    return err.message;
  },
};
