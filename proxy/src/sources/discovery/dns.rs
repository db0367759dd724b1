//! A `dns+http://name:port` control-plane source: the name is resolved now, every
//! `dns_refresh_ms`, and again at once (at most once a [`MIN_GAP`]) when one of its streams is
//! lost; every address is one control plane with a discovery stream of its own
//! ([`super::PlaneClient`]). What to do with an answer is [`super::membership`]'s decision; the
//! planes are keyed by the id their streams report, so a plane that changed address is still
//! one plane.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::membership::{Change, Membership};
use super::resolve::Resolve;
use super::{PlaneClient, Shared, Task};
use crate::config::DnsUrl;
use crate::ops::planes::unix_ms;

/// Resolutions caused by lost streams are at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// One `dns+` URL's driver.
pub struct DnsSource {
    /// The configured URL (the source's name in status and metrics).
    pub source: String,
    pub target: DnsUrl,
    pub shared: Arc<Shared>,
    /// What resolves the name ([`super::resolve::configured`] in the proxy).
    pub resolver: Arc<dyn Resolve>,
}

/// An address's stream: its task and the switch that retires or revives it.
struct Stream {
    wanted: watch::Sender<bool>,
    task: Task,
}

impl DnsSource {
    pub async fn run(self) {
        let resolver = self.resolver.clone();
        let shared = &self.shared;
        shared.planes.source(&self.source, "dns", |s| {
            s.resolver = Some(resolver.describe());
            s.addresses = Some(Vec::new());
        });
        let lost = Arc::new(Notify::new());
        let mut members = Membership::default();
        let mut streams: HashMap<SocketAddr, Stream> = HashMap::new();
        let mut failing = false;
        loop {
            // Retired streams whose routes were withdrawn are gone: their addresses are new if
            // they return.
            streams.retain(|addr, s| {
                let done = s.task.is_finished();
                if done {
                    members.ended(*addr);
                }
                !done
            });
            match resolver.resolve(&self.target.host, self.target.port).await {
                Ok(addrs) => {
                    if failing {
                        tracing::info!(source = %self.source, "control-plane name resolves again");
                    }
                    failing = false;
                    self.count("ok");
                    for change in members.resolved(&addrs) {
                        self.apply(change, &mut streams, &lost);
                    }
                    let listed: Vec<String> = members.listed().map(|a| a.to_string()).collect();
                    shared
                        .metrics
                        .control_plane_addresses
                        .with_label_values(&[&self.source])
                        .set(listed.len() as i64);
                    shared.planes.source(&self.source, "dns", |s| {
                        s.addresses = Some(listed);
                        s.resolved_at_ms = Some(unix_ms());
                        s.resolve_error = None;
                    });
                }
                Err(e) => {
                    self.count("error");
                    if !failing {
                        tracing::warn!(source = %self.source, error = %e, "cannot resolve the control-plane name: keeping the planes it had");
                    } else {
                        tracing::debug!(source = %self.source, error = %e, "still cannot resolve the control-plane name");
                    }
                    failing = true;
                    shared.planes.source(&self.source, "dns", |s| {
                        s.resolve_error = Some(e.to_string());
                    });
                }
            }
            let resolved = tokio::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(shared.config.dns_refresh) => {}
                _ = lost.notified() => {
                    tokio::time::sleep_until(resolved + MIN_GAP).await;
                    tracing::debug!(source = %self.source, "a stream was lost: resolving again");
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.shared
            .metrics
            .dns_resolutions
            .with_label_values(&[&self.source, result])
            .inc();
    }

    fn apply(&self, change: Change, streams: &mut HashMap<SocketAddr, Stream>, lost: &Arc<Notify>) {
        match change {
            Change::Add(addr) => {
                let url = self.target.stream_url(addr);
                tracing::info!(source = %self.source, %url, "control plane address found: opening its stream");
                let (wanted, rx) = watch::channel(true);
                let client = PlaneClient {
                    url,
                    tls_name: Some(self.target.host.clone()),
                    source: self.source.clone(),
                    shared: self.shared.clone(),
                    wanted: rx,
                    lost: Some(lost.clone()),
                };
                let task = Task(tokio::spawn(client.run()));
                streams.insert(addr, Stream { wanted, task });
            }
            Change::Retire(addr) => {
                tracing::info!(source = %self.source, %addr, grace = ?self.shared.config.withdraw_after, "control plane address left the name: closing its stream, withdrawing its plane after the grace");
                if let Some(s) = streams.get(&addr) {
                    s.wanted.send_replace(false);
                }
            }
            Change::Revive(addr) => {
                tracing::info!(source = %self.source, %addr, "control plane address is back: reopening its stream");
                if let Some(s) = streams.get(&addr) {
                    s.wanted.send_replace(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::ops::metrics::Metrics;
    use crate::ops::planes::{PlanesStatus, SourceStatus};
    use crate::routing::TableState;
    use crate::sources::discovery::resolve::ResolveError;
    use crate::sources::discovery::DiscoveryConfig;

    const SOURCE: &str = "dns+http://planes.test:9001";

    /// Answers what the test last set.
    struct Scripted(Mutex<Result<BTreeSet<SocketAddr>, String>>);

    #[async_trait]
    impl Resolve for Scripted {
        async fn resolve(&self, host: &str, _: u16) -> Result<BTreeSet<SocketAddr>, ResolveError> {
            let answer = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            answer.map_err(|e| ResolveError::Lookup {
                name: host.to_string(),
                source: std::io::Error::other(e),
            })
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// Loopback addresses where nothing listens (each stream fails to connect, quickly).
    fn closed_addrs(n: usize) -> Vec<SocketAddr> {
        let listeners: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().expect("addr"))
            .collect()
    }

    fn config(withdraw_after: Duration) -> DiscoveryConfig {
        DiscoveryConfig {
            control_planes: vec![SOURCE.into()],
            node_id: "p".into(),
            connect_timeout: Duration::from_millis(200),
            keepalive_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(50),
            withdraw_after: Some(withdraw_after),
            dns_refresh: Duration::from_millis(30),
            dns_hosts_file: None,
            tls: Default::default(),
        }
    }

    async fn until(planes: &PlanesStatus, what: &str, ok: impl Fn(&SourceStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = planes.snapshot().get(SOURCE) {
                if ok(s) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                planes.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn streams(s: &SourceStatus, in_dns: bool) -> BTreeSet<String> {
        s.streams
            .iter()
            .filter(|(_, st)| st.in_dns == in_dns)
            .map(|(url, _)| url.clone())
            .collect()
    }

    fn urls(addrs: &[SocketAddr]) -> BTreeSet<String> {
        addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    #[tokio::test]
    async fn a_stream_per_address_retired_when_it_leaves_and_kept_through_a_failed_resolution() {
        let [a, b, c]: [SocketAddr; 3] = closed_addrs(3).try_into().expect("three");
        let resolver = Arc::new(Scripted(Mutex::new(Ok([a, b].into()))));
        let planes = Arc::new(PlanesStatus::default());
        let metrics = Metrics::new();
        let shared = Arc::new(Shared {
            config: config(Duration::from_millis(300)),
            state: Arc::new(TableState::new("control-plane".into(), Box::new(|_| {}))),
            metrics: metrics.clone(),
            planes: planes.clone(),
        });
        let source = DnsSource {
            source: SOURCE.into(),
            target: DnsUrl::parse(SOURCE).expect("valid").expect("dns"),
            shared,
            resolver: resolver.clone(),
        };
        let task = Task(tokio::spawn(source.run()));

        until(&planes, "a stream per address", |s| {
            streams(s, true) == urls(&[a, b]) && s.resolver.as_deref() == Some("scripted")
        })
        .await;
        // b leaves, c joins: b's stream is retired (kept until its grace runs out), c's opens.
        *resolver.0.lock().expect("lock") = Ok([a, c].into());
        until(&planes, "b retired, c added", |s| {
            streams(s, true) == urls(&[a, c]) && streams(s, false) == urls(&[b])
        })
        .await;
        // Past the grace b's stream is gone.
        until(&planes, "b's stream gone", |s| {
            !s.streams.contains_key(&format!("http://{b}"))
        })
        .await;
        // A failed resolution keeps the streams and says why.
        *resolver.0.lock().expect("lock") = Err("SERVFAIL".into());
        until(&planes, "the error shown", |s| {
            s.resolve_error
                .as_deref()
                .is_some_and(|e| e.contains("SERVFAIL"))
        })
        .await;
        let s = planes.snapshot()[SOURCE].clone();
        assert_eq!(streams(&s, true), urls(&[a, c]), "{s:?}");
        assert_eq!(s.addresses.as_ref().map(Vec::len), Some(2), "{s:?}");
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(
            text.contains(&format!(
                "multiverse_proxy_control_plane_addresses{{source=\"{SOURCE}\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains("multiverse_proxy_dns_resolutions_total{result=\"error\""),
            "{text}"
        );
        // b back: a new stream.
        *resolver.0.lock().expect("lock") = Ok([a, b, c].into());
        until(&planes, "b back", |s| streams(s, true) == urls(&[a, b, c])).await;
        drop(task);
    }
}
