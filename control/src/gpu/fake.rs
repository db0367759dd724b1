//! GPUs simulated from configuration, for tests and demos on machines without GPUs:
//!
//! ```toml
//! [gpu]
//! simulated = [{ name = "NVIDIA A10G", memory_total_mb = 24576, memory_used_mb = 1024 }]
//! ```
//!
//! They are reported as `nvml: "simulated"`, numbered from 0 in the order given, with fixed
//! memory and no processes; placement checks them like real GPUs. `mb` is MiB (2^20 bytes),
//! as `nvidia-smi` shows it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{GpuProbe, GpuStat, GpuStatus, NvmlState};

const MIB: u64 = 1024 * 1024;

/// One simulated GPU, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    pub name: String,
    pub memory_total_mb: u64,
    #[serde(default)]
    pub memory_used_mb: u64,
}

impl FakeGpu {
    /// A configuration check: a name, some memory, and no more used than there is.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if self.memory_total_mb == 0 {
            return Err("memory_total_mb must be greater than 0".into());
        }
        if self.memory_used_mb > self.memory_total_mb {
            return Err(format!(
                "memory_used_mb ({}) is more than memory_total_mb ({})",
                self.memory_used_mb, self.memory_total_mb
            ));
        }
        Ok(())
    }
}

/// Simulated GPUs.
#[derive(Debug, Clone)]
pub struct FakeGpus {
    gpus: Vec<FakeGpu>,
}

impl FakeGpus {
    pub fn new(gpus: Vec<FakeGpu>) -> Self {
        Self { gpus }
    }
}

impl GpuProbe for FakeGpus {
    fn status(&self) -> GpuStatus {
        GpuStatus {
            nvml: NvmlState::Simulated,
            reason: None,
            driver_version: None,
            gpus: (0u32..)
                .zip(&self.gpus)
                .map(|(index, g)| GpuStat {
                    index,
                    name: g.name.clone(),
                    uuid: None,
                    memory_used_bytes: Some(g.memory_used_mb.saturating_mul(MIB)),
                    memory_total_bytes: Some(g.memory_total_mb.saturating_mul(MIB)),
                    utilization_percent: Some(0),
                    temperature_c: None,
                    processes: Vec::new(),
                })
                .collect(),
        }
    }
}

/// The simulated GPUs when any are configured, otherwise the real [`super::probe`].
pub fn probe_with(fake: &[FakeGpu]) -> Arc<dyn GpuProbe> {
    if fake.is_empty() {
        return super::probe();
    }
    tracing::info!(gpus = fake.len(), "simulating GPUs from configuration");
    Arc::new(FakeGpus::new(fake.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Section {
        simulated: Vec<FakeGpu>,
    }

    fn a10g() -> FakeGpu {
        FakeGpu {
            name: "NVIDIA A10G".into(),
            memory_total_mb: 24576,
            memory_used_mb: 1024,
        }
    }

    #[test]
    fn parses_the_config_section() {
        let s: Section = toml::from_str(
            r#"simulated = [
                { name = "NVIDIA A10G", memory_total_mb = 24576, memory_used_mb = 1024 },
                { name = "small", memory_total_mb = 8192 },
            ]"#,
        )
        .unwrap();
        assert_eq!(s.simulated[0], a10g());
        assert_eq!(s.simulated[1].memory_used_mb, 0);
    }

    #[test]
    fn rejects_unknown_fields() {
        let e = toml::from_str::<Section>(
            r#"simulated = [{ name = "x", memory_total_mb = 1, memory_mb = 1 }]"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("memory_mb"), "{e}");
    }

    #[test]
    fn validates() {
        assert!(a10g().validate().is_ok());
        let mut g = a10g();
        g.memory_used_mb = 30000;
        assert!(g.validate().unwrap_err().contains("more than"));
        g.memory_total_mb = 0;
        assert!(g.validate().is_err());
        let mut g = a10g();
        g.name = " ".into();
        assert!(g.validate().is_err());
    }

    #[test]
    fn status_json_shape() {
        let mut small = a10g();
        small.name = "small".into();
        small.memory_total_mb = 8192;
        small.memory_used_mb = 0;
        let status = FakeGpus::new(vec![a10g(), small]).status();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({
                "nvml": "simulated",
                "reason": null,
                "driver_version": null,
                "gpus": [
                    {
                        "index": 0,
                        "name": "NVIDIA A10G",
                        "uuid": null,
                        "memory_used_bytes": 1024u64 * MIB,
                        "memory_total_bytes": 24576u64 * MIB,
                        "utilization_percent": 0,
                        "temperature_c": null,
                        "processes": [],
                    },
                    {
                        "index": 1,
                        "name": "small",
                        "uuid": null,
                        "memory_used_bytes": 0,
                        "memory_total_bytes": 8192u64 * MIB,
                        "utilization_percent": 0,
                        "temperature_c": null,
                        "processes": [],
                    },
                ],
            })
        );
        assert!(status.known());
        // It reads back.
        let back: GpuStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn probe_with_prefers_the_simulated_gpus() {
        let s = probe_with(&[a10g()]).status();
        assert_eq!(s.nvml, NvmlState::Simulated);
        assert_eq!(s.gpus.len(), 1);
        // Nothing configured: the real probe (unavailable here, available on a GPU host).
        assert_ne!(probe_with(&[]).status().nvml, NvmlState::Simulated);
    }
}
