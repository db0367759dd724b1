//! The operator REST API: one axum router per resource, merged here. `/admin/*`,
//! `/instances*`, `/templates` and `/events` need an API key ([`auth`]); the rest is open
//! (health, metrics, OpenAPI, proxies, snapshot, GPUs).
//!
//! Errors are JSON `{"error", "code", "timestamp"}` with a stable `code` ([`error`]).

pub mod auth;
pub mod backends;
pub mod error;
pub mod events;
pub mod extract;
pub mod gpus;
pub mod instances;
pub mod logs;
pub mod openapi;
pub mod sse;
pub mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, ErrorCode};
pub(crate) use extract::{body, query};

use crate::backends::admission::Admission;
use crate::backends::checker::Checker;
use crate::backends::registry::Registry;
use crate::discovery::nodes::Nodes;
use crate::discovery::publisher::Publisher;
use crate::metrics::ControlMetrics;

/// Everything handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub control_plane_id: String,
    pub publisher: Publisher,
    pub nodes: Arc<Nodes>,
    pub registry: Arc<Registry>,
    /// Registrations and updates of backends.
    pub admission: Arc<Admission>,
    /// Forced health checks.
    pub checker: Arc<Checker>,
    pub metrics: Arc<ControlMetrics>,
    pub keys: Arc<auth::Keys>,
    pub instances: Arc<crate::instances::Manager>,
    pub gpus: Arc<dyn crate::gpu::GpuProbe>,
    pub events: Arc<crate::events::EventBus>,
}

/// Serves the API on `listener` until `shutdown` resolves; requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let admin = backends::router()
        .merge(instances::router())
        .merge(events::router())
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/proxies", get(proxies))
        .route("/snapshot", get(snapshot))
        .merge(gpus::router())
        .merge(admin)
        .merge(ui::router())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_BODY_BYTES,
        ))
        .layer(axum::middleware::from_fn(extract::linger))
        .with_state(state)
        .layer(axum::middleware::from_fn(ui::browser_pages))
}

async fn health(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "control_plane_id": s.control_plane_id}))
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let nodes = s.nodes.list();
    s.metrics
        .proxies_connected
        .set(nodes.iter().filter(|n| n.connected).count() as i64);
    for n in &nodes {
        s.metrics
            .proxy_connected
            .with_label_values(&[&n.node_id])
            .set(i64::from(n.connected));
        if let Some(v) = n.acked_version.as_deref().and_then(|v| v.parse().ok()) {
            s.metrics
                .proxy_acked_version
                .with_label_values(&[&n.node_id])
                .set(v);
        }
    }
    s.metrics
        .snapshot_version
        .set(s.publisher.current().version as i64);
    s.metrics.backends.set(s.registry.list().len() as i64);
    s.metrics
        .gpus
        .update(&crate::gpu::read(s.gpus.clone()).await);
    s.metrics.instances.reset();
    for i in s.instances.list(None, None).await {
        s.metrics
            .instances
            .with_label_values(&[i.status.name()])
            .inc();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
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

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
