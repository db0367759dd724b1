//! May an instance go on a GPU: the id must exist (when the host's GPUs are known) and keep at
//! least the configured free VRAM (`[gpu] min_free_vram_mb`). What cannot be read cannot be
//! checked, and is accepted: any id without NVML, any amount when a GPU's memory is unreadable.

use super::GpuStatus;

const MIB: u64 = 1024 * 1024;

/// Why an instance may not be placed on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No GPU has this id. Only reported when the GPUs are known.
    #[error("GPU {gpu_id} does not exist: {}", host_gpus(*.known))]
    UnknownGpu { gpu_id: u32, known: usize },
    /// The GPU has less free memory than the configured minimum.
    #[error(
        "GPU {gpu_id} has {} MiB of VRAM free ({free_bytes} bytes), less than the {} MiB \
         ({required_bytes} bytes) required to place an instance on it",
        .free_bytes / MIB,
        .required_bytes.div_ceil(MIB)
    )]
    InsufficientVram {
        gpu_id: u32,
        free_bytes: u64,
        required_bytes: u64,
    },
}

fn host_gpus(known: usize) -> String {
    match known {
        0 => "this host has no GPUs".into(),
        1 => "this host has 1 GPU (id 0)".into(),
        n => format!("this host has {n} GPUs (ids 0-{})", n - 1),
    }
}

/// Checks that `gpu_id` exists and has at least `min_free_bytes` free (0: no minimum).
pub fn check_placement(
    status: &GpuStatus,
    gpu_id: u32,
    min_free_bytes: u64,
) -> Result<(), PlacementError> {
    if !status.known() {
        return Ok(());
    }
    let gpu = status.gpu(gpu_id).ok_or(PlacementError::UnknownGpu {
        gpu_id,
        known: status.gpus.len(),
    })?;
    match gpu.memory_free_bytes() {
        Some(free) if free < min_free_bytes => Err(PlacementError::InsufficientVram {
            gpu_id,
            free_bytes: free,
            required_bytes: min_free_bytes,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeGpu, FakeGpus, GpuProbe, Unavailable};

    fn two_gpus() -> GpuStatus {
        FakeGpus::new(vec![
            FakeGpu {
                name: "big".into(),
                memory_total_mb: 24576,
                memory_used_mb: 1024,
            },
            FakeGpu {
                name: "full".into(),
                memory_total_mb: 16384,
                memory_used_mb: 15872,
            },
        ])
        .status()
    }

    #[test]
    fn unknown_id_when_gpus_are_known() {
        let e = check_placement(&two_gpus(), 2, 0).unwrap_err();
        assert_eq!(
            e,
            PlacementError::UnknownGpu {
                gpu_id: 2,
                known: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "GPU 2 does not exist: this host has 2 GPUs (ids 0-1)"
        );
        let mut none = two_gpus();
        none.gpus.clear();
        assert_eq!(
            check_placement(&none, 0, 0).unwrap_err().to_string(),
            "GPU 0 does not exist: this host has no GPUs"
        );
    }

    #[test]
    fn any_id_when_nvml_is_unavailable() {
        let s = Unavailable("no driver".into()).status();
        for id in [0, 1, 7, u32::MAX] {
            assert_eq!(check_placement(&s, id, u64::MAX), Ok(()));
        }
    }

    #[test]
    fn insufficient_vram_with_numbers() {
        let s = two_gpus();
        let required = 1024 * MIB;
        assert_eq!(check_placement(&s, 0, required), Ok(()));
        let e = check_placement(&s, 1, required).unwrap_err();
        assert_eq!(
            e,
            PlacementError::InsufficientVram {
                gpu_id: 1,
                free_bytes: 512 * MIB,
                required_bytes: required
            }
        );
        assert_eq!(
            e.to_string(),
            "GPU 1 has 512 MiB of VRAM free (536870912 bytes), less than the 1024 MiB \
             (1073741824 bytes) required to place an instance on it"
        );
        // Exactly the minimum is enough; no minimum accepts a full GPU.
        assert_eq!(check_placement(&s, 1, 512 * MIB), Ok(()));
        assert_eq!(check_placement(&s, 1, 0), Ok(()));
    }

    #[test]
    fn unreadable_memory_is_not_checked() {
        let mut s = two_gpus();
        s.gpus[1].memory_used_bytes = None;
        assert_eq!(check_placement(&s, 1, u64::MAX), Ok(()));
    }
}
