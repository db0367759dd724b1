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
