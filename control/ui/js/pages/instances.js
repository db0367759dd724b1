// Instances (/instances): every TEI instance this control plane supervises (status, model, GPU,
// VRAM, restarts, uptime, ports) with start/stop/restart/delete, and creating one from a
// template. Live: instance events on GET /events reload the list.
'use strict';

/** Runs an instance action with a toast either way; shared with the instance page. */
MV.instanceAction = async (name, action) => {
  const path = '/instances/' + encodeURIComponent(name);
  try {
    if (action === 'delete') await MV.api('DELETE', path);
    else await MV.api('POST', path + '/' + action);
    MV.ok({ start: 'Started ', stop: 'Stopped ', restart: 'Restarting ', delete: 'Deleted ' }[action] + name);
    return true;
  } catch (e) {
    MV.fail(action[0].toUpperCase() + action.slice(1) + ' ' + name, e);
    return false;
  }
};

document.addEventListener('alpine:init', () => {
  Alpine.data('instancesPage', () => ({
    loading: true,
    instances: [],
    templates: {},
    live: 'off',
    busy: {},
    deleting: null,
    form: { template: '', name: '', model_id: '', gpu_id: '' },
    formErrors: {},
    creating: false,

    async init() {
      window.addEventListener('mv:auth', () => this.start());
      await this.start();
    },
    destroy() {
      if (this.abort) this.abort.abort();
    },
    async start() {
      if (this.abort) this.abort.abort();
      if (!this.$store.auth.require()) return (this.loading = false);
      await this.load();
      if (!this.$store.auth.ok) return; // the key was refused: the prompt is open
      try {
        this.templates = (await MV.get('/templates')).templates;
        this.form.template ||= Object.keys(this.templates)[0] || '';
      } catch (_) {
        this.templates = {};
      }
      this.abort = new AbortController();
      MV.followEvents('', { signal: this.abort.signal, onState: (s) => (this.live = s), onEvent: (e) => e.instance && this.load() });
    },
    async load() {
      try {
        this.instances = (await MV.get('/instances')).instances.sort((a, b) => a.name.localeCompare(b.name));
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) MV.fail('Loading instances', e);
      } finally {
        this.loading = false;
      }
    },
    async act(i, action) {
      this.busy[i.name] = action;
      if (await MV.instanceAction(i.name, action)) await this.load();
      this.busy[i.name] = '';
      this.deleting = null;
    },
    get nameError() {
      const n = this.form.name;
      return n && !/^[a-z0-9][a-z0-9_-]{0,62}$/.test(n) ? "lowercase letters, digits, '-' or '_', starting with a letter or digit (max 63)" : '';
    },
    async create() {
      this.formErrors = {};
      if (!this.form.name || this.nameError) return (this.formErrors.name = this.nameError || 'required');
      const body = { name: this.form.name };
      if (this.form.model_id.trim()) body.model_id = this.form.model_id.trim();
      if (String(this.form.gpu_id).trim() !== '') body.gpu_id = Number(this.form.gpu_id);
      this.creating = true;
      try {
        const v = await MV.api('POST', '/instances/from-template/' + encodeURIComponent(this.form.template), body);
        MV.ok('Created ' + v.name + ' from ' + this.form.template + ' (port ' + v.port + ')');
        this.form.name = '';
        await this.load();
      } catch (e) {
        if (e.field) this.formErrors[e.field] = e.detail;
        MV.fail('Create refused', e);
      } finally {
        this.creating = false;
      }
    },
    gpu(i) {
      return i.spec.gpu_id == null ? '—' : 'GPU ' + i.spec.gpu_id;
    },
  }));
});
