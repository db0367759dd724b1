// API docs (/docs): the operator API rendered from /openapi.json by the vendored Swagger UI
// (loaded only on this page: it is the one large file). No request leaves the host: the online
// validator badge is off.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('docsPage', () => ({
    loading: true,
    error: '',
    init() {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = '/ui/vendor/swagger-ui/swagger-ui.css';
      document.head.appendChild(css);
      const s = document.createElement('script');
      s.src = '/ui/vendor/swagger-ui/swagger-ui-bundle.js';
      s.onload = () => {
        const key = MV.key();
        SwaggerUIBundle({
          url: '/openapi.json',
          domNode: this.$refs.docs,
          validatorUrl: null,
          deepLinking: true,
          docExpansion: 'list',
          defaultModelsExpandDepth: 0,
          tryItOutEnabled: false,
          // "Try it out" calls carry the key this tab signed in with.
          requestInterceptor: (req) => {
            if (key && !req.headers.authorization) req.headers.authorization = 'Bearer ' + key;
            return req;
          },
          onComplete: () => (this.loading = false),
        });
      };
      s.onerror = () => {
        this.loading = false;
        this.error = 'Could not load the API renderer.';
      };
      document.body.appendChild(s);
    },
  }));
});
