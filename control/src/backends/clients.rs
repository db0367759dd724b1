//! The HTTP clients that talk to backends (registration checks, recurring and forced health
//! checks). A backend with a pinned address is always reached at that address — whatever its
//! name resolves to now — through a client that maps its host name to it; any other backend is
//! reached through a shared client that resolves names with the configured [`Resolve`].
//! Pinned clients are built once per (host, address) and kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::parse_url;
use super::resolve::{ForReqwest, Resolve};

/// The user agent of every request to a backend.
pub const USER_AGENT: &str = concat!("multiverse-control/", env!("CARGO_PKG_VERSION"));

/// Clients for backends.
pub struct Clients {
    resolver: Arc<dyn Resolve>,
    /// Trusted besides the built-in roots (`[health] tls_ca_file`).
    roots: Vec<reqwest::Certificate>,
    shared: reqwest::Client,
    pinned: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

impl Clients {
    pub fn new(
        resolver: Arc<dyn Resolve>,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, reqwest::Error> {
        let shared = Self::builder(&resolver, &roots).build()?;
        Ok(Self {
            resolver,
            roots,
            shared,
            pinned: Mutex::new(HashMap::new()),
        })
    }

    fn builder(
        resolver: &Arc<dyn Resolve>,
        roots: &[reqwest::Certificate],
    ) -> reqwest::ClientBuilder {
        roots.iter().fold(
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .dns_resolver(Arc::new(ForReqwest(resolver.clone()))),
            |b, ca| b.add_root_certificate(ca.clone()),
        )
    }

    /// The resolver names are looked up with.
    pub fn resolver(&self) -> &dyn Resolve {
        self.resolver.as_ref()
    }

    /// The client that reaches `hostname` (as written in a URL, without brackets) at `addr`.
    pub fn pinned(&self, hostname: &str, addr: SocketAddr) -> Result<reqwest::Client, String> {
        let key = (hostname.to_string(), addr);
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        // Built outside the lock.
        let client = Self::builder(&self.resolver, &self.roots)
            .resolve(hostname, addr)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(self.lock().entry(key).or_insert(client).clone())
    }

    /// The client for a backend at `url`: its pinned address (`ip:port`) when it has one.
    pub fn for_backend(&self, url: &str, pinned: Option<&str>) -> Result<reqwest::Client, String> {
        let Some(pinned) = pinned else {
            return Ok(self.shared.clone());
        };
        let addr: SocketAddr = pinned
            .parse()
            .map_err(|_| format!("the pinned address `{pinned}` is not ip:port"))?;
        let target = parse_url(url)?;
        self.pinned(&target.hostname, addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, SocketAddr), reqwest::Client>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }
}
