//! May an instance go on a GPU: the id must exist (when the host's GPUs are known) and keep at
//! least the configured free VRAM (`[gpu] min_free_vram_mb`). What cannot be read cannot be
//! checked, and is accepted: any id without NVML, any amount when a GPU's memory is unreadable.
//!
//! [`place`] also chooses a GPU for an instance without `gpu_id`. The rule:
//!
//! - a GPU's free VRAM *after what is placed* is NVML's free memory minus, for every instance
//!   already on it, what its estimate (`vram_mb`) says it will still take: the estimate beyond
//!   what its processes already use (so an instance that has loaded is not counted twice, and
//!   one still loading is counted at its estimate);
//! - the requirement is the larger of the instance's `vram_mb` (0 without one) and
//!   `[gpu] min_free_vram_mb`;
//! - the instance goes on the GPU with the most free VRAM after what is placed (the lowest index
//!   on a tie; a GPU whose memory cannot be read counts as having none free);
//! - when that is less than the requirement — or, with a `gpu_id`, that GPU's is —
//!   `[gpu] placement = "refuse"` (the default) refuses with every GPU's figures in the error,
//!   `"warn"` places it anyway and says why in a warning.

use serde::{Deserialize, Serialize};

use super::{GpuStat, GpuStatus};

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
    /// No GPU has enough free VRAM after what is placed on it (automatic placement).
    #[error(
        "no GPU has the {} MiB of VRAM this instance needs (its vram_mb, at least [gpu] \
         min_free_vram_mb) free after what is placed on it: {gpus}",
        .required_bytes.div_ceil(MIB)
    )]
    NoGpuFits { required_bytes: u64, gpus: String },
}

/// What overcommitting a GPU does (`[gpu] placement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementMode {
    /// Refuse the instance (INSUFFICIENT_VRAM, with the figures).
    #[default]
    Refuse,
    /// Place it anyway, with a warning.
    Warn,
}

/// An instance already on a GPU (or being created for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub gpu_id: u32,
    /// Its `vram_mb`, in bytes (0 without an estimate).
    pub estimate_bytes: u64,
    /// What its processes use now.
    pub used_bytes: u64,
}

/// Where an instance goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `None`: the host's GPUs are unknown or there are none (no `CUDA_VISIBLE_DEVICES`).
    pub gpu_id: Option<u32>,
    /// Why the placement overcommits, when `[gpu] placement = "warn"` let it.
    pub warning: Option<String>,
}

/// The free VRAM of `gpu` after what `placed` still expects to take on it (`None`: unreadable).
pub fn free_after_placed(gpu: &GpuStat, placed: &[Placed]) -> Option<u64> {
    let pending: u64 = placed
        .iter()
        .filter(|p| p.gpu_id == gpu.index)
        .map(|p| p.estimate_bytes.saturating_sub(p.used_bytes))
        .fold(0, u64::saturating_add);
    gpu.memory_free_bytes().map(|f| f.saturating_sub(pending))
}

/// Chooses (or checks) the GPU of an instance that needs `need_bytes` — see the module docs.
pub fn place(
    status: &GpuStatus,
    requested: Option<u32>,
    need_bytes: u64,
    placed: &[Placed],
    mode: PlacementMode,
) -> Result<Placement, PlacementError> {
    if !status.known() {
        return Ok(Placement {
            gpu_id: requested,
            warning: None,
        });
    }
    let (gpu, free) = match requested {
        Some(gpu_id) => {
            let gpu = status.gpu(gpu_id).ok_or(PlacementError::UnknownGpu {
                gpu_id,
                known: status.gpus.len(),
            })?;
            (gpu, free_after_placed(gpu, placed))
        }
        None => {
            let best = status
                .gpus
                .iter()
                .map(|g| (g, free_after_placed(g, placed)))
                .max_by(|(a, fa), (b, fb)| {
                    fa.unwrap_or(0)
                        .cmp(&fb.unwrap_or(0))
                        .then(b.index.cmp(&a.index))
                });
            match best {
                Some(b) => b,
                None => {
                    return Ok(Placement {
                        gpu_id: None,
                        warning: None,
                    })
                }
            }
        }
    };
    let fits = free.is_none_or(|f| f >= need_bytes);
    if fits {
        return Ok(Placement {
            gpu_id: Some(gpu.index),
            warning: None,
        });
    }
    let free = free.unwrap_or(0);
    let error = match requested {
        Some(gpu_id) => PlacementError::InsufficientVram {
            gpu_id,
            free_bytes: free,
            required_bytes: need_bytes,
        },
        None => PlacementError::NoGpuFits {
            required_bytes: need_bytes,
            gpus: figures(status, placed),
        },
    };
    match mode {
        PlacementMode::Refuse => Err(error),
        PlacementMode::Warn => Ok(Placement {
            gpu_id: Some(gpu.index),
            warning: Some(format!(
                "placed on GPU {} anyway ([gpu] placement = \"warn\"): {error}",
                gpu.index
            )),
        }),
    }
}

/// `GPU 0 (name): 1024 MiB free after 2048 MiB placed; GPU 1 ...`
fn figures(status: &GpuStatus, placed: &[Placed]) -> String {
    status
        .gpus
        .iter()
        .map(|g| {
            let pending: u64 = placed
                .iter()
                .filter(|p| p.gpu_id == g.index)
                .map(|p| p.estimate_bytes.saturating_sub(p.used_bytes))
                .sum();
            match free_after_placed(g, placed) {
                Some(f) => format!(
                    "GPU {} ({}): {} MiB free after {} MiB still expected by its instances",
                    g.index,
                    g.name,
                    f / MIB,
                    pending / MIB
                ),
                None => format!("GPU {} ({}): free memory unknown", g.index, g.name),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
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
    fn automatic_placement_takes_the_most_free_after_what_is_placed() {
        let s = two_gpus(); // free: GPU 0 23552 MiB, GPU 1 512 MiB
        let p = |requested, need_mb: u64, placed: &[Placed], mode| {
            place(&s, requested, need_mb * MIB, placed, mode)
        };
        let refuse = PlacementMode::Refuse;
        assert_eq!(p(None, 1000, &[], refuse).unwrap().gpu_id, Some(0));
        // 23000 MiB expected on GPU 0 but not used yet: GPU 1's 512 MiB is now the most.
        let loading = Placed {
            gpu_id: 0,
            estimate_bytes: 23300 * MIB,
            used_bytes: 0,
        };
        assert_eq!(p(None, 100, &[loading], refuse).unwrap().gpu_id, Some(1));
        // Once it uses what it estimated (NVML counts it), it is not counted twice.
        let loaded = Placed {
            used_bytes: 23300 * MIB,
            ..loading
        };
        let mut s2 = s.clone();
        s2.gpus[0].memory_used_bytes = Some((1024 + 23300) * MIB);
        assert_eq!(
            place(&s2, None, 100 * MIB, &[loaded], refuse)
                .unwrap()
                .gpu_id,
            Some(1)
        );
        assert_eq!(
            free_after_placed(&s2.gpus[0], &[loaded]),
            Some(252 * MIB),
            "24576 - 1024 - 23300"
        );
        // Nothing fits: refused with every GPU's figures, or placed with a warning.
        let e = p(None, 600, &[loading], refuse).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PlacementError::NoGpuFits { .. }), "{e:?}");
        assert!(
            msg.contains("600 MiB")
                && msg.contains("GPU 0 (big): 252 MiB free after 23300 MiB")
                && msg.contains("GPU 1 (full): 512 MiB free"),
            "{msg}"
        );
        let w = p(None, 600, &[loading], PlacementMode::Warn).unwrap();
        assert_eq!(w.gpu_id, Some(1));
        assert!(
            w.warning.as_deref().unwrap_or("").contains("600 MiB"),
            "{w:?}"
        );
        // An explicit id is checked against what is placed too.
        let e = p(Some(0), 600, &[loading], refuse).unwrap_err();
        assert!(matches!(
            e,
            PlacementError::InsufficientVram { gpu_id: 0, .. }
        ));
        assert!(p(Some(0), 600, &[loading], PlacementMode::Warn)
            .unwrap()
            .warning
            .is_some());
        assert!(matches!(
            p(Some(5), 0, &[], PlacementMode::Warn),
            Err(PlacementError::UnknownGpu { gpu_id: 5, .. })
        ));
        // No GPUs known: nothing chosen, anything accepted.
        let u = Unavailable("no driver".into()).status();
        assert_eq!(
            place(&u, None, u64::MAX, &[], refuse).unwrap(),
            Placement {
                gpu_id: None,
                warning: None
            }
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
