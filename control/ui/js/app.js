// The page shell: the navigation bar with its quick stats, and loading this URL's page
// (pages/<page>.html, whose Alpine component lives in js/pages/<page>.js) into <main>.
'use strict';

document.addEventListener('alpine:init', () => {
  Alpine.data('navbar', () => ({
    open: false,
    page: MV.route.page,
    links: [
      { href: '/', label: 'Dashboard', page: 'dashboard' },
      { href: '/register', label: 'Register', page: 'register' },
      { href: '/models', label: 'Models', page: 'models' },
      { href: '/instances', label: 'Instances', page: 'instances' },
      { href: '/gpus', label: 'GPUs', page: 'gpus' },
      { href: '/proxies', label: 'Proxies', page: 'proxies' },
      { href: '/playground', label: 'Playground', page: 'playground' },
      { href: '/docs', label: 'API docs', page: 'docs' },
    ],
    stats: { backends: '', proxies: '' },
    init() {
      if (this.page === 'backend' || this.page === 'edit') this.page = 'dashboard';
      if (this.page === 'instance') this.page = 'instances';
      this.refresh();
      setInterval(() => document.visibilityState === 'visible' && this.refresh(), 10000);
      window.addEventListener('mv:auth', () => this.refresh());
      // The dashboard saw the backends change (a backend event): count again now.
      window.addEventListener('mv:backends', () => this.refresh());
    },
    /** GET /stats: open, so the counts show without a key too. */
    async refresh() {
      try {
        const s = await MV.get('/stats');
        this.stats.backends = s.backends.healthy + '/' + s.backends.total + ' backends healthy';
        this.stats.proxies = s.proxies.connected + ' ' + (s.proxies.connected === 1 ? 'proxy' : 'proxies');
      } catch (_) {
        this.stats = { backends: '', proxies: '' };
      }
    },
  }));
});

(async () => {
  const main = document.getElementById('main');
  const page = MV.route.page;
  try {
    const fragment = async (name) => {
      const r = await fetch('/ui/pages/' + name + '.html');
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.text();
    };
    // Assemble the page (with its <div data-include="name"> parts) before Alpine sees it.
    const t = document.createElement('template');
    t.innerHTML = await fragment(page);
    for (const el of t.content.querySelectorAll('[data-include]')) el.innerHTML = await fragment(el.dataset.include);
    main.replaceChildren(t.content);
    const h1 = main.querySelector('h1');
    document.title = (h1 ? h1.textContent.trim() + ' · ' : '') + 'Multiverse';
  } catch (e) {
    main.textContent = 'Could not load this page: ' + e.message;
  } finally {
    main.removeAttribute('aria-busy');
  }
})();
