//! GPU stats for placement and the API, through NVML (`nvml-wrapper`) behind a small trait so
//! machines without a driver, and tests, work the same way: without NVML the API says
//! `nvml: unavailable` with the reason, and nothing fails.

use std::sync::Arc;

use serde::Serialize;

/// Reads the GPUs of this host.
pub trait GpuProbe: Send + Sync {
    /// A point-in-time view of every GPU.
    fn status(&self) -> GpuStatus;
}

/// Whether NVML could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlState {
    Available,
    Unavailable,
}

/// All GPUs of the host, or why they cannot be read.
#[derive(Debug, Clone, Serialize)]
pub struct GpuStatus {
    pub nvml: NvmlState,
    /// Why NVML is unavailable.
    pub reason: Option<String>,
    pub gpus: Vec<GpuStat>,
}

/// One GPU.
#[derive(Debug, Clone, Serialize)]
pub struct GpuStat {
    pub index: u32,
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Processes using the GPU, with their memory.
    pub processes: Vec<GpuProcess>,
}

/// A process on a GPU.
#[derive(Debug, Clone, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_bytes: u64,
}

/// A host without usable NVML.
pub struct Unavailable(pub String);

impl GpuProbe for Unavailable {
    fn status(&self) -> GpuStatus {
        GpuStatus {
            nvml: NvmlState::Unavailable,
            reason: Some(self.0.clone()),
            gpus: Vec::new(),
        }
    }
}

/// The probe for this host.
pub fn probe() -> Arc<dyn GpuProbe> {
    Arc::new(Unavailable("NVML support is not built yet".into()))
}
