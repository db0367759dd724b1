//! What a `dns+` control-plane name resolves to, behind one trait so the source can be chosen:
//! the system resolver (`getaddrinfo` through tokio's `lookup_host`, on the blocking pool, never
//! a runtime worker: it follows /etc/resolv.conf, search domains and /etc/hosts, as Kubernetes
//! pods need), or a hosts-format file read again at every resolution (`[discovery]
//! dns_hosts_file`: an inventory kept by configuration management, or a test's "DNS").

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use async_trait::async_trait;

/// Why a name did not resolve (the source keeps the addresses it had).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read hosts file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} resolves to no address")]
    Empty { name: String },
}

/// Resolves a name to every address it has.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// Every address of `host`, with `port`; never empty when `Ok`.
    async fn resolve(&self, host: &str, port: u16) -> Result<BTreeSet<SocketAddr>, ResolveError>;

    /// What resolves (shown in /config_dump).
    fn describe(&self) -> String;
}

/// The resolver the configuration chooses: the hosts file if one is set, else the system's.
pub fn configured(hosts_file: Option<&std::path::Path>) -> std::sync::Arc<dyn Resolve> {
    match hosts_file {
        Some(path) => std::sync::Arc::new(HostsFile {
            path: path.to_path_buf(),
        }),
        None => std::sync::Arc::new(SystemResolver),
    }
}

/// The system resolver.
#[derive(Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<BTreeSet<SocketAddr>, ResolveError> {
        let addrs: BTreeSet<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| ResolveError::Lookup {
                name: host.to_string(),
                source,
            })?
            .collect();
        non_empty(host, addrs)
    }

    fn describe(&self) -> String {
        "system".into()
    }
}

/// A hosts-format file (`address name [alias ...]` per line, `#` comments), read at every
/// resolution.
#[derive(Debug)]
pub struct HostsFile {
    pub path: PathBuf,
}

#[async_trait]
impl Resolve for HostsFile {
    async fn resolve(&self, host: &str, port: u16) -> Result<BTreeSet<SocketAddr>, ResolveError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| ResolveError::File {
                path: self.path.display().to_string(),
                source,
            })?;
        let addrs = hosts_lookup(&text, host)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        non_empty(host, addrs)
    }

    fn describe(&self) -> String {
        format!("hosts_file:{}", self.path.display())
    }
}

fn non_empty(
    host: &str,
    addrs: BTreeSet<SocketAddr>,
) -> Result<BTreeSet<SocketAddr>, ResolveError> {
    if addrs.is_empty() {
        return Err(ResolveError::Empty {
            name: host.to_string(),
        });
    }
    Ok(addrs)
}

/// The addresses a hosts-format text gives `name` (case-insensitive; lines that do not start
/// with an IP address are skipped).
pub fn hosts_lookup(text: &str, name: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_text_gives_every_address_of_a_name_and_skips_the_rest() {
        let text = "# planes\n127.0.0.2 planes.test cp-a\n127.0.0.3\tplanes.test # second\n\
                    not-an-ip planes.test\n::1 PLANES.test\n127.0.0.9 other.test\n\
                    # 127.0.0.4 planes.test\n";
        let got: Vec<String> = hosts_lookup(text, "planes.test")
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "::1"]);
        assert_eq!(hosts_lookup(text, "cp-a").len(), 1, "aliases count");
        assert!(hosts_lookup(text, "missing.test").is_empty());
    }

    #[tokio::test]
    async fn the_file_resolver_reads_the_file_each_time_and_names_the_failure() {
        let dir = std::env::temp_dir().join(format!("mv-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hosts");
        std::fs::write(&path, "127.0.0.2 planes.test\n").expect("write");
        let r = HostsFile { path: path.clone() };
        let one = r.resolve("planes.test", 9001).await.expect("resolves");
        assert_eq!(
            one.into_iter().collect::<Vec<_>>(),
            ["127.0.0.2:9001".parse().expect("addr")]
        );
        std::fs::write(&path, "127.0.0.2 planes.test\n127.0.0.3 planes.test\n").expect("write");
        assert_eq!(
            r.resolve("planes.test", 9001)
                .await
                .expect("resolves")
                .len(),
            2
        );
        let err = r.resolve("nope.test", 9001).await.expect_err("no address");
        assert!(err.to_string().contains("nope.test"), "{err}");
        std::fs::remove_file(&path).expect("rm");
        let err = r.resolve("planes.test", 9001).await.expect_err("no file");
        assert!(err.to_string().contains("hosts"), "{err}");
        assert!(r.describe().starts_with("hosts_file:"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_system_resolver_reads_etc_hosts() {
        let addrs = SystemResolver
            .resolve("localhost", 9001)
            .await
            .expect("localhost");
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9001),
            "{addrs:?}"
        );
    }
}
