//! The operator REST API: one axum router per resource, merged here.
//!
//! Errors are JSON `{"error", "code", "timestamp"}` with a stable `code`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::discovery::nodes::{now_rfc3339, Nodes};
use crate::discovery::publisher::Publisher;

/// Everything handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub control_plane_id: String,
    pub publisher: Publisher,
    pub nodes: Arc<Nodes>,
}

/// An operator API error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "code": self.code, "timestamp": now_rfc3339()});
        (self.status, Json(body)).into_response()
    }
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/proxies", get(proxies))
        .route("/snapshot", get(snapshot))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "control_plane_id": s.control_plane_id}))
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

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: "no such route".into(),
    }
}
