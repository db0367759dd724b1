//! `GET /gpus`: every GPU of this host (memory used/total, utilisation, temperature, processes
//! with their VRAM), or `nvml: "unavailable"` with the reason. Never an error: a host without
//! GPUs answers 200 with the reason.
//!
//! `GET /instances/{name}/gpu-stats` (with the instances' API key, routed in
//! [`super::instances`]): one instance's GPU and the VRAM of its process group.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, ApiState};
use crate::gpu::{self, GpuStatus};
use crate::instances::GpuStats;

/// The GPU routes.
pub fn router() -> Router<ApiState> {
    Router::new().route("/gpus", get(gpus))
}

/// One instance's GPU figures.
pub async fn instance_gpu_stats(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<GpuStats>, ApiError> {
    Ok(Json(s.instances.gpu_stats(&name).await?))
}

/// The GPUs now (read on the blocking pool: NVML calls can block briefly).
async fn gpus(State(s): State<ApiState>) -> Json<GpuStatus> {
    Json(gpu::read(s.gpus.clone()).await)
}
