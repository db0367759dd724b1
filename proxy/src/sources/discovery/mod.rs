//! The proxy's side of route discovery: one long-lived stream per control plane.
//!
//! A control plane is a configured `http://` URL, or one address of a `dns+http://name:port`
//! URL ([`dns`]: the name is resolved periodically and on stream loss; a stream per address;
//! addresses that leave the name are retired). Routes are stored under the plane's id from the
//! stream, so a plane reached at a new address is still one plane.
//!
//! Per plane: connect, say hello (node id, build version, the version already held), then for
//! every snapshot pushed validate it, apply it and ACK (version + nonce), or NACK it (the version
//! still running + nonce + reason) and keep serving the last good table. When the stream breaks,
//! the plane's routes stay in the table (or, with `withdraw_after`, are withdrawn once the plane
//! has been unreachable that long, or its address has left the name that long) and the proxy
//! reconnects with jittered exponential backoff. HTTP/2 keepalives detect a dead control plane
//! within seconds. Every second the use of the plane's inference keys is reported on the same
//! stream, and the plane's lease updates (this proxy's share of each key's fleet-wide limits)
//! are applied as they come, without an answer.
//!
//! The decisions live apart from the I/O, each unit-tested: [`session`] (what to send: hello,
//! ACK, NACK; the plane's id and versions), [`reconnect`] (when to try again, when to withdraw),
//! [`membership`] (which addresses of a name get streams) and [`resolve`] (what a name resolves
//! to). This module is the driver: the gRPC stream, validation off the runtime's workers, the
//! table.

pub mod dns;
pub mod membership;
pub mod reconnect;
pub mod resolve;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use multiverse_common::clock::Instant;
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_client::RouteDiscoveryClient;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::DnsUrl;
use crate::ops::metrics::Metrics;
use crate::ops::planes::{PlanesStatus, StreamStatus};
use crate::routing::snapshot::{resolve_socket_addr, PlaneRoutes};
use crate::routing::TableState;
use dns::DnsSource;
use reconnect::{Reconnect, ReconnectConfig};
use session::{PlaneSession, Pushed};

/// How often the use of a plane's keys is reported to it (it rebalances their leases as often).
const USAGE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Discovery client settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Control plane URLs (`http://host:port`, `dns+http://name:port`).
    pub control_planes: Vec<String>,
    pub node_id: String,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Withdraw a plane's routes after it has been unreachable (or its address out of its
    /// name) this long (`None`: keep them).
    pub withdraw_after: Option<Duration>,
    /// How often `dns+` names are resolved again.
    pub dns_refresh: Duration,
    /// Resolve `dns+` names from this hosts-format file instead of the system resolver.
    pub dns_hosts_file: Option<PathBuf>,
    /// For `https://` control planes.
    pub tls: ClientTls,
}

/// What `https://` streams present and trust (PEM, read at start).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the control planes' certificates (default: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// This proxy's client certificate chain and key, for control planes that ask (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// tonic's TLS settings for a stream whose certificate must name `server_name`.
    fn config(&self, server_name: Option<&str>) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(pem) => c.ca_certificate(Certificate::from_pem(pem)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = server_name {
            c = c.domain_name(name);
        }
        c
    }
}

impl DiscoveryConfig {
    fn reconnect(&self) -> ReconnectConfig {
        ReconnectConfig {
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            withdraw_after: self.withdraw_after,
        }
    }
}

/// What every stream of the service shares.
pub struct Shared {
    pub config: DiscoveryConfig,
    pub state: Arc<TableState>,
    pub metrics: Arc<Metrics>,
    pub planes: Arc<PlanesStatus>,
}

/// A spawned task, aborted when dropped.
pub struct Task(pub JoinHandle<()>);

impl Task {
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background service running every control-plane source.
pub struct Discovery {
    shared: Arc<Shared>,
}

impl Discovery {
    pub fn new(
        config: DiscoveryConfig,
        state: Arc<TableState>,
        metrics: Arc<Metrics>,
        planes: Arc<PlanesStatus>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state,
                metrics,
                planes,
            }),
        }
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let shared = &self.shared;
        if shared.config.control_planes.is_empty() {
            tracing::warn!("no control plane configured: the proxy will route nothing");
        }
        let mut tasks = Vec::new();
        // Static planes are never retired: their switches stay on until shutdown.
        let mut switches = Vec::new();
        for url in &shared.config.control_planes {
            match DnsUrl::parse(url) {
                Ok(Some(target)) => {
                    let source = DnsSource {
                        source: url.clone(),
                        target,
                        shared: shared.clone(),
                        resolver: resolve::configured(shared.config.dns_hosts_file.as_deref()),
                    };
                    tasks.push(Task(tokio::spawn(source.run())));
                }
                Ok(None) => {
                    shared.planes.source(url, "static", |_| {});
                    let (on, wanted) = watch::channel(true);
                    switches.push(on);
                    let plane = PlaneClient {
                        url: url.clone(),
                        tls_name: None,
                        source: url.clone(),
                        shared: shared.clone(),
                        wanted,
                        lost: None,
                    };
                    tasks.push(Task(tokio::spawn(plane.run())));
                }
                // Validated with the configuration; kept out here too.
                Err(e) => tracing::error!(url, error = %e, "ignoring this control plane"),
            }
        }
        // Runs until the server shuts down; dropping the tasks aborts them.
        let _ = shutdown.changed().await;
        drop(tasks);
    }
}

/// One control plane's stream (a configured URL, or one address of a `dns+` name).
pub struct PlaneClient {
    /// `http://address:port` of this plane.
    pub url: String,
    /// The name its certificate must carry when the URL has only its address (a `dns+https`
    /// name's address); `None`: the URL's host.
    pub tls_name: Option<String>,
    /// The configured URL it comes from.
    pub source: String,
    pub shared: Arc<Shared>,
    /// False while the plane's address is out of its name (close the stream).
    pub wanted: watch::Receiver<bool>,
    /// Told when an open stream is lost (the name is resolved again).
    pub lost: Option<Arc<Notify>>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("stream closed by the control plane")]
    Closed,
    #[error("its address left the control-plane name")]
    Retired,
}

/// Resolves once `wanted` turns false (never if its sender is gone).
async fn retired(wanted: &mut watch::Receiver<bool>) {
    if wanted.wait_for(|w| !*w).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl PlaneClient {
    pub async fn run(self) {
        let mut session = PlaneSession::new(&self.url);
        let mut reconnect = Reconnect::new(self.shared.config.reconnect(), Instant::now());
        self.status(|_| {});
        loop {
            let began = Instant::now();
            let mut wanted = self.wanted.clone();
            let result = if *wanted.borrow() {
                tokio::select! {
                    r = self.stream(&mut session, &mut reconnect) => r,
                    () = retired(&mut wanted) => Err(StreamError::Retired),
                }
            } else {
                Err(StreamError::Retired)
            };
            if reconnect.is_connected() {
                if let Some(lost) = &self.lost {
                    lost.notify_one();
                }
            }
            self.set_connected(false);
            let next = reconnect.ended(began, Instant::now(), rand::random());
            if next.withdraw {
                self.withdraw(&mut session, "unreachable");
            }
            match result {
                Err(StreamError::Url(e)) => {
                    tracing::error!(url = %self.url, error = %e, "giving up on this control plane");
                    return;
                }
                Err(StreamError::Retired) => {
                    if self.retire(&mut session, &reconnect).await {
                        self.forget();
                        return;
                    }
                    continue;
                }
                Err(e) if next.report => {
                    let down_for = reconnect.down_for(Instant::now());
                    tracing::warn!(url = %self.url, error = %e, ?down_for, "control plane unreachable; serving the last good table")
                }
                Err(e) => {
                    tracing::debug!(url = %self.url, error = %e, retry_in = ?next.delay, "control plane still unreachable")
                }
                Ok(()) => {}
            }
            let mut wanted = self.wanted.clone();
            tokio::select! {
                () = tokio::time::sleep(next.delay) => {}
                () = retired(&mut wanted) => {}
            }
        }
    }

    /// The plane's address left its name: with the stream closed, waits for the address to
    /// return (false) or the grace to pass, then withdraws the plane's routes (true: the task
    /// ends). Without a grace the routes stay, as for an unreachable plane.
    async fn retire(&self, session: &mut PlaneSession, reconnect: &Reconnect) -> bool {
        self.status(|s| s.in_dns = false);
        let mut wanted = self.wanted.clone();
        let back = wanted.wait_for(|w| *w);
        let revived = match self.shared.config.withdraw_after {
            Some(grace) => {
                let left = grace.saturating_sub(reconnect.down_for(Instant::now()));
                matches!(tokio::time::timeout(left, back).await, Ok(Ok(_)))
            }
            None => back.await.is_ok(),
        };
        if revived {
            self.status(|s| s.in_dns = true);
            return false;
        }
        self.withdraw(session, "out of its name");
        true
    }

    /// Withdraws the routes this stream holds for its plane.
    fn withdraw(&self, session: &mut PlaneSession, why: &str) {
        if self.shared.state.remove_plane(session.plane(), &self.url) {
            session.withdrawn();
            tracing::warn!(url = %self.url, plane = %session.plane(), grace = ?self.shared.config.withdraw_after, why, "control plane gone past the grace period: its routes are withdrawn");
        }
    }

    /// The task ends: its status and metric go.
    fn forget(&self) {
        self.shared.planes.remove_stream(&self.source, &self.url);
        let _ = self
            .shared
            .metrics
            .control_plane_connected
            .remove_label_values(&[&self.url]);
    }

    fn status(&self, f: impl FnOnce(&mut StreamStatus)) {
        self.shared.planes.stream(&self.source, &self.url, f);
    }

    fn set_connected(&self, up: bool) {
        self.shared
            .metrics
            .control_plane_connected
            .with_label_values(&[&self.url])
            .set(i64::from(up));
        self.status(|s| s.connected = up);
    }

    async fn stream(
        &self,
        session: &mut PlaneSession,
        reconnect: &mut Reconnect,
    ) -> Result<(), StreamError> {
        let config = &self.shared.config;
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| StreamError::Url(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_interval)
            .keep_alive_while_idle(true);
        if self.url.starts_with("https://") {
            endpoint = endpoint.tls_config(config.tls.config(self.tls_name.as_deref()))?;
        }
        let channel = endpoint.connect().await?;
        let mut client = RouteDiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::DiscoveryRequest>(4);
        // The receiver is alive (held below), so this cannot fail.
        let _ = tx.send(session.hello(&config.node_id)).await;
        let mut responses = client
            .stream_routes(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.set_connected(true);
        reconnect.connected();
        tracing::info!(url = %self.url, "discovery stream open");
        let mut report = tokio::time::interval(USAGE_REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let reply = tokio::select! {
                resp = responses.message() => {
                    let Some(resp) = resp? else { break };
                    if resp.snapshot.is_none() {
                        if let Some(leases) = &resp.leases {
                            // A lease update: applied, not answered.
                            self.shared.state.apply_leases(session.plane(), leases);
                            continue;
                        }
                        if let Some(load) = &resp.load {
                            // An engine-load update: applied, not answered, and no version
                            // or nonce of the session changes.
                            self.shared.state.apply_load(load);
                            continue;
                        }
                    }
                    let pushed = session.received(resp);
                    self.handle(session, pushed).await
                }
                _ = report.tick() => {
                    let keys = self.shared.state.usage(session.plane());
                    if keys.is_empty() {
                        continue;
                    }
                    pb::DiscoveryRequest {
                        usage: Some(pb::UsageReport { keys }),
                        ..Default::default()
                    }
                }
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        Err(StreamError::Closed)
    }

    /// Validates and applies one snapshot; returns the ACK or NACK for it.
    async fn handle(&self, session: &mut PlaneSession, pushed: Pushed) -> pb::DiscoveryRequest {
        let Pushed {
            plane,
            version,
            nonce,
            snapshot,
            replaced,
        } = pushed;
        if let Some(old) = replaced {
            if self.shared.state.remove_plane(&old, &self.url) {
                tracing::warn!(url = %self.url, old, new = plane, "another control plane answers at this address: the old one's routes are withdrawn");
            }
        }
        let checked_version = version.clone();
        // Name resolution may block: keep it off the runtime's workers.
        let checked = tokio::task::spawn_blocking(move || {
            PlaneRoutes::from_snapshot(&checked_version, snapshot.as_ref(), &resolve_socket_addr)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("validation task failed: {e}")));
        match checked {
            Ok(routes) => {
                self.shared.state.apply_plane(&plane, &self.url, routes);
                tracing::debug!(plane, %version, "ACK");
                self.status(|s| {
                    s.plane = Some(plane.clone());
                    s.acked_version.clone_from(&version);
                });
                session.ack(version, nonce)
            }
            Err(message) => {
                self.shared.metrics.snapshots_rejected.inc();
                let nack = session.nack(nonce, message);
                let reason = nack.error_detail.as_ref().map(|d| d.message.as_str());
                tracing::warn!(plane, rejected = %version, running = %nack.version_info, reason, "NACK: keeping the last good table");
                nack
            }
        }
    }
}
