//! Process resources `mock-tei` takes on purpose, so a supervisor's resource checks can be
//! tested without a model or a GPU:
//!
//! - an RSS ballast (`--ballast-mb`, `--ballast-grow-mb-per-sec`, `--ballast-max-mb`): memory
//!   allocated and written at start (every page resident, like loaded weights), optionally
//!   growing so a memory limit is exceeded on purpose;
//! - a simulated VRAM record (`--simulated-vram-mb`, `--simulated-gpu-dir` or
//!   `MULTIVERSE_SIMULATED_GPU_DIR`): the per-process GPU memory a simulated NVML reports for
//!   this pid, as the file `<dir>/<pid>.json` (see [`VramRecord`]), removed on exit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::Shutdown;
use super::tei_args::TeiArgs;

const MIB: u64 = 1024 * 1024;
/// Growth steps per second.
const STEPS_PER_SEC: u64 = 10;
/// The byte every ballast page is filled with (not zero, so every page is really written).
const FILL: u8 = 0xA5;

/// Memory held on purpose; dropped with the process.
#[derive(Debug, Default)]
pub struct Ballast {
    chunks: Mutex<Vec<Vec<u8>>>,
}

impl Ballast {
    /// Allocates and writes `bytes` more, or says why it cannot.
    pub fn grow(&self, bytes: u64) -> anyhow::Result<()> {
        let len = usize::try_from(bytes)?;
        let mut chunk = Vec::new();
        chunk
            .try_reserve_exact(len)
            .map_err(|e| anyhow::anyhow!("cannot allocate {} MiB of ballast: {e}", bytes / MIB))?;
        chunk.resize(len, FILL);
        std::hint::black_box(&chunk);
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(chunk);
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.len() as u64)
            .sum()
    }
}

/// This process's entry for simulated GPUs: the JSON document in `<dir>/<pid>.json`.
///
/// A reader attributes `used_memory_bytes` to the GPU named by `gpu` (an index or `GPU-…`
/// UUID, as `CUDA_VISIBLE_DEVICES` names devices) for `pid`, and ignores a record whose pid is
/// not running or whose `/proc/<pid>/stat` start time differs from `start_time_ticks` (the
/// file of a killed process, or a reused pid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VramRecord {
    /// This process's id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot); `None` where it
    /// cannot be read.
    pub start_time_ticks: Option<u64>,
    /// The device this process uses: the `CUDA_VISIBLE_DEVICES` entry at `--device-id`, or
    /// `--device-id` itself when that variable is unset.
    pub gpu: String,
    /// `CUDA_VISIBLE_DEVICES` as this process received it.
    pub cuda_visible_devices: Option<String>,
    /// TEI's `--device-id`.
    pub device_id: usize,
    /// `--simulated-vram-mb` in bytes.
    pub used_memory_bytes: u64,
}

/// The device `--device-id` selects among `CUDA_VISIBLE_DEVICES` (`None`: all devices visible).
pub fn selected_gpu(
    cuda_visible_devices: Option<&str>,
    device_id: usize,
) -> Result<String, String> {
    let Some(visible) = cuda_visible_devices else {
        return Ok(device_id.to_string());
    };
    visible
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .nth(device_id)
        .map(str::to_string)
        .ok_or_else(|| {
            format!("--device-id {device_id} is not among CUDA_VISIBLE_DEVICES={visible:?}")
        })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is parenthesised and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `<dir>/<pid>.json`, the record of `pid`.
pub fn record_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.json"))
}

/// A written record; the file is removed when this is dropped.
#[derive(Debug)]
struct WrittenRecord {
    path: PathBuf,
}

impl WrittenRecord {
    fn write(dir: &Path, record: &VramRecord) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--simulated-gpu-dir {}: {e}", dir.display()))?;
        let path = record_path(dir, record.pid);
        // Written beside and renamed, so a reader never sees half a record.
        let tmp = dir.join(format!(".{}.json.tmp", record.pid));
        let json = serde_json::to_vec_pretty(record)?;
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WrittenRecord {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the VRAM record: {e}");
        }
    }
}

/// What [`super::tei::run`] holds for the life of the process.
#[derive(Debug)]
pub struct Resources {
    ballast: Arc<Ballast>,
    _vram: Option<WrittenRecord>,
}

impl Resources {
    /// Allocates `--ballast-mb` and writes the VRAM record of `--simulated-vram-mb`.
    pub fn acquire(args: &TeiArgs) -> anyhow::Result<Self> {
        let ballast = Arc::new(Ballast::default());
        if args.ballast_mb > 0 {
            ballast.grow(args.ballast_mb.saturating_mul(MIB))?;
            tracing::info!(mib = args.ballast_mb, "ballast allocated");
        }
        let vram = match (args.simulated_vram_mb, &args.simulated_gpu_dir) {
            (Some(mb), Some(dir)) => {
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                let gpu = selected_gpu(visible.as_deref(), args.device_id)
                    .map_err(|e| anyhow::anyhow!("--simulated-vram-mb: {e}"))?;
                let record = VramRecord {
                    pid: std::process::id(),
                    start_time_ticks: std::fs::read_to_string("/proc/self/stat")
                        .ok()
                        .as_deref()
                        .and_then(stat_start_time),
                    gpu,
                    cuda_visible_devices: visible,
                    device_id: args.device_id,
                    used_memory_bytes: mb.saturating_mul(MIB),
                };
                let written = WrittenRecord::write(dir, &record)?;
                tracing::info!(mib = mb, gpu = %record.gpu, path = %written.path.display(),
                    "simulated VRAM recorded");
                Some(written)
            }
            (Some(_), None) => anyhow::bail!("--simulated-vram-mb needs --simulated-gpu-dir"),
            _ => None,
        };
        Ok(Self {
            ballast,
            _vram: vram,
        })
    }

    /// Grows the ballast by `--ballast-grow-mb-per-sec` (up to `--ballast-max-mb`) until
    /// `shutdown`, or until memory runs out.
    pub fn grow_in_background(&self, args: &TeiArgs, shutdown: Shutdown) {
        let rate = args.ballast_grow_mb_per_sec;
        if rate == 0 {
            return;
        }
        let step = (rate.saturating_mul(MIB) / STEPS_PER_SEC).max(1);
        let max = args.ballast_max_mb.map(|m| m.saturating_mul(MIB));
        let ballast = self.ballast.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / STEPS_PER_SEC));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => return,
                }
                let held = ballast.bytes();
                let Some(step) = next_step(held, step, max) else {
                    tracing::info!(mib = held / MIB, "ballast reached --ballast-max-mb");
                    return;
                };
                if let Err(e) = ballast.grow(step) {
                    tracing::warn!("ballast stops growing: {e}");
                    return;
                }
            }
        });
    }
}

/// The next growth step with `held` bytes: `step`, cut so the ballast ends at `max`, or
/// `None` once it is there.
pub fn next_step(held: u64, step: u64, max: Option<u64>) -> Option<u64> {
    match max {
        Some(max) if held >= max => None,
        Some(max) => Some(step.min(max - held)),
        None => Some(step),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_is_the_visible_device_at_device_id() {
        assert_eq!(selected_gpu(None, 2), Ok("2".into()));
        assert_eq!(selected_gpu(Some("3"), 0), Ok("3".into()));
        assert_eq!(selected_gpu(Some("1, GPU-abc"), 1), Ok("GPU-abc".into()));
        assert!(selected_gpu(Some("1"), 1)
            .unwrap_err()
            .contains("--device-id 1"));
        assert!(selected_gpu(Some(""), 0).is_err());
    }

    #[test]
    fn start_time_is_field_22_even_with_spaces_in_the_name() {
        let stat = "4242 (mock tei) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    987654 12345678 900 18446744073709551615";
        assert_eq!(stat_start_time(stat), Some(987_654));
        assert_eq!(stat_start_time("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("linux");
        assert!(stat_start_time(&own).is_some());
    }

    #[test]
    fn growth_stops_at_the_maximum() {
        assert_eq!(next_step(0, 10, None), Some(10));
        assert_eq!(next_step(1 << 40, 10, None), Some(10));
        assert_eq!(next_step(0, 10, Some(25)), Some(10));
        assert_eq!(next_step(20, 10, Some(25)), Some(5));
        assert_eq!(next_step(25, 10, Some(25)), None);
        assert_eq!(next_step(30, 10, Some(25)), None);
    }

    #[test]
    fn ballast_counts_what_it_holds() {
        let b = Ballast::default();
        b.grow(3 * MIB).expect("3 MiB");
        b.grow(MIB / 2).expect("half");
        assert_eq!(b.bytes(), 3 * MIB + MIB / 2);
        assert!(
            b.grow(u64::MAX / 2).is_err(),
            "an impossible size is an error, not an abort"
        );
    }
}
