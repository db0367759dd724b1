//! GPUs simulated from configuration, for tests and demos on machines without GPUs:
//!
//! ```toml
//! [gpu]
//! simulated = [{ name = "NVIDIA A10G", memory_total_mb = 24576, memory_used_mb = 1024 }]
//! ```
//!
//! They are reported as `nvml: "simulated"`, numbered from 0 in the order given; placement
//! checks them like real GPUs. `mb` is MiB (2^20 bytes), as `nvidia-smi` shows it.
//!
//! Their processes stand in for NVML's per-process memory: a process that uses a simulated GPU
//! writes `<process dir>/<pid>.json` = `{"pid", "start_time_ticks", "gpu", "used_memory_bytes",
//! ...}` (`mock-tei --simulated-vram-mb`; the control plane gives its instances the directory
//! in `MULTIVERSE_SIMULATED_GPU_DIR`). Each reading lists the records of live processes (same
//! pid and `/proc` start time: a killed process's file, or a reused pid, is ignored) as the
//! processes of the GPU `gpu` names (an index, as `CUDA_VISIBLE_DEVICES` names it), and adds
//! their memory to the GPU's `memory_used`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{GpuProbe, GpuProcess, GpuStat, GpuStatus, NvmlState};

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
    /// Where processes record their simulated VRAM (`None`: no processes).
    process_dir: Option<PathBuf>,
}

impl FakeGpus {
    pub fn new(gpus: Vec<FakeGpu>) -> Self {
        Self {
            gpus,
            process_dir: None,
        }
    }

    /// Reads per-process records from `dir` (see the module docs).
    pub fn with_process_dir(mut self, dir: PathBuf) -> Self {
        self.process_dir = Some(dir);
        self
    }
}

/// One process's record (the fields the control plane reads; others are ignored).
#[derive(Debug, Deserialize)]
struct VramRecord {
    pid: u32,
    start_time_ticks: Option<u64>,
    gpu: String,
    used_memory_bytes: u64,
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`; `None` when the process does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The records of live processes in `dir`, as (GPU index, process).
fn live_records(dir: &Path) -> Vec<(u32, GpuProcess)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<VramRecord>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r| {
            let now = start_time(r.pid);
            now.is_some() && (r.start_time_ticks.is_none() || r.start_time_ticks == now)
        })
        .filter_map(|r| {
            let index = r.gpu.trim().parse().ok()?;
            Some((
                index,
                GpuProcess {
                    pid: r.pid,
                    used_memory_bytes: Some(r.used_memory_bytes),
                },
            ))
        })
        .collect()
}

impl GpuProbe for FakeGpus {
    fn status(&self) -> GpuStatus {
        let mut records = self
            .process_dir
            .as_deref()
            .map(live_records)
            .unwrap_or_default();
        records.sort_by_key(|(_, p)| p.pid);
        GpuStatus {
            nvml: NvmlState::Simulated,
            reason: None,
            driver_version: None,
            gpus: (0u32..)
                .zip(&self.gpus)
                .map(|(index, g)| {
                    let processes: Vec<GpuProcess> = records
                        .iter()
                        .filter(|(i, _)| *i == index)
                        .map(|(_, p)| p.clone())
                        .collect();
                    let total = g.memory_total_mb.saturating_mul(MIB);
                    let used = processes
                        .iter()
                        .filter_map(|p| p.used_memory_bytes)
                        .fold(g.memory_used_mb.saturating_mul(MIB), u64::saturating_add)
                        .min(total);
                    GpuStat {
                        index,
                        name: g.name.clone(),
                        uuid: None,
                        memory_used_bytes: Some(used),
                        memory_total_bytes: Some(total),
                        utilization_percent: Some(0),
                        temperature_c: None,
                        processes,
                    }
                })
                .collect(),
        }
    }
}

/// The simulated GPUs when any are configured (their processes recorded in `process_dir`),
/// otherwise the real [`super::probe`].
pub fn probe_with(fake: &[FakeGpu], process_dir: Option<&Path>) -> Arc<dyn GpuProbe> {
    if fake.is_empty() {
        return super::probe();
    }
    tracing::info!(gpus = fake.len(), "simulating GPUs from configuration");
    let gpus = FakeGpus::new(fake.to_vec());
    Arc::new(match process_dir {
        Some(dir) => gpus.with_process_dir(dir.to_path_buf()),
        None => gpus,
    })
}

/// The variable that gives a process the directory of its simulated-VRAM record.
pub const PROCESS_DIR_ENV: &str = "MULTIVERSE_SIMULATED_GPU_DIR";

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
        let s = probe_with(&[a10g()], None).status();
        assert_eq!(s.nvml, NvmlState::Simulated);
        assert_eq!(s.gpus.len(), 1);
        // Nothing configured: the real probe (unavailable here, available on a GPU host).
        assert_ne!(probe_with(&[], None).status().nvml, NvmlState::Simulated);
    }

    #[test]
    fn live_process_records_are_the_gpus_processes() {
        let dir = std::env::temp_dir().join(format!("mv-fakegpu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let record = |pid: u32, ticks: Option<u64>, gpu: &str, mib: u64| {
            serde_json::json!({"pid": pid, "start_time_ticks": ticks, "gpu": gpu,
                               "cuda_visible_devices": gpu, "device_id": 0,
                               "used_memory_bytes": mib * MIB})
            .to_string()
        };
        let ticks = start_time(me);
        std::fs::write(dir.join("a.json"), record(me, ticks, "1", 512)).unwrap();
        // The same pid with another start time: a reused pid, ignored.
        std::fs::write(dir.join("b.json"), record(me, Some(1), "1", 9000)).unwrap();
        // No such process.
        std::fs::write(dir.join("c.json"), record(u32::MAX - 1, None, "0", 100)).unwrap();
        std::fs::write(dir.join("d.json"), "not json").unwrap();
        let mut small = a10g();
        small.memory_used_mb = 0;
        let s = FakeGpus::new(vec![a10g(), small])
            .with_process_dir(dir.clone())
            .status();
        assert!(s.gpus[0].processes.is_empty(), "{s:?}");
        assert_eq!(
            s.gpus[1].processes,
            vec![GpuProcess {
                pid: me,
                used_memory_bytes: Some(512 * MIB)
            }]
        );
        assert_eq!(s.gpus[1].memory_used_bytes, Some(512 * MIB));
        assert_eq!(s.vram_by_pid(me), Some(512 * MIB));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
