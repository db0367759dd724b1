// API docs (/docs): the operator API rendered from /openapi.json by the vendored Redoc (loaded
// only on this page: it is the one large file).
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('docsPage', () => ({
    loading: true,
    error: '',
    init() {
      const s = document.createElement('script');
      s.src = '/ui/vendor/redoc/redoc.standalone.js';
      s.onload = () => {
        const top = document.querySelector('.topbar');
        Redoc.init(
          '/openapi.json',
          { scrollYOffset: top ? top.offsetHeight : 0, hideHostname: false, expandResponses: '200,201', theme: { typography: { fontSize: '15px' } } },
          this.$refs.redoc,
          (err) => {
            this.loading = false;
            if (err) this.error = 'Could not render /openapi.json: ' + err;
          },
        );
      };
      s.onerror = () => {
        this.loading = false;
        this.error = 'Could not load the API renderer.';
      };
      document.body.appendChild(s);
    },
  }));
});
