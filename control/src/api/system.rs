//! `GET /health` (liveness, with the control plane's id) and `GET /metrics` (Prometheus text,
//! the gauges refreshed from the current state at each scrape).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;

/// The routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
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
