//! The proxy's side of route discovery: one long-lived stream per configured control plane.
//!
//! Per plane: connect, say hello (node id, build version, the version already held), then for
//! every snapshot pushed validate it, apply it and ACK (version + nonce), or NACK it (the version
//! still running + nonce + reason) and keep serving the last good table. When the stream breaks,
//! the plane's routes stay in the table (or, with `withdraw_after`, are withdrawn once the plane
//! has been unreachable that long) and the proxy reconnects with jittered exponential backoff.
//! HTTP/2 keepalives detect a dead control plane within seconds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use multiverse_common::Backoff;
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_client::RouteDiscoveryClient;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ops::metrics::Metrics;
use crate::routing::snapshot::{resolve_socket_addr, PlaneRoutes};
use crate::routing::TableState;

/// Reconnect delays are drawn from `[d / 2, d)`, so proxies that lost a plane together do not
/// all reconnect at once.
const RECONNECT_JITTER: f64 = 0.5;

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
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max)
            .with_jitter(RECONNECT_JITTER);
        // The plane's id is learned from its first response; until then the URL stands in.
        let mut plane = self.url.clone();
        let mut down_since = Some(tokio::time::Instant::now());
        loop {
            let connected_at = tokio::time::Instant::now();
            let result = self.stream(&mut plane, &mut down_since).await;
            self.set_connected(false);
            let down = *down_since.get_or_insert_with(tokio::time::Instant::now);
            if let Some(grace) = self.config.withdraw_after {
                if down.elapsed() >= grace && self.state.remove_plane(&plane) {
                    tracing::warn!(url = %self.url, plane = %plane, ?grace, "control plane unreachable past the grace period: its routes are withdrawn");
                }
            }
            match result {
                Err(StreamError::Url(e)) => {
                    tracing::error!(url = %self.url, error = %e, "giving up on this control plane");
                    return;
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "control plane unreachable; serving the last good table")
                }
                Ok(()) => {}
            }
            // A stream that lived a while resets the backoff.
            if connected_at.elapsed() > self.config.backoff_max {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
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
        plane: &mut String,
        down_since: &mut Option<tokio::time::Instant>,
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
        let hello = pb::DiscoveryRequest {
            node: Some(pb::Node {
                id: self.config.node_id.clone(),
                build_version: env!("CARGO_PKG_VERSION").to_string(),
                labels: Default::default(),
            }),
            version_info: self.state.plane_version(plane),
            response_nonce: String::new(),
            error_detail: None,
        };
        // The receiver is alive (held below), so this cannot fail.
        let _ = tx.send(hello).await;
        let mut responses = client
            .stream_routes(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.set_connected(true);
        *down_since = None;
        tracing::info!(url = %self.url, "discovery stream open");
        while let Some(resp) = responses.message().await? {
            if !resp.control_plane_id.is_empty() && resp.control_plane_id != *plane {
                *plane = resp.control_plane_id.clone();
            }
            let reply = self.handle(plane, resp).await;
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        Err(StreamError::Closed)
    }

    /// Validates and applies one snapshot; returns the ACK or NACK for it.
    async fn handle(&self, plane: &str, resp: pb::DiscoveryResponse) -> pb::DiscoveryRequest {
        let pb::DiscoveryResponse {
            version_info,
            nonce,
            snapshot,
            ..
        } = resp;
        let version = version_info.clone();
        // Name resolution may block: keep it off the runtime's workers.
        let checked = tokio::task::spawn_blocking(move || {
            PlaneRoutes::from_snapshot(&version, snapshot.as_ref(), &resolve_socket_addr)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("validation task failed: {e}")));
        match checked {
            Ok(routes) => {
                self.state.apply_plane(plane, routes);
                tracing::debug!(plane, version = %version_info, "ACK");
                pb::DiscoveryRequest {
                    node: None,
                    version_info,
                    response_nonce: nonce,
                    error_detail: None,
                }
            }
            Err(message) => {
                self.metrics.snapshots_rejected.inc();
                let running = self.state.plane_version(plane);
                tracing::warn!(plane, rejected = %version_info, running = %running, reason = %message, "NACK: keeping the last good table");
                pb::DiscoveryRequest {
                    node: None,
                    version_info: running,
                    response_nonce: nonce,
                    error_detail: Some(pb::ErrorDetail { message }),
                }
            }
        }
    }
}
