//! `GET /gpus`: every GPU of this host (memory used/total, utilisation, temperature, processes
//! with their VRAM), or `nvml: "unavailable"` with the reason. Never an error: a host without
//! GPUs answers 200 with the reason.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::ApiState;
use crate::gpu::{self, GpuStatus};

/// The GPU routes.
pub fn router() -> Router<ApiState> {
    Router::new().route("/gpus", get(gpus))
}

/// The GPUs now (read on the blocking pool: NVML calls can block briefly).
async fn gpus(State(s): State<ApiState>) -> Json<GpuStatus> {
    Json(gpu::read(s.gpus.clone()).await)
}
