//! Turns the control plane's desired state into the route snapshot proxies receive, and
//! republishes it when something changed.
//!
//! One place decides what proxies see: every model served by a routable backend becomes a
//! model with that backend as an endpoint, carrying the backend's health. Models are sorted by
//! name and endpoints by id, so equal state always gives an equal snapshot (and no push). A
//! snapshot is always the whole state, so no snapshot ever routes a model to nothing while an
//! endpoint for it exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use multiverse_proto::discovery::v1 as pb;

use crate::backends::registry::Registry;
use crate::changes::Changes;
use crate::discovery::publisher::Publisher;
use crate::instances::{InstanceRoute, Manager};
use crate::store::BackendRecord;

/// Builds the snapshot for backends (with their health) and serving TEI instances.
pub fn snapshot(
    backends: &[(BackendRecord, pb::HealthStatus)],
    instances: &[InstanceRoute],
) -> pb::RouteSnapshot {
    let mut models: BTreeMap<&str, pb::Model> = BTreeMap::new();
    for i in instances {
        models
            .entry(i.model.as_str())
            .or_insert_with(|| pb::Model {
                name: i.model.clone(),
                kind: i.kind as i32,
                policy: Some(pb::RoutingPolicy::default()),
                endpoints: Vec::new(),
            })
            .endpoints
            .push(i.endpoint.clone());
    }
    for (b, health) in backends {
        let Some(endpoint) = b.endpoint(*health) else {
            continue;
        };
        for name in &b.models {
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
    }
    pb::RouteSnapshot { models }
}

/// Publishes a new snapshot after every change, coalescing bursts: changes within `coalesce`
/// of the first become one version.
pub async fn republish(
    changes: Changes,
    registry: Arc<Registry>,
    instances: Arc<Manager>,
    publisher: Publisher,
    coalesce: Duration,
) {
    loop {
        changes.changed().await;
        tokio::time::sleep(coalesce).await;
        let version = publisher.publish(snapshot(&registry.routable(), &instances.routable()));
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
        let s = snapshot(
            &[backend("b", 2, &["demo", "x"]), backend("a", 1, &["demo"])],
            &[],
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
        let again = snapshot(
            &[backend("a", 1, &["demo"]), backend("b", 2, &["demo", "x"])],
            &[],
        );
        assert_eq!(s, again);
    }
}
