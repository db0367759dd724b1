//! The one conversion from pushed routes to a routing table: a control plane's snapshot (or a
//! routes file, turned into the same snapshot) is validated into [`PlaneRoutes`] — a snapshot
//! that fails is NACKed with the [`SnapshotError`] — and the planes' routes are merged into one
//! [`RoutingTable`] ([`RoutingTable::merge`]), keeping each endpoint's runtime state by id.
//! When planes push different policies for one model, the plane with the lowest id wins
//! (deterministic on every proxy, whatever the order snapshots arrived in) and the table lists
//! the conflict (`policy_conflicts` in `/config_dump`; logged once and gauged by the state).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use multiverse_proto::discovery::v1 as pb;

use crate::routing::endpoint::EndpointState;
use crate::routing::keys::{KeySet, KeySpec, PlaneAuth};
use crate::routing::limits::KeyState;
use crate::routing::queue::AdmitQueue;
use crate::routing::table::{
    Endpoint, Health, LbStrategy, ModelKind, Policy, PolicyConflict, Protocol, Route, RoutingTable,
    DEFAULT_MAX_RETRIES, DEFAULT_QUEUE_TIMEOUT,
};

impl RoutingTable {
    /// Builds the union of several planes' routes: per model, the endpoints of every plane
    /// (the first plane, by id, sets the policy and kind; `planes` come in id order). `states`
    /// keeps per-endpoint state across versions (and `queues` each model's admission queue);
    /// entries for endpoints (and models) that are gone are dropped.
    pub fn merge<'a>(
        planes: impl IntoIterator<Item = (&'a String, &'a PlaneRoutes)>,
        source: &str,
        states: &mut HashMap<String, Arc<EndpointState>>,
        key_states: &mut HashMap<String, Arc<KeyState>>,
        queues: &mut HashMap<String, Arc<AdmitQueue>>,
    ) -> RoutingTable {
        let planes: Vec<(&String, &PlaneRoutes)> = planes.into_iter().collect();
        let mut merged: BTreeMap<String, (ModelKind, Policy, Vec<Arc<Endpoint>>)> = BTreeMap::new();
        let mut live = HashMap::new();
        // Model → the plane whose policy is used (the first to have it).
        let mut policy_of: HashMap<&str, &str> = HashMap::new();
        let mut conflicts: BTreeMap<String, PolicyConflict> = BTreeMap::new();
        for (plane_id, plane) in &planes {
            for m in &plane.models {
                let used = *policy_of
                    .entry(m.name.as_str())
                    .or_insert(plane_id.as_str());
                let entry = merged
                    .entry(m.name.clone())
                    .or_insert_with(|| (m.kind, m.policy.clone(), Vec::new()));
                if entry.1 != m.policy {
                    conflicts
                        .entry(m.name.clone())
                        .or_insert_with(|| PolicyConflict {
                            used: used.to_string(),
                            ignored: Vec::new(),
                        })
                        .ignored
                        .push(plane_id.to_string());
                }
                for e in &m.endpoints {
                    if entry.2.iter().any(|x| x.id == e.id) {
                        continue;
                    }
                    let state = states.get(&e.id).cloned().unwrap_or_default();
                    live.insert(e.id.clone(), state.clone());
                    entry.2.push(Arc::new(e.instantiate(state)));
                }
            }
        }
        *states = live;
        let version = match planes.len() {
            1 => planes.iter().map(|(_, p)| p.version.clone()).collect(),
            _ => planes
                .iter()
                .map(|(id, p)| format!("{id}={}", p.version))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut live_queues = HashMap::new();
        let models: BTreeMap<String, Arc<Route>> = merged
            .into_iter()
            .map(|(name, (kind, policy, endpoints))| {
                let queue = queues.get(&name).cloned().unwrap_or_default();
                live_queues.insert(name.clone(), queue.clone());
                let route = Arc::new(Route {
                    name: name.clone(),
                    kind,
                    policy,
                    limited: endpoints
                        .iter()
                        .any(|e| e.max_concurrent > 0 || e.max_requests_per_sec > 0),
                    endpoints,
                    cursor: AtomicUsize::new(0),
                    queue,
                });
                (name, route)
            })
            .collect();
        *queues = live_queues;
        let auth = KeySet::merge(planes.iter().map(|(_, p)| &p.auth), key_states);
        let mut table = RoutingTable::from_routes(version, source.to_string(), models, auth);
        table.policy_conflicts = conflicts;
        table
    }
}

/// One control plane's validated routes (the unit a snapshot is checked and stored as).
#[derive(Debug, Clone)]
pub struct PlaneRoutes {
    pub version: String,
    pub models: Vec<ModelSpec>,
    pub auth: PlaneAuth,
}

/// A validated model from a snapshot.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    pub policy: Policy,
    pub endpoints: Vec<EndpointSpec>,
}

/// A validated endpoint from a snapshot, before it gets runtime state.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub id: String,
    pub address: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub weight: u32,
    pub health: Health,
    pub tls: bool,
    pub host: String,
    pub path_prefix: String,
    pub labels: BTreeMap<String, String>,
    pub source: String,
    pub authorization: Option<HeaderValue>,
    pub max_concurrent: u32,
    pub max_requests_per_sec: u32,
    pub max_client_batch_size: u32,
    pub max_batch_tokens: u32,
}

impl EndpointSpec {
    fn instantiate(&self, state: Arc<EndpointState>) -> Endpoint {
        Endpoint {
            id: self.id.clone(),
            address: self.address.clone(),
            addr: self.addr,
            protocol: self.protocol,
            weight: self.weight,
            health: self.health,
            tls: self.tls,
            host: self.host.clone(),
            path_prefix: self.path_prefix.clone(),
            labels: self.labels.clone(),
            source: self.source.clone(),
            authorization: self.authorization.clone(),
            max_concurrent: self.max_concurrent,
            max_requests_per_sec: self.max_requests_per_sec,
            max_client_batch_size: self.max_client_batch_size,
            max_batch_tokens: self.max_batch_tokens,
            // Validated to be a visible-ASCII token in `from_snapshot`.
            id_header: HeaderValue::from_str(&self.id)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            state,
        }
    }
}

/// Why a snapshot was rejected (sent back in the NACK).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot has no body")]
    Empty,
    #[error("model #{0} has an empty name")]
    EmptyModelName(usize),
    #[error("model `{0}` appears twice")]
    DuplicateModel(String),
    #[error("model `{model}`: endpoint #{index} has an empty id")]
    EmptyEndpointId { model: String, index: usize },
    #[error("model `{model}`: endpoint id `{id}` must be visible ASCII without spaces")]
    BadEndpointId { model: String, id: String },
    #[error("model `{model}`: endpoint `{id}` appears twice")]
    DuplicateEndpoint { model: String, id: String },
    #[error("model `{model}`: endpoint `{id}` has invalid address `{address}`: {reason}")]
    BadAddress {
        model: String,
        id: String,
        address: String,
        reason: String,
    },
    #[error("model `{model}`: endpoint `{id}` has an unknown {field} value {value}")]
    UnknownEnum {
        model: String,
        id: String,
        field: &'static str,
        value: i32,
    },
    #[error("model `{model}`: endpoint `{id}`: upstream key is not a valid header value")]
    BadApiKey { model: String, id: String },
    #[error("model `{0}`: path_prefix must start with '/'")]
    BadPathPrefix(String),
    #[error("API key #{0} has an empty id")]
    EmptyKeyId(usize),
    #[error("API key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("API key `{0}`: sha256 must be 32 bytes")]
    BadKeyHash(String),
}

impl PlaneRoutes {
    /// Validates a pushed snapshot. Host names in addresses are resolved by `resolve`.
    pub fn from_snapshot(
        version: &str,
        snapshot: Option<&pb::RouteSnapshot>,
        resolve: &dyn Fn(&str) -> Result<SocketAddr, String>,
    ) -> Result<PlaneRoutes, SnapshotError> {
        let snapshot = snapshot.ok_or(SnapshotError::Empty)?;
        let mut seen = std::collections::HashSet::new();
        let mut models = Vec::with_capacity(snapshot.models.len());
        for (i, m) in snapshot.models.iter().enumerate() {
            if m.name.is_empty() {
                return Err(SnapshotError::EmptyModelName(i));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(SnapshotError::DuplicateModel(m.name.clone()));
            }
            let kind = pb::ModelKind::try_from(m.kind)
                .map(ModelKind::from)
                .unwrap_or(ModelKind::Chat);
            let policy = policy_from(m.policy.as_ref());
            let mut ids = std::collections::HashSet::new();
            let mut endpoints = Vec::with_capacity(m.endpoints.len());
            for (j, e) in m.endpoints.iter().enumerate() {
                endpoints.push(endpoint_from(&m.name, j, e, resolve, &mut ids)?);
            }
            models.push(ModelSpec {
                name: m.name.clone(),
                kind,
                policy,
                endpoints,
            });
        }
        Ok(PlaneRoutes {
            version: version.to_string(),
            models,
            auth: auth_from(snapshot.auth.as_ref())?,
        })
    }
}

/// A snapshot's keys, validated (ids unique, hashes 32 bytes).
fn auth_from(auth: Option<&pb::InferenceAuth>) -> Result<PlaneAuth, SnapshotError> {
    let Some(auth) = auth else {
        return Ok(PlaneAuth::default());
    };
    let mut ids = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (i, k) in auth.keys.iter().enumerate() {
        if k.id.is_empty() {
            return Err(SnapshotError::EmptyKeyId(i));
        }
        if !ids.insert(k.id.as_str()) {
            return Err(SnapshotError::DuplicateKey(k.id.clone()));
        }
        let hash = <[u8; 32]>::try_from(k.sha256.as_slice())
            .map_err(|_| SnapshotError::BadKeyHash(k.id.clone()))?;
        keys.push(KeySpec {
            id: k.id.clone(),
            hash,
            models: k.models.clone(),
            rpm: k.rpm,
            tpm: k.tpm,
            max_concurrent: k.max_concurrent,
            expires_at_unix_ms: k.expires_at_unix_ms,
        });
    }
    Ok(PlaneAuth {
        require_keys: auth.require_keys,
        keys,
    })
}

fn policy_from(p: Option<&pb::RoutingPolicy>) -> Policy {
    let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
    let p = p.cloned().unwrap_or_default();
    Policy {
        lb: pb::LbStrategy::try_from(p.lb).map_or(LbStrategy::LeastRequest, LbStrategy::from),
        max_retries: p.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        connect_timeout: ms(p.connect_timeout_ms),
        first_byte_timeout: ms(p.first_byte_timeout_ms),
        idle_timeout: ms(p.idle_timeout_ms),
        queue_max: p.queue_max,
        queue_timeout: ms(p.queue_timeout_ms).unwrap_or(DEFAULT_QUEUE_TIMEOUT),
        hedge_after: ms(p.hedge_after_ms),
    }
}

fn endpoint_from<'a>(
    model: &str,
    index: usize,
    e: &'a pb::Endpoint,
    resolve: &dyn Fn(&str) -> Result<SocketAddr, String>,
    ids: &mut std::collections::HashSet<&'a str>,
) -> Result<EndpointSpec, SnapshotError> {
    let model_s = || model.to_string();
    if e.id.is_empty() {
        return Err(SnapshotError::EmptyEndpointId {
            model: model_s(),
            index,
        });
    }
    if !e.id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SnapshotError::BadEndpointId {
            model: model_s(),
            id: e.id.clone(),
        });
    }
    if !ids.insert(e.id.as_str()) {
        return Err(SnapshotError::DuplicateEndpoint {
            model: model_s(),
            id: e.id.clone(),
        });
    }
    let addr = resolve(&e.address).map_err(|reason| SnapshotError::BadAddress {
        model: model_s(),
        id: e.id.clone(),
        address: e.address.clone(),
        reason,
    })?;
    let unknown = |field, value| SnapshotError::UnknownEnum {
        model: model_s(),
        id: e.id.clone(),
        field,
        value,
    };
    let protocol = pb::Protocol::try_from(e.protocol)
        .map(Protocol::from)
        .map_err(|_| unknown("protocol", e.protocol))?;
    let health = pb::HealthStatus::try_from(e.health)
        .map(Health::from)
        .map_err(|_| unknown("health", e.health))?;
    if !e.path_prefix.is_empty() && !e.path_prefix.starts_with('/') {
        return Err(SnapshotError::BadPathPrefix(model_s()));
    }
    let authorization = if e.upstream_api_key.is_empty() {
        None
    } else {
        let mut v =
            HeaderValue::from_str(&format!("Bearer {}", e.upstream_api_key)).map_err(|_| {
                SnapshotError::BadApiKey {
                    model: model_s(),
                    id: e.id.clone(),
                }
            })?;
        v.set_sensitive(true);
        Some(v)
    };
    let host = if e.host.is_empty() {
        e.address.clone()
    } else {
        e.host.clone()
    };
    let source = e
        .source
        .as_ref()
        .map(|s| {
            let kind = match pb::SourceKind::try_from(s.kind) {
                Ok(pb::SourceKind::TeiInstance) => "instance",
                Ok(pb::SourceKind::ExternalBackend) => "backend",
                _ => "unknown",
            };
            format!("{kind}/{}", s.name)
        })
        .unwrap_or_default();
    Ok(EndpointSpec {
        id: e.id.clone(),
        address: e.address.clone(),
        addr,
        protocol,
        weight: e.weight.max(1),
        health,
        tls: e.tls,
        host,
        path_prefix: e.path_prefix.trim_end_matches('/').to_string(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        source,
        authorization,
        max_concurrent: e.max_concurrent,
        max_requests_per_sec: e.max_requests_per_sec,
        max_client_batch_size: e.max_client_batch_size,
        max_batch_tokens: e.max_batch_tokens,
    })
}

/// Resolves `host:port` using only literal IP addresses (no DNS).
pub fn parse_socket_addr(address: &str) -> Result<SocketAddr, String> {
    address
        .parse::<SocketAddr>()
        .map_err(|e| format!("{e} (expected ip:port)"))
}

/// Resolves `host:port`, with DNS for names (blocking; run off the request path).
pub fn resolve_socket_addr(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| "missing :port".to_string())?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("expected host:port with a port in 1-65535".into());
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| "host name has no addresses".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::{ProtoClass, TEI_KINDS};
    use std::sync::atomic::Ordering;

    fn ep(id: &str, addr: &str) -> pb::Endpoint {
        pb::Endpoint {
            id: id.into(),
            address: addr.into(),
            ..Default::default()
        }
    }

    fn snap(models: Vec<(&str, Vec<pb::Endpoint>)>) -> pb::RouteSnapshot {
        pb::RouteSnapshot {
            models: models
                .into_iter()
                .map(|(n, e)| pb::Model {
                    name: n.into(),
                    endpoints: e,
                    ..Default::default()
                })
                .collect(),
            auth: None,
        }
    }

    #[test]
    fn valid_snapshot_becomes_routes_with_defaults() {
        let s = snap(vec![("demo", vec![ep("a", "127.0.0.1:1")])]);
        let p = PlaneRoutes::from_snapshot("7", Some(&s), &parse_socket_addr).expect("valid");
        let m = &p.models[0];
        assert_eq!(m.kind, ModelKind::Chat);
        assert_eq!(m.policy.lb, LbStrategy::LeastRequest);
        assert_eq!(m.policy.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(m.endpoints[0].weight, 1);
        assert_eq!(m.endpoints[0].host, "127.0.0.1:1");
    }

    #[test]
    fn invalid_snapshots_are_rejected_with_reason() {
        let bad_addr = snap(vec![("demo", vec![ep("a", "nowhere")])]);
        let err = PlaneRoutes::from_snapshot("1", Some(&bad_addr), &parse_socket_addr)
            .expect_err("bad address");
        assert!(
            err.to_string().contains("invalid address `nowhere`"),
            "{err}"
        );
        let dup = snap(vec![("m", vec![]), ("m", vec![])]);
        assert_eq!(
            PlaneRoutes::from_snapshot("1", Some(&dup), &parse_socket_addr).unwrap_err(),
            SnapshotError::DuplicateModel("m".into())
        );
        let mut bad_proto = ep("a", "127.0.0.1:1");
        bad_proto.protocol = 99;
        let s = snap(vec![("m", vec![bad_proto])]);
        assert!(matches!(
            PlaneRoutes::from_snapshot("1", Some(&s), &parse_socket_addr),
            Err(SnapshotError::UnknownEnum { .. })
        ));
        assert_eq!(
            PlaneRoutes::from_snapshot("1", None, &parse_socket_addr).unwrap_err(),
            SnapshotError::Empty
        );
    }

    #[test]
    fn merge_unions_planes_and_keeps_load_state() {
        let a = snap(vec![("demo", vec![ep("a1", "127.0.0.1:1")])]);
        let b = snap(vec![
            ("demo", vec![ep("b1", "127.0.0.1:2")]),
            ("other", vec![]),
        ]);
        let mut planes = BTreeMap::new();
        planes.insert(
            "cp-a".to_string(),
            PlaneRoutes::from_snapshot("3", Some(&a), &parse_socket_addr).expect("a"),
        );
        planes.insert(
            "cp-b".to_string(),
            PlaneRoutes::from_snapshot("9", Some(&b), &parse_socket_addr).expect("b"),
        );
        let mut states = HashMap::new();
        let t1 = RoutingTable::merge(
            &planes,
            "control-plane",
            &mut states,
            &mut HashMap::new(),
            &mut HashMap::new(),
        );
        assert_eq!(t1.version, "cp-a=3,cp-b=9");
        let demo = t1.route("demo").expect("demo");
        assert_eq!(demo.endpoints.len(), 2);
        demo.endpoints[0]
            .state
            .in_flight
            .store(5, Ordering::Relaxed);
        let t2 = RoutingTable::merge(
            &planes,
            "control-plane",
            &mut states,
            &mut HashMap::new(),
            &mut HashMap::new(),
        );
        let a1 = &t2.route("demo").expect("demo").endpoints[0];
        assert_eq!(a1.state.in_flight.load(Ordering::Relaxed), 5);
        assert!(t2.route("other").is_some());
        assert!(t2.route("missing").is_none());
        assert_eq!(
            t2.pinned("b1").map(|(r, i)| (r.name.as_str(), *i)),
            Some(("demo", 1))
        );
    }

    #[test]
    fn the_lowest_plane_id_sets_a_disputed_policy_and_the_conflict_is_listed() {
        let with_lb = |lb: pb::LbStrategy| {
            let mut s = snap(vec![("m1", vec![]), ("m2", vec![])]);
            s.models[0].policy = Some(pb::RoutingPolicy {
                lb: lb as i32,
                ..Default::default()
            });
            PlaneRoutes::from_snapshot("1", Some(&s), &parse_socket_addr).expect("valid")
        };
        let mut planes = BTreeMap::new();
        // Inserted out of order: the map's id order decides, not arrival.
        planes.insert("cp-b".to_string(), with_lb(pb::LbStrategy::Weighted));
        planes.insert("cp-a".to_string(), with_lb(pb::LbStrategy::RoundRobin));
        planes.insert("cp-c".to_string(), with_lb(pb::LbStrategy::RoundRobin));
        let t = RoutingTable::merge(
            &planes,
            "t",
            &mut HashMap::new(),
            &mut HashMap::new(),
            &mut HashMap::new(),
        );
        assert_eq!(t.route("m1").expect("m1").policy.lb, LbStrategy::RoundRobin);
        assert_eq!(
            t.policy_conflicts.get("m1"),
            Some(&PolicyConflict {
                used: "cp-a".into(),
                ignored: vec!["cp-b".into()],
            })
        );
        assert!(
            !t.policy_conflicts.contains_key("m2"),
            "m2's policies agree"
        );
    }

    #[test]
    fn sole_model_per_kind_and_class() {
        let mut embed = pb::Model {
            name: "emb".into(),
            kind: pb::ModelKind::Embedding as i32,
            endpoints: vec![ep("h", "127.0.0.1:1")],
            ..Default::default()
        };
        let mut grpc = ep("g", "127.0.0.1:2");
        grpc.protocol = pb::Protocol::Grpc as i32;
        embed.endpoints.push(grpc);
        let rerank = pb::Model {
            name: "rr".into(),
            kind: pb::ModelKind::Rerank as i32,
            endpoints: vec![ep("r", "127.0.0.1:3")],
            ..Default::default()
        };
        let snap = pb::RouteSnapshot {
            models: vec![embed, rerank],
            auth: None,
        };
        let mut planes = BTreeMap::new();
        planes.insert(
            "cp".to_string(),
            PlaneRoutes::from_snapshot("1", Some(&snap), &parse_socket_addr).expect("valid"),
        );
        let t = RoutingTable::merge(
            &planes,
            "t",
            &mut HashMap::new(),
            &mut HashMap::new(),
            &mut HashMap::new(),
        );
        let name = |k, c| t.sole(k, c).map(|r| r.name.clone());
        assert_eq!(
            name(ModelKind::Embedding.bit(), ProtoClass::Http).as_deref(),
            Some("emb")
        );
        assert_eq!(
            name(ModelKind::Embedding.bit(), ProtoClass::Grpc).as_deref(),
            Some("emb")
        );
        assert_eq!(name(ModelKind::Rerank.bit(), ProtoClass::Grpc), None);
        assert_eq!(
            name(TEI_KINDS, ProtoClass::Http),
            None,
            "two TEI models: ambiguous"
        );
        assert_eq!(name(TEI_KINDS, ProtoClass::Grpc).as_deref(), Some("emb"));
    }
}
