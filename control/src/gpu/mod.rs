//! GPU stats for placement and the API, through NVML (`nvml-wrapper`) behind a small trait so
//! machines without a driver, and tests, work the same way: without NVML the API says
//! `nvml: unavailable` with the reason, and nothing fails.
//!
//! - [`nvml`] — the real probe ([`NvmlProbe`]);
//! - [`fake`] — GPUs simulated from configuration ([`FakeGpus`]), for tests and demos;
//! - [`placement`] — may an instance go on this GPU ([`check_placement`]);
//! - [`metrics`] — Prometheus gauges for the same numbers ([`GpuGauges`]).
//!
//! [`probe`] picks the probe for this host; [`probe_with`] prefers configured simulated GPUs.
//! [`read`] takes a reading off the async runtime (NVML calls can block briefly).

pub mod batch_tokens;
pub mod fake;
pub mod metrics;
pub mod nvml;
pub mod placement;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use fake::{probe_with, FakeGpu, FakeGpus};
pub use metrics::GpuGauges;
pub use nvml::NvmlProbe;
pub use placement::{
    check_placement, free_after_placed, place, Placed, Placement, PlacementError, PlacementMode,
};

/// Reads the GPUs of this host.
pub trait GpuProbe: Send + Sync {
    /// A point-in-time view of every GPU. May block briefly (NVML calls): from async code use
    /// [`read`].
    fn status(&self) -> GpuStatus;
}

/// Whether NVML could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlState {
    Available,
    Unavailable,
    /// GPUs simulated from configuration (`[gpu] simulated`), not read from NVML.
    Simulated,
}

/// All GPUs of the host, or why they cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    pub nvml: NvmlState,
    /// Why NVML is unavailable.
    pub reason: Option<String>,
    /// The NVIDIA driver's version, when NVML reports it.
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuStat>,
}

/// One GPU. A field NVML cannot read (unsupported, GPU lost, …) is `None`; the others are still
/// reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStat {
    /// NVML's index (PCI bus order), the `gpu_id` of placement. CUDA numbers devices in the
    /// same order only with `CUDA_DEVICE_ORDER=PCI_BUS_ID`; [`GpuStat::uuid`] is unambiguous.
    pub index: u32,
    pub name: String,
    /// `GPU-…`, accepted by `CUDA_VISIBLE_DEVICES`.
    pub uuid: Option<String>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// GPU (kernel) utilisation over NVML's last sample period.
    pub utilization_percent: Option<u32>,
    /// Die temperature.
    pub temperature_c: Option<u32>,
    /// Processes with a compute context on the GPU, with their memory.
    pub processes: Vec<GpuProcess>,
}

impl GpuStat {
    /// Total minus used memory; `None` when either cannot be read.
    pub fn memory_free_bytes(&self) -> Option<u64> {
        Some(
            self.memory_total_bytes?
                .saturating_sub(self.memory_used_bytes?),
        )
    }
}

/// A process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` when the driver does not report it (NVML's "not available").
    pub used_memory_bytes: Option<u64>,
}

impl GpuStatus {
    /// Whether the host's GPUs are known (read from NVML, or simulated). When they are not,
    /// GPU ids cannot be checked and every id is accepted.
    pub fn known(&self) -> bool {
        self.nvml != NvmlState::Unavailable
    }

    /// The GPU with NVML index `gpu_id`.
    pub fn gpu(&self, gpu_id: u32) -> Option<&GpuStat> {
        self.gpus.iter().find(|g| g.index == gpu_id)
    }

    /// The GPU memory `pid` uses, summed over every GPU; `None` when the process is on no GPU,
    /// or its memory is reported nowhere.
    pub fn vram_by_pid(&self, pid: u32) -> Option<u64> {
        self.gpus
            .iter()
            .flat_map(|g| &g.processes)
            .filter(|p| p.pid == pid)
            .filter_map(|p| p.used_memory_bytes)
            .reduce(u64::saturating_add)
    }
}

/// A host without usable NVML.
pub struct Unavailable(pub String);

impl GpuProbe for Unavailable {
    fn status(&self) -> GpuStatus {
        GpuStatus {
            nvml: NvmlState::Unavailable,
            reason: Some(self.0.clone()),
            driver_version: None,
            gpus: Vec::new(),
        }
    }
}

/// The probe for this host: NVML when it initialises, otherwise [`Unavailable`] with the reason
/// (logged once here; later readings do not log it again).
pub fn probe() -> Arc<dyn GpuProbe> {
    match NvmlProbe::init() {
        Ok(p) => {
            let status = p.status();
            tracing::info!(
                gpus = status.gpus.len(),
                driver_version = status.driver_version.as_deref().unwrap_or("unknown"),
                "NVML available"
            );
            Arc::new(p)
        }
        Err(e) => {
            let reason = nvml::unavailable_reason(&e);
            if nvml::is_missing_library(&e) {
                tracing::info!(%reason, "GPU stats disabled");
            } else {
                tracing::warn!(%reason, "GPU stats disabled");
            }
            Arc::new(Unavailable(reason))
        }
    }
}

/// [`GpuProbe::status`] on the blocking pool. A probe that panics yields an `unavailable` status
/// saying so, never an error.
pub async fn read(probe: Arc<dyn GpuProbe>) -> GpuStatus {
    match tokio::task::spawn_blocking(move || probe.status()).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %e, "GPU probe failed");
            Unavailable(format!("GPU probe failed: {e}")).status()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, processes: Vec<GpuProcess>) -> GpuStat {
        GpuStat {
            index,
            name: format!("gpu{index}"),
            uuid: None,
            memory_used_bytes: Some(1),
            memory_total_bytes: Some(10),
            utilization_percent: None,
            temperature_c: None,
            processes,
        }
    }

    fn proc(pid: u32, used: Option<u64>) -> GpuProcess {
        GpuProcess {
            pid,
            used_memory_bytes: used,
        }
    }

    fn status(gpus: Vec<GpuStat>) -> GpuStatus {
        GpuStatus {
            nvml: NvmlState::Available,
            reason: None,
            driver_version: Some("550.54.15".into()),
            gpus,
        }
    }

    #[test]
    fn vram_by_pid_sums_over_gpus() {
        let s = status(vec![
            gpu(0, vec![proc(10, Some(100)), proc(11, Some(7))]),
            gpu(1, vec![proc(10, Some(50)), proc(12, None)]),
        ]);
        assert_eq!(s.vram_by_pid(10), Some(150));
        assert_eq!(s.vram_by_pid(11), Some(7));
        // On a GPU, but its memory is not reported.
        assert_eq!(s.vram_by_pid(12), None);
        // On no GPU.
        assert_eq!(s.vram_by_pid(13), None);
    }

    #[test]
    fn vram_by_pid_ignores_unreported_parts() {
        let s = status(vec![
            gpu(0, vec![proc(10, None)]),
            gpu(1, vec![proc(10, Some(50))]),
        ]);
        assert_eq!(s.vram_by_pid(10), Some(50));
    }

    #[test]
    fn free_memory_needs_both_numbers() {
        let mut g = gpu(0, vec![]);
        assert_eq!(g.memory_free_bytes(), Some(9));
        g.memory_used_bytes = None;
        assert_eq!(g.memory_free_bytes(), None);
        g.memory_used_bytes = Some(20);
        assert_eq!(g.memory_free_bytes(), Some(0));
    }

    #[test]
    fn known_unless_unavailable() {
        let mut s = status(vec![]);
        assert!(s.known());
        s.nvml = NvmlState::Simulated;
        assert!(s.known());
        assert!(!Unavailable("x".into()).status().known());
    }

    #[test]
    fn unavailable_json_shape() {
        let v = serde_json::to_value(Unavailable("no driver".into()).status()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "nvml": "unavailable",
                "reason": "no driver",
                "driver_version": null,
                "gpus": [],
            })
        );
    }

    /// This machine has no NVIDIA driver: the probe degrades with a reason and nothing panics.
    /// On a GPU host it reads the GPUs instead; both are accepted.
    #[test]
    fn probe_on_this_host_degrades_or_reads() {
        let s = probe().status();
        match s.nvml {
            NvmlState::Unavailable => {
                let reason = s.reason.clone().expect("a reason");
                assert!(reason.starts_with("NVML unavailable: "), "{reason}");
                assert!(s.gpus.is_empty());
                assert!(!s.known());
            }
            NvmlState::Available => assert!(s.reason.is_none()),
            NvmlState::Simulated => panic!("probe() never simulates"),
        }
    }

    #[tokio::test]
    async fn read_off_the_runtime() {
        let s = read(Arc::new(Unavailable("r".into()))).await;
        assert_eq!(s.reason.as_deref(), Some("r"));
    }

    struct Panics;
    impl GpuProbe for Panics {
        fn status(&self) -> GpuStatus {
            panic!("boom")
        }
    }

    #[tokio::test]
    async fn read_survives_a_panicking_probe() {
        let s = read(Arc::new(Panics)).await;
        assert_eq!(s.nvml, NvmlState::Unavailable);
        assert!(s.reason.unwrap().starts_with("GPU probe failed"));
    }
}
