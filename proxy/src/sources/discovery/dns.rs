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
use super::resolve::{HostsFile, Resolve, SystemResolver};
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
}

/// An address's stream: its task and the switch that retires or revives it.
struct Stream {
    wanted: watch::Sender<bool>,
    task: Task,
}

impl DnsSource {
    /// The resolver the configuration chooses.
    fn resolver(&self) -> Box<dyn Resolve> {
        match &self.shared.config.dns_hosts_file {
            Some(path) => Box::new(HostsFile { path: path.clone() }),
            None => Box::new(SystemResolver),
        }
    }

    pub async fn run(self) {
        let resolver = self.resolver();
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
