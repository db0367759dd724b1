//! `GET /stats`: the counts of the web UI's navigation bar and dashboard cards in one call.
//! Open, like `/proxies`: counts only, no names.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use multiverse_proto::discovery::v1 as pb;
use serde::Serialize;

use super::ApiState;
use crate::health::Status;

/// The routes.
pub fn router() -> Router<ApiState> {
    Router::new().route("/stats", get(stats))
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    backends: BackendCounts,
    instances: InstanceCounts,
    /// Models in the route snapshot being pushed.
    models: usize,
    endpoints: EndpointCounts,
    proxies: ProxyCounts,
}

/// Backends by health; `deregistered` ones (softly, by health checking) are counted apart.
#[derive(Debug, Default, Serialize)]
struct BackendCounts {
    total: usize,
    healthy: usize,
    unhealthy: usize,
    unknown: usize,
    deregistered: usize,
}

#[derive(Debug, Default, Serialize)]
struct InstanceCounts {
    total: usize,
    by_status: BTreeMap<&'static str, usize>,
}

/// Endpoints of the snapshot; `healthy` as pushed to the proxies (not unknown, draining, ...).
#[derive(Debug, Default, Serialize)]
struct EndpointCounts {
    total: usize,
    healthy: usize,
}

#[derive(Debug, Default, Serialize)]
struct ProxyCounts {
    connected: usize,
    current_version: String,
    /// Connected proxies that ACKed `current_version`.
    acked_current: usize,
}

async fn stats(State(s): State<ApiState>) -> Json<Stats> {
    let mut out = Stats::default();
    for b in s.registry.list() {
        out.backends.total += 1;
        let counter = match (b.deregistered, b.health.status) {
            (true, _) => &mut out.backends.deregistered,
            (false, Status::Healthy) => &mut out.backends.healthy,
            (false, Status::Unhealthy) => &mut out.backends.unhealthy,
            (false, Status::Unknown) => &mut out.backends.unknown,
        };
        *counter += 1;
    }
    for i in s.instances.list(None, None).await {
        out.instances.total += 1;
        *out.instances.by_status.entry(i.status.name()).or_default() += 1;
    }
    let current = s.publisher.current();
    out.models = current.snapshot.models.len();
    for e in current.snapshot.models.iter().flat_map(|m| &m.endpoints) {
        out.endpoints.total += 1;
        out.endpoints.healthy += usize::from(e.health == pb::HealthStatus::Healthy as i32);
    }
    let version = current.version.to_string();
    for n in s.nodes.list().iter().filter(|n| n.connected) {
        out.proxies.connected += 1;
        out.proxies.acked_current += usize::from(n.acked_version.as_deref() == Some(&version));
    }
    out.proxies.current_version = version;
    Json(out)
}
