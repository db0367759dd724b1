//! `GET /proxies` (every proxy that connected: since when, the version it ACKed, its last NACK)
//! and `GET /snapshot` (the route snapshot being pushed, upstream keys redacted).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;

/// The routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/proxies", get(proxies))
        .route("/snapshot", get(snapshot))
}

/// Every proxy that connected: connected since, ACKed version, last NACK.
async fn proxies(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let current = s.publisher.current();
    Json(json!({
        "current_version": current.version.to_string(),
        "proxies": s.nodes.list(),
    }))
}

/// A pushed policy as operators read it: `lb` by name, 0 ("proxy default") as null.
fn policy_json(p: &multiverse_proto::discovery::v1::RoutingPolicy) -> serde_json::Value {
    use multiverse_proto::discovery::v1 as pb;
    let lb = pb::LbStrategy::try_from(p.lb)
        .map(multiverse_common::LbStrategy::from)
        .map(|l| l.as_str())
        .unwrap_or("least_request");
    let ms = |v: u32| (v > 0).then_some(v);
    json!({
        "lb": lb,
        "max_retries": p.max_retries,
        "connect_timeout_ms": ms(p.connect_timeout_ms),
        "first_byte_timeout_ms": ms(p.first_byte_timeout_ms),
        "idle_timeout_ms": ms(p.idle_timeout_ms),
        "hedge_after_ms": ms(p.hedge_after_ms),
    })
}

/// The snapshot proxies are being sent (upstream API keys redacted).
async fn snapshot(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let current = s.publisher.current();
    let models: Vec<_> = current
        .snapshot
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "policy": m.policy.as_ref().map(policy_json),
                "endpoints": m.endpoints.iter().map(|e| json!({
                    "id": e.id,
                    "address": e.address,
                    "health": e.health,
                    "tls": e.tls,
                    "host": e.host,
                    "path_prefix": e.path_prefix,
                    "weight": e.weight,
                    "has_api_key": !e.upstream_api_key.is_empty(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"version": current.version.to_string(), "models": models}))
}
