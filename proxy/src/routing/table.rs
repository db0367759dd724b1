//! The routing table a request reads: every model the proxy can serve, with its policy and
//! endpoints, and the lookups the request path makes (by model name, by endpoint id for
//! `x-instance`, the only model of a kind).
//!
//! A [`RoutingTable`] is immutable. The proxy holds the current one in an `ArcSwap`
//! ([`crate::routing::state`]); each request pins one `Arc<RoutingTable>` for its whole life
//! (retries included). Tables are built from pushed routes in one place,
//! [`crate::routing::snapshot`]. Per-endpoint runtime state ([`EndpointState`]) is shared by id
//! across table versions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use multiverse_common::rate::SECOND_NS;

use crate::routing::endpoint::EndpointState;
use crate::routing::keys::KeySet;
use crate::routing::outlier::{OutlierConfig, Verdict};
use crate::routing::queue::AdmitQueue;

/// Retries after the first attempt when the control plane leaves it unset.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Longest wait in a model's admission queue when the policy leaves it unset.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

// The shared vocabulary, re-exported where the routing code has always named it.
pub use multiverse_common::vocab::{Health, LbStrategy, ModelKind, ProtoClass, Protocol};

/// A set of model kinds, as a bit mask of [`ModelKind::bit`].
pub type KindMask = u8;

/// Kinds a TEI process serves.
pub const TEI_KINDS: KindMask = ModelKind::Embedding.bit()
    | ModelKind::SparseEmbedding.bit()
    | ModelKind::Rerank.bit()
    | ModelKind::Classify.bit();

/// A model's routing policy with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    pub lb: LbStrategy,
    pub max_retries: u32,
    #[serde(with = "millis")]
    pub connect_timeout: Option<Duration>,
    #[serde(with = "millis")]
    pub first_byte_timeout: Option<Duration>,
    #[serde(with = "millis")]
    pub idle_timeout: Option<Duration>,
    /// Requests that may wait for a slot when every endpoint is at its `max_concurrent`.
    pub queue_max: u32,
    #[serde(serialize_with = "millis::exact")]
    pub queue_timeout: Duration,
    /// Idempotent routes: a second endpoint gets the request after this long without a
    /// response header (`None`: no hedging; [`crate::request::hedge`]).
    #[serde(with = "millis")]
    pub hedge_after: Option<Duration>,
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }
    pub fn exact<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Control planes that push different policies for one model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyConflict {
    /// The plane whose policy is used: the lowest id among those that have the model.
    pub used: String,
    /// The planes whose policy differs from it.
    pub ignored: Vec<String>,
}

/// One place a model's requests can go.
#[derive(Debug, serde::Serialize)]
pub struct Endpoint {
    pub id: String,
    pub address: String,
    #[serde(skip)]
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub weight: u32,
    pub health: Health,
    pub tls: bool,
    /// Host header / SNI sent upstream.
    pub host: String,
    pub path_prefix: String,
    pub labels: BTreeMap<String, String>,
    pub source: String,
    /// Requests this proxy sends it at once; 0: unlimited.
    pub max_concurrent: u32,
    /// Requests per second this proxy sends it (its share of the fleet's); 0: unlimited.
    pub max_requests_per_sec: u32,
    /// Inputs per request (TEI's `max_client_batch_size`; 0: unknown), for batch embedding.
    pub max_client_batch_size: u32,
    /// Tokens per request (TEI's `max_batch_tokens`; 0: unknown), for batch embedding.
    pub max_batch_tokens: u32,
    /// `Bearer <key>` for upstream auth; never serialized.
    #[serde(skip)]
    pub authorization: Option<HeaderValue>,
    /// `x-multiverse-endpoint` value, built once.
    #[serde(skip)]
    pub id_header: HeaderValue,
    /// Load and outlier state, shared with the same endpoint in other table versions (shown as
    /// its engine-reported load only).
    #[serde(
        rename = "engine_load",
        serialize_with = "crate::routing::load::serialize_state"
    )]
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    /// Whether it is below its `max_concurrent` (always, when unlimited).
    #[inline]
    pub fn has_room(&self) -> bool {
        self.max_concurrent == 0
            || self.state.in_flight.load(Ordering::Relaxed) < u64::from(self.max_concurrent)
    }

    /// Counts one more request in flight, unless that would pass `max_concurrent` (then
    /// false). Unlimited: one atomic add; limited: a compare-and-swap loop.
    #[inline]
    pub fn reserve(&self) -> bool {
        if self.max_concurrent == 0 {
            self.state.in_flight.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let max = u64::from(self.max_concurrent);
        self.state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether one more request fits in its rate at `now_ms` (always, when unlimited: one
    /// branch).
    #[inline]
    pub fn under_rate(&self, now_ms: u64) -> bool {
        self.max_requests_per_sec == 0
            || self
                .state
                .rate
                .peek_in(
                    SECOND_NS,
                    u64::from(self.max_requests_per_sec),
                    ms_to_ns(now_ms),
                )
                .allowed
    }

    /// Takes one request of its rate at `now_ms`, unless it is over it (then false).
    #[inline]
    pub fn take_rate(&self, now_ms: u64) -> bool {
        self.max_requests_per_sec == 0
            || self
                .state
                .rate
                .take_in(
                    SECOND_NS,
                    u64::from(self.max_requests_per_sec),
                    1,
                    ms_to_ns(now_ms),
                )
                .allowed
    }

    /// Until its rate admits one more request (0 when it would now or it is unlimited).
    pub fn rate_retry_after(&self, now_ms: u64) -> Duration {
        if self.max_requests_per_sec == 0 {
            return Duration::ZERO;
        }
        let d = self.state.rate.peek_in(
            SECOND_NS,
            u64::from(self.max_requests_per_sec),
            ms_to_ns(now_ms),
        );
        Duration::from_nanos(d.retry_after_ns)
    }
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// A model and where its requests go.
#[derive(Debug, serde::Serialize)]
pub struct Route {
    pub name: String,
    pub kind: ModelKind,
    pub policy: Policy,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Round-robin cursor.
    #[serde(skip)]
    pub cursor: AtomicUsize,
    /// Whether any endpoint has a `max_concurrent` or a `max_requests_per_sec` (else
    /// admission is skipped).
    #[serde(skip)]
    pub limited: bool,
    /// Requests waiting for a slot (kept across tables by model name).
    #[serde(skip)]
    pub queue: Arc<AdmitQueue>,
}

impl Route {
    /// Endpoints that may take new requests.
    pub fn available(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.health.accepts_new())
            .count()
    }

    /// Records a gateway failure of `endpoints[index]` at `now` (outlier detection, with this
    /// route's endpoints as the peers that `max_ejection_percent` counts).
    pub fn record_failure(&self, index: usize, cfg: &OutlierConfig, now: u64) -> Verdict {
        let Some(endpoint) = self.endpoints.get(index) else {
            return Verdict::Counted;
        };
        endpoint.state.outlier.failure(cfg, now, || {
            let ejected = self
                .endpoints
                .iter()
                .filter(|e| e.state.outlier.is_ejected(now))
                .count();
            (ejected, self.endpoints.len())
        })
    }

    /// Records a response that was not a gateway failure.
    pub fn record_success(&self, index: usize, cfg: &OutlierConfig, now: u64) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.state.outlier.success(cfg, now);
        }
    }
}

/// The immutable table the data plane routes by.
#[derive(Debug, Default, serde::Serialize)]
pub struct RoutingTable {
    /// Version of the table (per control plane when several feed it).
    pub version: String,
    /// Where it came from (`control-plane`, `static:<file>`, `empty`).
    pub source: String,
    /// Inference API keys (ids and limits only in `/config_dump`).
    pub auth: KeySet,
    /// Models whose policy the control planes disagree on (the lowest plane id's is used).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_conflicts: BTreeMap<String, PolicyConflict>,
    models: BTreeMap<String, Arc<Route>>,
    #[serde(skip)]
    index: HashMap<String, Arc<Route>>,
    /// Endpoint id → a route holding it and its index there (for `x-instance`).
    #[serde(skip)]
    pins: HashMap<String, (Arc<Route>, usize)>,
    /// The only route matching a kind set and traffic class, where exactly one does.
    #[serde(skip)]
    sole: HashMap<(KindMask, ProtoClass), Arc<Route>>,
    /// Some route balances by prefix affinity (so bodies are hashed while scanned for `model`).
    #[serde(skip)]
    prefix_affinity: bool,
}

/// Kind sets that client routes select by when no model is named.
pub const SELECTORS: [KindMask; 6] = [
    ModelKind::Embedding.bit(),
    ModelKind::SparseEmbedding.bit(),
    ModelKind::Embedding.bit() | ModelKind::SparseEmbedding.bit(),
    ModelKind::Rerank.bit(),
    ModelKind::Classify.bit(),
    TEI_KINDS,
];

impl RoutingTable {
    /// The table before any snapshot arrived: routes nothing.
    pub fn empty() -> Self {
        RoutingTable {
            version: String::new(),
            source: "empty".into(),
            ..Default::default()
        }
    }

    /// The route for a model name.
    #[inline]
    pub fn route(&self, model: &str) -> Option<&Arc<Route>> {
        self.index.get(model)
    }

    /// The route holding endpoint `id`, and its index there.
    #[inline]
    pub fn pinned(&self, id: &str) -> Option<&(Arc<Route>, usize)> {
        self.pins.get(id)
    }

    /// The only model whose kind is in `kinds` with endpoints of `class`, if exactly one is.
    /// `kinds` must be one of [`SELECTORS`].
    #[inline]
    pub fn sole(&self, kinds: KindMask, class: ProtoClass) -> Option<&Arc<Route>> {
        self.sole.get(&(kinds, class))
    }

    /// Whether some route uses `lb = "prefix_affinity"`.
    #[inline]
    pub fn has_prefix_affinity(&self) -> bool {
        self.prefix_affinity
    }

    /// All routes, by name.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.models.values()
    }

    /// The table of these routes, with its lookup indexes (by name, by endpoint id for
    /// `x-instance`, and the sole model per kind set and traffic class).
    pub fn from_routes(
        version: String,
        source: String,
        models: BTreeMap<String, Arc<Route>>,
        auth: KeySet,
    ) -> RoutingTable {
        let index = models.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut pins = HashMap::new();
        for route in models.values() {
            for (i, e) in route.endpoints.iter().enumerate() {
                pins.entry(e.id.clone())
                    .or_insert_with(|| (route.clone(), i));
            }
        }
        let mut sole = HashMap::new();
        for kinds in SELECTORS {
            for class in [ProtoClass::Http, ProtoClass::Grpc] {
                let mut matching = models.values().filter(|r| {
                    r.kind.bit() & kinds != 0
                        && r.endpoints.iter().any(|e| e.protocol.class() == class)
                });
                if let (Some(only), None) = (matching.next(), matching.next()) {
                    sole.insert((kinds, class), only.clone());
                }
            }
        }
        let prefix_affinity = models
            .values()
            .any(|r| r.policy.lb == LbStrategy::PrefixAffinity);
        RoutingTable {
            version,
            source,
            auth,
            policy_conflicts: BTreeMap::new(),
            models,
            index,
            pins,
            sole,
            prefix_affinity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::fixtures::route_with;
    use multiverse_proto::discovery::v1::HealthStatus as H;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn failures_count_the_routes_own_ejected_endpoints_for_max_percent() {
        let r = route_with(&[H::Healthy; 3]);
        let c = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: 100 * MS,
            max_ejection: 250 * MS,
            max_ejection_percent: 10,
        };
        r.record_failure(0, &c, 1);
        assert_eq!(r.record_failure(0, &c, 1), Verdict::Ejected(100 * MS));
        r.record_failure(1, &c, 1);
        assert_eq!(
            r.record_failure(1, &c, 1),
            Verdict::CappedByMaxPercent,
            "one of three is the most 10% allows"
        );
        // A success resets endpoint 1's count; once endpoint 0 is back, endpoint 1 may go.
        r.record_success(1, &c, 50);
        assert_eq!(r.record_failure(1, &c, 101), Verdict::Counted);
        assert_eq!(r.record_failure(1, &c, 101), Verdict::Ejected(100 * MS));
        assert!(r.endpoints[1].state.outlier.is_ejected(101));
        assert_eq!(
            r.record_failure(7, &c, 1),
            Verdict::Counted,
            "no such endpoint"
        );
    }
}
