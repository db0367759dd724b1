//! Turns the control plane's desired state into the route snapshot proxies receive.
//!
//! One place decides what proxies see: every model served by a backend becomes a model with
//! that backend as an endpoint. Models are sorted by name and endpoints by id, so equal state
//! always gives an equal snapshot (and no needless push).

use std::collections::BTreeMap;

use multiverse_proto::discovery::v1 as pb;

use crate::backends::{parse_kind, BackendSpec};

/// Builds the snapshot for a set of backends.
pub fn snapshot(backends: &[BackendSpec]) -> pb::RouteSnapshot {
    let mut models: BTreeMap<&str, pb::Model> = BTreeMap::new();
    for b in backends {
        let Some(endpoint) = b.endpoint(pb::HealthStatus::Unknown) else {
            continue;
        };
        let kind = parse_kind(b.kind.as_deref()).unwrap_or(pb::ModelKind::Chat);
        for name in &b.models {
            let model = models.entry(name.as_str()).or_insert_with(|| pb::Model {
                name: name.clone(),
                kind: kind as i32,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, port: u16, models: &[&str]) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            url: format!("http://127.0.0.1:{port}"),
            models: models.iter().map(|m| m.to_string()).collect(),
            weight: 1,
            api_key: None,
            kind: None,
        }
    }

    #[test]
    fn models_gather_endpoints_in_stable_order() {
        let s = snapshot(&[backend("b", 2, &["demo", "x"]), backend("a", 1, &["demo"])]);
        let names: Vec<_> = s.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["demo", "x"]);
        let ids: Vec<_> = s.models[0]
            .endpoints
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.models[0].endpoints[0].address, "127.0.0.1:1");
        let again = snapshot(&[backend("a", 1, &["demo"]), backend("b", 2, &["demo", "x"])]);
        assert_eq!(s, again);
    }
}
