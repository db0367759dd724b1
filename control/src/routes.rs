//! Turns the control plane's desired state into the route snapshot proxies receive, and
//! republishes it when something changed.
//!
//! One place decides what proxies see (the inference keys' hashes and limits ride along): every model served by a routable backend or TEI instance
//! becomes a model with that backend or instance as an endpoint, carrying its health (a
//! backend's checked health; an instance is HEALTHY when ready, UNHEALTHY when unhealthy,
//! DRAINING while stopping, and absent otherwise). Models are sorted by name and endpoints by
//! id, so equal state always gives an equal snapshot (and no push). Each model's policy is
//! layered as [`crate::models`] says: its API and `[models.<name>]` policy over its
//! backends' and instances' own, in endpoint-id order. A snapshot is always the
//! whole state, so no snapshot ever routes a model to nothing while an endpoint for it exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use multiverse_proto::discovery::v1 as pb;

use crate::backends::parse_url;
use crate::backends::registry::Registry;
use crate::changes::Changes;
use crate::discovery::publisher::Publisher;
use crate::instances::supervisor::{BatchLimits, State};
use crate::instances::Manager;
use crate::keys::Keys;
use crate::models::policy::{self, PolicySpec};
use crate::models::Policies;
use crate::store::{BackendRecord, InstanceRecord, Protocol};

/// TEI's own default for `--max-concurrent-requests`.
pub const TEI_MAX_CONCURRENT_REQUESTS: u32 = 512;

/// The TEI instances as routes see them: each record with its state, and the host proxies
/// reach them on.
pub struct Instances<'a> {
    pub advertise_host: &'a str,
    /// With what each instance's `/info` said of its batch limits.
    pub instances: &'a [(InstanceRecord, State, BatchLimits)],
}

/// Builds the snapshot for backends (with their health) and TEI instances, with the
/// inference keys' settings and the models' policies (`policies`: the API's over the
/// config's, by model).
pub fn snapshot(
    backends: &[(BackendRecord, pb::HealthStatus)],
    instances: Instances<'_>,
    auth: pb::InferenceAuth,
    policies: &BTreeMap<String, PolicySpec>,
) -> pb::RouteSnapshot {
    let mut models: BTreeMap<&str, pb::Model> = BTreeMap::new();
    // Each model's endpoints' own policies, by endpoint id.
    let mut asked: BTreeMap<&str, BTreeMap<&str, &PolicySpec>> = BTreeMap::new();
    for (record, state, limits) in instances.instances {
        let Some(endpoint) = instance_endpoint(record, *state, *limits, instances.advertise_host)
        else {
            continue;
        };
        let spec = &record.spec;
        if let Some(p) = &spec.policy {
            asked
                .entry(spec.model_name())
                .or_default()
                .insert(&spec.name, p);
        }
        models
            .entry(spec.model_name())
            .or_insert_with(|| pb::Model {
                name: spec.model_name().to_string(),
                kind: pb::ModelKind::from(spec.model_kind()) as i32,
                policy: Some(pb::RoutingPolicy::default()),
                endpoints: Vec::new(),
            })
            .endpoints
            .push(endpoint);
    }
    for (b, health) in backends {
        let Some(endpoint) = backend_endpoint(b, *health) else {
            continue;
        };
        for name in &b.models {
            if let Some(p) = &b.policy {
                asked.entry(name).or_default().insert(&b.name, p);
            }
            let model = models.entry(name.as_str()).or_insert_with(|| pb::Model {
                name: name.clone(),
                kind: b.model_kind() as i32,
                policy: Some(pb::RoutingPolicy::default()),
                endpoints: Vec::new(),
            });
            model.endpoints.push(endpoint.clone());
        }
    }
    let mut models: Vec<pb::Model> = models.into_values().collect();
    for m in &mut models {
        m.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        let mut layered = policies.get(&m.name).cloned().unwrap_or_default();
        for p in asked
            .get(m.name.as_str())
            .into_iter()
            .flat_map(|a| a.values())
        {
            layered = policy::layer(&layered, p);
        }
        m.policy = Some(policy::to_pb(&layered));
    }
    pb::RouteSnapshot {
        models,
        auth: Some(auth),
    }
}

/// The endpoint a backend contributes to each of its models (at its pinned address, if any).
fn backend_endpoint(b: &BackendRecord, health: pb::HealthStatus) -> Option<pb::Endpoint> {
    let target = parse_url(&b.url).ok()?;
    Some(pb::Endpoint {
        id: b.name.clone(),
        address: b.pinned_address.clone().unwrap_or(target.address),
        protocol: pb::Protocol::Http1 as i32,
        weight: b.weight,
        health: health as i32,
        labels: b.tags.clone().into_iter().collect(),
        source: Some(pb::EndpointSource {
            kind: pb::SourceKind::ExternalBackend as i32,
            name: b.name.clone(),
        }),
        tls: target.tls,
        host: target.host,
        path_prefix: target.path_prefix,
        upstream_api_key: b.api_key.clone().unwrap_or_default(),
        max_concurrent: b.max_concurrent.unwrap_or(0),
        // The fleet-wide limit; each proxy's stream carries its share (`discovery::shares`).
        max_requests_per_sec: b.max_requests_per_sec.unwrap_or(0),
        ..Default::default()
    })
}

/// The endpoint of an instance in `state`, if it is routed at all. Its batch limits are what
/// its `/info` said, else what its spec passed TEI (0 when neither is known: TEI's defaults).
fn instance_endpoint(
    r: &InstanceRecord,
    state: State,
    limits: BatchLimits,
    host: &str,
) -> Option<pb::Endpoint> {
    let health = match state {
        State::Ready => pb::HealthStatus::Healthy,
        State::Unhealthy => pb::HealthStatus::Unhealthy,
        State::Stopping => pb::HealthStatus::Draining,
        _ => return None,
    };
    let spec = &r.spec;
    Some(pb::Endpoint {
        id: spec.name.clone(),
        address: format!("{host}:{}", r.port),
        protocol: match spec.protocol {
            Protocol::Http => pb::Protocol::Http1,
            Protocol::Grpc => pb::Protocol::Grpc,
        } as i32,
        weight: 1,
        health: health as i32,
        labels: spec.tags.clone().into_iter().collect(),
        source: Some(pb::EndpointSource {
            kind: pb::SourceKind::TeiInstance as i32,
            name: spec.name.clone(),
        }),
        // What TEI itself admits (`--max-concurrent-requests`, TEI's default when unset):
        // beyond it TEI answers 429, so the proxy queues instead.
        max_concurrent: spec
            .max_concurrent_requests
            .unwrap_or(TEI_MAX_CONCURRENT_REQUESTS),
        // The fleet-wide limit; each proxy's stream carries its share (`discovery::shares`).
        max_requests_per_sec: spec
            .limits
            .as_ref()
            .and_then(|l| l.max_requests_per_sec)
            .unwrap_or(0),
        max_client_batch_size: match limits.max_client_batch_size {
            0 => spec.max_client_batch_size.unwrap_or(0),
            n => n,
        },
        max_batch_tokens: match limits.max_batch_tokens {
            0 => spec
                .max_batch_tokens
                .and_then(|t| t.tokens())
                .or_else(|| r.batch_sizing.as_ref().map(|s| s.tokens))
                .unwrap_or(0),
            n => n,
        },
        ..Default::default()
    })
}

/// The snapshot of the current state.
pub fn current(
    registry: &Registry,
    instances: &Manager,
    keys: &Keys,
    policies: &Policies,
) -> pb::RouteSnapshot {
    snapshot(
        &registry.routable(),
        Instances {
            advertise_host: instances.advertise_host(),
            instances: &instances.routable(),
        },
        keys.snapshot(),
        &policies.effective(),
    )
}

/// Publishes a new snapshot after every change, coalescing bursts: changes within `coalesce`
/// of the first become one version.
pub async fn republish(
    changes: Changes,
    registry: Arc<Registry>,
    instances: Arc<Manager>,
    keys: Arc<Keys>,
    policies: Arc<Policies>,
    publisher: Publisher,
    coalesce: Duration,
) {
    loop {
        changes.changed().await;
        tokio::time::sleep(coalesce).await;
        let version = publisher
            .publish(current(&registry, &instances, &keys, &policies))
            .await;
        tracing::debug!(version, "snapshot published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, port: u16, models: &[&str]) -> (BackendRecord, pb::HealthStatus) {
        let mut r = BackendRecord::example(name);
        r.url = format!("http://127.0.0.1:{port}");
        r.models = models.iter().map(|m| m.to_string()).collect();
        (r, pb::HealthStatus::Healthy)
    }

    #[test]
    fn models_gather_endpoints_in_stable_order() {
        let none = Instances {
            advertise_host: "h",
            instances: &[],
        };
        let s = snapshot(
            &[backend("b", 2, &["demo", "x"]), backend("a", 1, &["demo"])],
            none,
            pb::InferenceAuth::default(),
            &BTreeMap::new(),
        );
        let names: Vec<_> = s.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["demo", "x"]);
        let ids: Vec<_> = s.models[0]
            .endpoints
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.models[0].endpoints[0].address, "127.0.0.1:1");
        assert_eq!(s.models[0].endpoints[0].upstream_api_key, "sk-secret");
        let none = Instances {
            advertise_host: "h",
            instances: &[],
        };
        let again = snapshot(
            &[backend("a", 1, &["demo"]), backend("b", 2, &["demo", "x"])],
            none,
            pb::InferenceAuth::default(),
            &BTreeMap::new(),
        );
        assert_eq!(s, again);
    }

    #[test]
    fn model_policies_win_over_backends_which_layer_in_id_order() {
        let none = || Instances {
            advertise_host: "h",
            instances: &[],
        };
        let asking = |name, port, p: PolicySpec| {
            let mut b = backend(name, port, &["m1"]);
            b.0.policy = Some(p);
            b
        };
        let backends = [
            asking(
                "b",
                2,
                PolicySpec {
                    lb: Some("weighted".into()),
                    max_retries: Some(1),
                    idle_timeout_ms: Some(9),
                    ..Default::default()
                },
            ),
            asking(
                "a",
                1,
                PolicySpec {
                    lb: Some("round_robin".into()),
                    ..Default::default()
                },
            ),
        ];
        let s = snapshot(
            &backends,
            none(),
            pb::InferenceAuth::default(),
            &BTreeMap::new(),
        );
        let p = s.models[0].policy.expect("policy");
        assert_eq!(p.lb, pb::LbStrategy::RoundRobin as i32, "`a` sorts first");
        assert_eq!((p.max_retries, p.idle_timeout_ms), (Some(1), 9), "from `b`");
        let section = BTreeMap::from([(
            "m1".to_string(),
            PolicySpec {
                lb: Some("least_request".into()),
                first_byte_timeout_ms: Some(300),
                ..Default::default()
            },
        )]);
        let s = snapshot(&backends, none(), pb::InferenceAuth::default(), &section);
        let p = s.models[0].policy.expect("policy");
        assert_eq!(p.lb, pb::LbStrategy::LeastRequest as i32, "the model wins");
        assert_eq!(p.first_byte_timeout_ms, 300);
        assert_eq!(p.max_retries, Some(1), "unset in the model: the backend's");
    }

    #[test]
    fn instances_are_routed_by_state_on_the_advertised_host() {
        let record = |name: &str, port: u16| InstanceRecord {
            spec: crate::store::InstanceSpec {
                name: name.into(),
                model_id: "bge".into(),
                ..Default::default()
            },
            port,
            prometheus_port: port + 1,
            desired: crate::store::Desired::Running,
            batch_sizing: None,
            created_at: "t".into(),
        };
        let known = BatchLimits {
            max_client_batch_size: 8,
            max_batch_tokens: 2048,
        };
        let mut spec_only = record("sick", 1002);
        spec_only.spec.max_client_batch_size = Some(4);
        let instances = [
            (record("ready", 1000), State::Ready, known),
            (spec_only, State::Unhealthy, BatchLimits::default()),
            (
                record("leaving", 1004),
                State::Stopping,
                BatchLimits::default(),
            ),
            (record("booting", 1006), State::Starting, known),
            (record("off", 1008), State::Stopped, known),
        ];
        let s = snapshot(
            &[],
            Instances {
                advertise_host: "10.0.0.7",
                instances: &instances,
            },
            pb::InferenceAuth::default(),
            &BTreeMap::new(),
        );
        assert_eq!(s.models.len(), 1);
        assert_eq!(s.models[0].kind, pb::ModelKind::Embedding as i32);
        assert!(
            s.models[0]
                .endpoints
                .iter()
                .all(|e| e.max_concurrent == TEI_MAX_CONCURRENT_REQUESTS),
            "TEI's own default admits that many"
        );
        let got: Vec<_> = s.models[0]
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e.address.as_str(), e.health))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "leaving",
                    "10.0.0.7:1004",
                    pb::HealthStatus::Draining as i32
                ),
                ("ready", "10.0.0.7:1000", pb::HealthStatus::Healthy as i32),
                ("sick", "10.0.0.7:1002", pb::HealthStatus::Unhealthy as i32),
            ]
        );
        // /info's limits, else the spec's, else unknown (0).
        let limits: Vec<_> = s.models[0]
            .endpoints
            .iter()
            .map(|e| (e.max_client_batch_size, e.max_batch_tokens))
            .collect();
        assert_eq!(limits, [(0, 0), (8, 2048), (4, 0)]);
    }
}
