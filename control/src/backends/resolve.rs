//! How backend host names become addresses ([`Resolve`]): the system resolver in production,
//! fixed answers in tests. Registration resolves through it once (and pins what it checked);
//! backends without a pinned address are also resolved through it when they are checked.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// The answer of a lookup.
pub type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// A host-name resolver.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (a name, not an IP literal).
    fn lookup(&self, host: &str) -> Lookup;
}

/// The system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str) -> Lookup {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Fixed answers; any other name does not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(HashMap<String, Vec<IpAddr>>);

impl StaticResolver {
    /// Answers `host` with `ips` from now on (replacing an earlier answer).
    pub fn with(mut self, host: &str, ips: &[IpAddr]) -> Self {
        self.0.insert(host.to_string(), ips.to_vec());
        self
    }
}

impl Resolve for StaticResolver {
    fn lookup(&self, host: &str) -> Lookup {
        let found = self.0.get(host).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such host"))
        });
        Box::pin(async move { found })
    }
}

/// A [`Resolve`] as reqwest's resolver, for clients that look names up themselves.
pub(super) struct ForReqwest(pub Arc<dyn Resolve>);

impl reqwest::dns::Resolve for ForReqwest {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.0.lookup(name.as_str());
        Box::pin(async move {
            let ips = lookup
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            // The connector puts the URL's port on every address.
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
