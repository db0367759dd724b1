//! The real probe: NVML through `nvml-wrapper`, initialised once and read on every
//! [`GpuProbe::status`]. Every field is read on its own: a field NVML cannot give (unsupported
//! on this GPU, GPU fallen off the bus, …) is `None` and the rest is still reported; a device
//! that cannot be opened at all is left out. Nothing here panics.

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{GpuProbe, GpuProcess, GpuStat, GpuStatus, NvmlState, Unavailable};

/// Reads this host's GPUs through NVML.
pub struct NvmlProbe {
    nvml: Nvml,
}

impl NvmlProbe {
    /// Loads `libnvidia-ml` and initialises NVML. Fails on hosts without an NVIDIA driver;
    /// [`unavailable_reason`] words the error for the API.
    pub fn init() -> Result<Self, NvmlError> {
        Ok(Self {
            nvml: Nvml::init()?,
        })
    }
}

impl GpuProbe for NvmlProbe {
    fn status(&self) -> GpuStatus {
        let count = match self.nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "NVML device count failed");
                return Unavailable(format!("NVML could not count GPUs: {e}")).status();
            }
        };
        let gpus = (0..count)
            .filter_map(|index| match self.nvml.device_by_index(index) {
                Ok(device) => Some(read_device(index, &device)),
                Err(e) => {
                    tracing::debug!(index, error = %e, "NVML could not open GPU");
                    None
                }
            })
            .collect();
        GpuStatus {
            nvml: NvmlState::Available,
            reason: None,
            driver_version: self.nvml.sys_driver_version().ok(),
            gpus,
        }
    }
}

/// One device, field by field.
fn read_device(index: u32, d: &Device<'_>) -> GpuStat {
    let memory = field(index, "memory", d.memory_info());
    GpuStat {
        index,
        name: field(index, "name", d.name()).unwrap_or_else(|| "unknown".into()),
        uuid: field(index, "uuid", d.uuid()),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        utilization_percent: field(index, "utilization", d.utilization_rates()).map(|u| u.gpu),
        temperature_c: field(index, "temperature", d.temperature(TemperatureSensor::Gpu)),
        processes: field(index, "processes", d.running_compute_processes())
            .unwrap_or_default()
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(n) => Some(n),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect(),
    }
}

/// A field's value, or `None` (logged at debug: readings are frequent, and an unsupported
/// field stays unsupported).
fn field<T>(index: u32, what: &'static str, r: Result<T, NvmlError>) -> Option<T> {
    r.map_err(|e| tracing::debug!(index, field = what, error = %e, "NVML field unavailable"))
        .ok()
}

/// Whether NVML failed because its library is not installed (no NVIDIA driver on the host).
pub fn is_missing_library(e: &NvmlError) -> bool {
    matches!(e, NvmlError::LibloadingError(_))
}

/// The `reason` the API shows when [`Nvml::init`] failed.
pub fn unavailable_reason(e: &NvmlError) -> String {
    let hint = match e {
        NvmlError::LibloadingError(_) => " (no NVIDIA driver?)",
        NvmlError::DriverNotLoaded => " (is the NVIDIA kernel module loaded?)",
        NvmlError::NoPermission => " (no permission to talk to the NVIDIA driver)",
        _ => "",
    };
    format!("NVML unavailable: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_error_and_a_hint() {
        let r = unavailable_reason(&NvmlError::DriverNotLoaded);
        assert!(r.starts_with("NVML unavailable: "), "{r}");
        assert!(r.contains("kernel module"), "{r}");
        let r = unavailable_reason(&NvmlError::NoPermission);
        assert!(r.contains("permission"), "{r}");
        assert!(!is_missing_library(&NvmlError::NoPermission));
    }

    /// Here there is no driver: init fails with the library error, worded for the API.
    #[test]
    fn init_without_a_driver_says_so() {
        match NvmlProbe::init() {
            Err(e) => {
                let r = unavailable_reason(&e);
                assert!(r.starts_with("NVML unavailable: "), "{r}");
                if is_missing_library(&e) {
                    assert!(r.ends_with("(no NVIDIA driver?)"), "{r}");
                }
            }
            // A GPU host: reading must work and report NVML as available.
            Ok(p) => assert_eq!(p.status().nvml, NvmlState::Available),
        }
    }
}
