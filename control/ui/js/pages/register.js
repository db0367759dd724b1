// Register a backend (/register): the form, validation as you type, "Test connection"
// (POST /admin/backends/test: registration's checks, nothing saved), POST /admin/backends, and
// the new id with a copy button.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('register', () => ({
    f: MV.backendForm.blank(),
    KINDS: MV.backendForm.KINDS,
    touched: {},
    server: {},
    general: '',
    busy: false,
    testing: false,
    tested: null,
    created: null,

    async init() {
      this.$store.auth.require();
      this.$watch('f', () => (this.server = {}), { deep: true });
    },
    get errors() {
      return MV.backendForm.validate(this.f);
    },
    /** The message shown under a field: the API's, else the rule it breaks once touched. */
    err(field) {
      return this.server[field] || (this.touched[field] ? this.errors[field] : '') || '';
    },
    touch(field) {
      this.touched[field] = true;
    },
    async submit() {
      for (const k of Object.keys(this.f)) this.touched[k] = true;
      if (Object.keys(this.errors).length) {
        MV.toast('error', 'Fix the highlighted fields first');
        this.$nextTick(() => this.$root.querySelector('[aria-invalid="true"]')?.focus());
        return;
      }
      if (!this.$store.auth.require()) return;
      this.busy = true;
      this.general = '';
      try {
        this.created = await MV.api('POST', '/admin/backends', MV.backendForm.body(this.f));
        MV.ok('Registered ' + this.created.name + ' (' + this.created.id + ')');
        this.$nextTick(() => this.$refs.success?.focus());
      } catch (e) {
        this.general = MV.backendForm.place(e, this.server);
        MV.fail('Registration refused', e);
      } finally {
        this.busy = false;
      }
    },
    /** Probes the backend as registration would, without saving. */
    async test() {
      this.testing = true;
      this.tested = null;
      this.general = '';
      try {
        this.tested = await MV.api('POST', '/admin/backends/test', MV.backendForm.body(this.f));
        MV.ok('Connection works: ' + (this.tested.models || []).join(', '));
      } catch (e) {
        this.general = MV.backendForm.place(e, this.server);
        MV.fail('Connection test failed', e);
      } finally {
        this.testing = false;
      }
    },
    another() {
      this.f = MV.backendForm.blank();
      this.touched = {};
      this.created = null;
    },
  }));
});
