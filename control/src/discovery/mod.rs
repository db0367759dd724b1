//! Route discovery: the gRPC stream every proxy keeps open to this control plane.
//!
//! Per stream (xDS state-of-the-world semantics, see `proto/.../discovery.proto`): the first
//! request must name the node; the current snapshot is sent at once and then again on every
//! change, each response with a fresh nonce. ACKs and NACKs are recorded in [`nodes::Nodes`];
//! a request whose nonce is not the latest one sent is stale and ignored (see
//! `control/tests/discovery_nonces.rs`). After its first snapshot a node also gets lease
//! updates (its share of the inference keys' limits, [`crate::keys::leases`]) whenever they
//! change, and its usage reports feed the next split. Each node's snapshot carries its share
//! of the instances' request rates ([`shares`]); it is sent again when the proxies connected
//! to this plane change.
//! Engine-load updates ([`crate::load`]) are forwarded as the scraper publishes them, also
//! without version or nonce.

pub mod nodes;
pub mod publisher;
pub mod shares;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_server::RouteDiscovery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::keys::leases::Leases;
use crate::load::Loads;
use crate::metrics::ControlMetrics;
use nodes::Nodes;
use publisher::{Publisher, Versioned};

/// Serves route discovery on `listener` until `shutdown` resolves (HTTP/2 keep-alive pings
/// every 10 s, so a vanished proxy is noticed), over TLS when `tls` is given (mTLS and the
/// allow-list are in its verifier: see [`crate::tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: DiscoveryService,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(pb::route_discovery_server::RouteDiscoveryServer::new(
            service,
        ));
    match tls {
        Some(config) => {
            router
                .serve_with_incoming_shutdown(crate::tls::accept(listener, config), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
                .await
        }
    }
}

/// The tonic service.
pub struct DiscoveryService {
    control_plane_id: String,
    publisher: Publisher,
    nodes: Arc<Nodes>,
    metrics: Arc<ControlMetrics>,
    leases: Arc<Leases>,
    loads: Loads,
}

impl DiscoveryService {
    pub fn new(
        control_plane_id: String,
        publisher: Publisher,
        nodes: Arc<Nodes>,
        metrics: Arc<ControlMetrics>,
        leases: Arc<Leases>,
        loads: Loads,
    ) -> Self {
        Self {
            control_plane_id,
            publisher,
            nodes,
            metrics,
            leases,
            loads,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RouteDiscovery for DiscoveryService {
    type StreamRoutesStream = ResponseStream;

    async fn stream_routes(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamRoutesStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the node hello"))?;
        let node = hello
            .node
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
        let (tx, rx) = mpsc::channel(4);
        let stream = NodeStream {
            node_id: node.id.clone(),
            stream: self.nodes.connected(&node.id, &node.build_version),
            control_plane_id: self.control_plane_id.clone(),
            nodes: self.nodes.clone(),
            metrics: self.metrics.clone(),
            leases: self.leases.clone(),
            sent_leases: Vec::new(),
            sent_membership: (0, 0),
            loads: self.loads.clone(),
            nonce: 0,
            sent_version: 0,
            tx,
        };
        tracing::info!(node = %node.id, has_version = %hello.version_info, "proxy connected");
        // Never a smaller version than the one the proxy holds from this plane.
        let first = hello
            .version_info
            .parse::<u64>()
            .map_or(0, |held| self.publisher.require_above(held));
        tokio::spawn(stream.run(inbound, self.publisher.clone(), first));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The server side of one proxy's stream.
struct NodeStream {
    node_id: String,
    stream: u64,
    control_plane_id: String,
    nodes: Arc<Nodes>,
    metrics: Arc<ControlMetrics>,
    leases: Arc<Leases>,
    /// The leases last sent to this node.
    sent_leases: Vec<pb::KeyLease>,
    /// Its place among the connected proxies and their number when its last snapshot was sent
    /// (its endpoint shares).
    sent_membership: (usize, usize),
    /// The engine-load updates to forward ([`crate::load`]).
    loads: Loads,
    /// Last nonce sent, and the version it carried.
    nonce: u64,
    sent_version: u64,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
}

impl NodeStream {
    /// Sends the current snapshot once its version is at least `first`, then every new one, and
    /// records the answers; until either side ends the stream.
    async fn run(
        mut self,
        mut inbound: Streaming<pb::DiscoveryRequest>,
        publisher: Publisher,
        first: u64,
    ) {
        let mut updates = publisher.subscribe();
        let ready = loop {
            tokio::select! {
                ready = updates.wait_for(|v| v.version >= first) => break ready.is_ok(),
                // Nothing is expected from the proxy before its first snapshot (a request
                // would be stale); the end of the stream ends it.
                msg = inbound.message() => if !matches!(msg, Ok(Some(_))) {
                    break false;
                },
            }
        };
        let current = updates.borrow_and_update().clone();
        let mut lease_changes = self.leases.subscribe();
        if ready {
            // From its first snapshot on, the node has a share of the keys' limits and of the
            // instances' rates (counted before that snapshot, so its share is in it).
            self.leases.connected(&self.node_id, self.stream);
            lease_changes.borrow_and_update();
        }
        if ready && self.send(&current).await {
            if !self.send_leases().await {
                self.end();
                return;
            }
            let mut loads = self.loads.clone();
            // False once the scraper is gone (scraping off): nothing more to forward.
            let mut loads_live = true;
            loop {
                tokio::select! {
                    changed = loads.changed(), if loads_live => {
                        if changed.is_err() {
                            loads_live = false;
                            continue;
                        }
                        let update = loads.borrow_and_update().clone();
                        if let Some(update) = update {
                            if !self.send_load(&update).await {
                                break;
                            }
                        }
                    }
                    changed = lease_changes.changed() => {
                        if changed.is_err() || !self.send_leases().await {
                            break;
                        }
                        // Proxies came or went: this node's rate shares changed (if any
                        // endpoint has a rate; otherwise nothing is re-sent).
                        if self.leases.membership(&self.node_id) != self.sent_membership {
                            let latest = updates.borrow().clone();
                            if shares::any_limited(&latest.snapshot) && !self.send(&latest).await {
                                break;
                            }
                        }
                    }
                    changed = updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let next = updates.borrow_and_update().clone();
                        if !self.send(&next).await {
                            break;
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => self.on_request(req),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(node = %self.node_id, %status, "stream error");
                            break;
                        }
                    },
                }
            }
        }
        self.end();
    }

    fn end(&self) {
        self.leases.disconnected(&self.node_id, self.stream);
        self.nodes.disconnected(&self.node_id, self.stream);
        tracing::info!(node = %self.node_id, "proxy disconnected");
    }

    /// Sends the node its leases if they changed since the last ones sent.
    async fn send_leases(&mut self) -> bool {
        let leases = self.leases.leases_for(&self.node_id);
        if leases == self.sent_leases {
            return true;
        }
        self.sent_leases.clone_from(&leases);
        let resp = pb::DiscoveryResponse {
            control_plane_id: self.control_plane_id.clone(),
            leases: Some(pb::LeaseUpdate { keys: leases }),
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    /// Forwards an engine-load update: on its own, with no version or nonce (the proxy does
    /// not answer it, so it can never be mistaken for a snapshot's ACK).
    async fn send_load(&self, update: &pb::LoadUpdate) -> bool {
        let resp = pb::DiscoveryResponse {
            control_plane_id: self.control_plane_id.clone(),
            load: Some(update.clone()),
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    async fn send(&mut self, v: &Versioned) -> bool {
        self.nonce += 1;
        self.sent_version = v.version;
        let mut snapshot = v.snapshot.clone();
        self.sent_membership = self.leases.membership(&self.node_id);
        let (index, proxies) = self.sent_membership;
        shares::apply(&mut snapshot, index, proxies);
        let resp = pb::DiscoveryResponse {
            version_info: v.version.to_string(),
            nonce: self.nonce.to_string(),
            snapshot: Some(snapshot),
            control_plane_id: self.control_plane_id.clone(),
            leases: None,
            load: None,
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    fn on_request(&self, req: pb::DiscoveryRequest) {
        if let Some(usage) = &req.usage {
            // A usage report rides alone: no nonce, no ACK.
            self.leases.report(&self.node_id, usage);
            return;
        }
        if req.response_nonce != self.nonce.to_string() {
            tracing::debug!(node = %self.node_id, nonce = %req.response_nonce, "stale nonce ignored");
            return;
        }
        match req.error_detail {
            Some(err) => {
                let rejected = self.sent_version.to_string();
                self.metrics.nacks.with_label_values(&[&self.node_id]).inc();
                tracing::warn!(node = %self.node_id, %rejected, running = %req.version_info, reason = %err.message, "proxy NACKed the snapshot");
                self.nodes
                    .nacked(&self.node_id, self.stream, &rejected, &err.message);
                // The NACK still says which version the node runs.
                if !req.version_info.is_empty() {
                    self.nodes
                        .acked(&self.node_id, self.stream, &req.version_info);
                }
            }
            None => {
                tracing::debug!(node = %self.node_id, version = %req.version_info, "ACK");
                self.nodes
                    .acked(&self.node_id, self.stream, &req.version_info);
            }
        }
    }
}
