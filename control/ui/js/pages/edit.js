// Edit a backend (/backends/{id}/edit): the form pre-filled, changed fields highlighted, a
// confirm dialog with the diff, then PUT /admin/backends/{id} (checked again by the API).
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('editPage', () => ({
    id: MV.route.params[0],
    b: null,
    orig: null,
    f: MV.backendForm.blank(),
    KINDS: MV.backendForm.KINDS,
    removeKey: false,
    touched: {},
    server: {},
    general: '',
    loading: true,
    busy: false,
    confirming: false,

    async init() {
      window.addEventListener('mv:auth', () => this.load());
      if (this.$store.auth.require()) await this.load();
      else this.loading = false;
      this.$watch('f', () => (this.server = {}), { deep: true });
    },
    async load() {
      this.loading = true;
      try {
        this.b = await MV.get('/admin/backends/' + encodeURIComponent(this.id));
        this.orig = MV.backendForm.fromBackend(this.b);
        this.f = { ...this.orig };
        this.general = '';
      } catch (e) {
        this.general = e.status === 404 ? 'No backend with id ' + this.id + '.' : e.message;
      } finally {
        this.loading = false;
      }
    },
    get keyHint() {
      return this.b && this.b.has_api_key ? 'empty keeps the stored key' : 'none stored; type one to add it';
    },
    get errors() {
      return MV.backendForm.validate(this.f);
    },
    err(field) {
      return this.server[field] || (this.touched[field] ? this.errors[field] : '') || '';
    },
    touch(field) {
      this.touched[field] = true;
    },
    /** Whether a field differs from the stored backend (compared as the API would store it). */
    changed(field) {
      if (!this.orig) return false;
      if (field === 'api_key') return !!this.f.api_key || this.removeKey;
      const norm = (form) => {
        if (field === 'models') return MV.backendForm.list(form.models).join(', ');
        if (field === 'tags') {
          try {
            return MV.tags(MV.backendForm.parseTags(form.tags));
          } catch (_) {
            return form.tags;
          }
        }
        return String(form[field]).trim();
      };
      return norm(this.f) !== norm(this.orig);
    },
    get diff() {
      const show = (field, form) => {
        if (field === 'api_key') return form === this.orig ? (this.b.has_api_key ? 'set' : 'none') : this.removeKey ? 'removed' : 'new key (hidden)';
        return String(form[field]).trim() || '—';
      };
      return Object.keys(this.f)
        .filter((k) => this.changed(k))
        .map((k) => ({ field: k, old: show(k, this.orig), new: show(k, this.f) }));
    },
    review() {
      for (const k of Object.keys(this.f)) this.touched[k] = true;
      if (Object.keys(this.errors).length) {
        MV.toast('error', 'Fix the highlighted fields first');
        return;
      }
      if (!this.diff.length) {
        MV.toast('info', 'Nothing changed');
        return;
      }
      this.confirming = true;
    },
    async save() {
      this.busy = true;
      this.general = '';
      try {
        const body = MV.backendForm.body(this.f, { removeKey: this.removeKey });
        // An unchanged model list stays as it is (omitting it would rediscover the models).
        if (!body.models) body.models = this.b.models;
        this.b = await MV.api('PUT', '/admin/backends/' + encodeURIComponent(this.id), body);
        this.confirming = false;
        MV.ok('Saved ' + this.b.name);
        setTimeout(() => (location.href = '/backends/' + encodeURIComponent(this.id)), 600);
      } catch (e) {
        this.confirming = false;
        this.general = MV.backendForm.place(e, this.server);
        MV.fail('Update refused', e);
      } finally {
        this.busy = false;
      }
    },
  }));
});
