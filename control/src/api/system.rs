//! `GET /health` (liveness, with the control plane's id), `GET /metrics` (Prometheus text,
//! the gauges refreshed from the current state at each scrape) and `GET /metrics/json` (the
//! same at a glance for programs: instances by status, each instance's uptime, restarts,
//! liveness failures and its own request count and average latency, the host's memory and
//! GPUs — seed 000 §6.2).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::ApiState;

/// The routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/metrics/json", get(metrics_json))
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

/// One instance in `GET /metrics/json`.
#[derive(Serialize)]
struct InstanceFigures {
    name: String,
    model: String,
    status: &'static str,
    uptime_secs: Option<u64>,
    restarts: u32,
    liveness_failures: u64,
    /// From the instance's own TEI metrics; `null` while it has no live process or they
    /// cannot be read.
    requests_total: Option<u64>,
    requests_failed: Option<u64>,
    avg_latency_ms: Option<f64>,
    gpu_id: Option<u32>,
    gpu_memory_bytes: Option<u64>,
}

/// The host in `GET /metrics/json`.
#[derive(Serialize)]
struct SystemFigures {
    total_memory_mb: Option<u64>,
    used_memory_mb: Option<u64>,
    gpu_count: usize,
    /// `available`, `unavailable` or `simulated`.
    nvml: crate::gpu::NvmlState,
    gpu_memory_total_mb: u64,
    gpu_memory_used_mb: u64,
}

async fn metrics_json(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let (list, traffic, gpus) = tokio::join!(
        s.instances.list(None, None),
        s.instances.traffic(),
        crate::gpu::read(s.gpus.clone()),
    );
    let mut by_status: BTreeMap<&'static str, usize> = [
        "pending",
        "starting",
        "ready",
        "unhealthy",
        "restarting",
        "stopping",
        "stopped",
        "failed",
    ]
    .into_iter()
    .map(|n| (n, 0))
    .collect();
    let details: Vec<InstanceFigures> = list
        .into_iter()
        .map(|i| {
            *by_status.entry(i.status.name()).or_default() += 1;
            let t = traffic.get(&i.name);
            InstanceFigures {
                status: i.status.name(),
                uptime_secs: i.uptime_s,
                restarts: i.restarts,
                liveness_failures: i.liveness_failures,
                requests_total: t.map(|t| t.requests_total),
                requests_failed: t.map(|t| t.requests_failed),
                avg_latency_ms: t.and_then(|t| t.avg_latency_ms),
                gpu_id: i.spec.gpu_id,
                gpu_memory_bytes: i.gpu_memory_bytes,
                model: i.model,
                name: i.name,
            }
        })
        .collect();
    let mb = |b: u64| b / (1024 * 1024);
    let memory = crate::system::memory();
    let system = SystemFigures {
        total_memory_mb: memory.map(|m| m.total_memory_mb),
        used_memory_mb: memory.map(|m| m.used_memory_mb),
        gpu_count: gpus.gpus.len(),
        nvml: gpus.nvml,
        gpu_memory_total_mb: mb(gpus.gpus.iter().filter_map(|g| g.memory_total_bytes).sum()),
        gpu_memory_used_mb: mb(gpus.gpus.iter().filter_map(|g| g.memory_used_bytes).sum()),
    };
    let mut instances = serde_json::Map::new();
    instances.insert("total".into(), json!(details.len()));
    for (k, v) in by_status {
        instances.insert(k.into(), json!(v));
    }
    let backends = s.registry.list().len();
    Json(json!({
        "control_plane_id": s.control_plane_id,
        "instances": instances,
        "instance_details": details,
        "backends": {"total": backends},
        "system": system,
    }))
}
