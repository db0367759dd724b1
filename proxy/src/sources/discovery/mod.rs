//! The proxy's side of route discovery: one long-lived stream per configured control plane.
//!
//! Per plane: connect, say hello (node id, build version, the version already held), then for
//! every snapshot pushed validate it, apply it and ACK (version + nonce), or NACK it (the version
//! still running + nonce + reason) and keep serving the last good table. When the stream breaks,
//! the plane's routes stay in the table (or, with `withdraw_after`, are withdrawn once the plane
//! has been unreachable that long) and the proxy reconnects with jittered exponential backoff.
//! HTTP/2 keepalives detect a dead control plane within seconds. Every second the use of the
//! plane's inference keys is reported on the same stream, and the plane's lease updates (this
//! proxy's share of each key's fleet-wide limits) are applied as they come, without an answer.
//!
//! The decisions live apart from the I/O, each unit-tested: [`session`] (what to send: hello,
//! ACK, NACK; the plane's id and versions) and [`reconnect`] (when to try again, when to withdraw).
//! This module is the driver: the gRPC stream, validation off the runtime's workers, the table.

pub mod reconnect;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use multiverse_common::clock::Instant;
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_client::RouteDiscoveryClient;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ops::metrics::Metrics;
use crate::routing::snapshot::{resolve_socket_addr, PlaneRoutes};
use crate::routing::TableState;
use reconnect::{Reconnect, ReconnectConfig};
use session::{PlaneSession, Pushed};

/// How often the use of a plane's keys is reported to it (it rebalances their leases as often).
const USAGE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Discovery client settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Control plane URLs (`http://host:port`).
    pub control_planes: Vec<String>,
    pub node_id: String,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Withdraw a plane's routes after it has been unreachable this long (`None`: keep them).
    pub withdraw_after: Option<Duration>,
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

/// The background service running one stream per control plane.
pub struct Discovery {
    config: DiscoveryConfig,
    state: Arc<TableState>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    pub fn new(config: DiscoveryConfig, state: Arc<TableState>, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            state,
            metrics,
        }
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.config.control_planes.is_empty() {
            tracing::warn!("no control plane configured: the proxy will route nothing");
        }
        let tasks: Vec<_> = self
            .config
            .control_planes
            .iter()
            .map(|url| {
                let plane = PlaneClient {
                    url: url.clone(),
                    config: self.config.clone(),
                    state: self.state.clone(),
                    metrics: self.metrics.clone(),
                };
                tokio::spawn(plane.run())
            })
            .collect();
        // Runs until the server shuts down.
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}

struct PlaneClient {
    url: String,
    config: DiscoveryConfig,
    state: Arc<TableState>,
    metrics: Arc<Metrics>,
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
}

impl PlaneClient {
    async fn run(self) {
        let mut session = PlaneSession::new(&self.url);
        let mut reconnect = Reconnect::new(self.config.reconnect(), Instant::now());
        loop {
            let began = Instant::now();
            let result = self.stream(&mut session, &mut reconnect).await;
            self.set_connected(false);
            let next = reconnect.ended(began, Instant::now(), rand::random());
            if next.withdraw && self.state.remove_plane(session.plane()) {
                session.withdrawn();
                tracing::warn!(url = %self.url, plane = %session.plane(), grace = ?self.config.withdraw_after, "control plane unreachable past the grace period: its routes are withdrawn");
            }
            match result {
                Err(StreamError::Url(e)) => {
                    tracing::error!(url = %self.url, error = %e, "giving up on this control plane");
                    return;
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
            tokio::time::sleep(next.delay).await;
        }
    }

    fn set_connected(&self, up: bool) {
        self.metrics
            .control_plane_connected
            .with_label_values(&[&self.url])
            .set(i64::from(up));
    }

    async fn stream(
        &self,
        session: &mut PlaneSession,
        reconnect: &mut Reconnect,
    ) -> Result<(), StreamError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| StreamError::Url(e.to_string()))?
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(self.config.keepalive_interval)
            .keep_alive_timeout(self.config.keepalive_interval)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await?;
        let mut client = RouteDiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::DiscoveryRequest>(4);
        // The receiver is alive (held below), so this cannot fail.
        let _ = tx.send(session.hello(&self.config.node_id)).await;
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
                            self.state.apply_leases(session.plane(), leases);
                            continue;
                        }
                    }
                    let pushed = session.received(resp);
                    self.handle(session, pushed).await
                }
                _ = report.tick() => {
                    let keys = self.state.usage(session.plane());
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
        } = pushed;
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
                self.state.apply_plane(&plane, routes);
                tracing::debug!(plane, %version, "ACK");
                session.ack(version, nonce)
            }
            Err(message) => {
                self.metrics.snapshots_rejected.inc();
                let nack = session.nack(nonce, message);
                let reason = nack.error_detail.as_ref().map(|d| d.message.as_str());
                tracing::warn!(plane, rejected = %version, running = %nack.version_info, reason, "NACK: keeping the last good table");
                nack
            }
        }
    }
}
