//! Prometheus gauges for the GPUs, labelled `gpu` (NVML index) and `name`. Names are relative:
//! registered in the control plane's registry they read `multiverse_control_gpu_…`.
//!
//! [`GpuGauges::update`] replaces every labelled value from one reading, so a GPU that
//! disappears, or a field that stops being readable, leaves no stale series behind.

use prometheus::core::Collector;
use prometheus::{IntGauge, IntGaugeVec, Opts};

use super::{GpuStatus, NvmlState};

const LABELS: &[&str] = &["gpu", "name"];

/// The GPU gauges.
#[derive(Clone)]
pub struct GpuGauges {
    pub memory_used_bytes: IntGaugeVec,
    pub memory_total_bytes: IntGaugeVec,
    pub utilization_percent: IntGaugeVec,
    pub temperature_celsius: IntGaugeVec,
    /// 1 when NVML is read, 0 when unavailable or simulated.
    pub nvml_available: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("invalid GPU metric definition: {e}"))
}

fn gauge_vec(name: &str, help: &str) -> IntGaugeVec {
    must(IntGaugeVec::new(Opts::new(name, help), LABELS))
}

impl Default for GpuGauges {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuGauges {
    pub fn new() -> Self {
        Self {
            memory_used_bytes: gauge_vec("gpu_memory_used_bytes", "GPU memory in use, in bytes"),
            memory_total_bytes: gauge_vec("gpu_memory_total_bytes", "GPU memory installed, in bytes"),
            utilization_percent: gauge_vec(
                "gpu_utilization_percent",
                "GPU (kernel) utilisation over NVML's last sample period, in percent",
            ),
            temperature_celsius: gauge_vec("gpu_temperature_celsius", "GPU die temperature, in °C"),
            nvml_available: must(IntGauge::new(
                "gpu_nvml_available",
                "1 when GPU stats are read through NVML, 0 when NVML is unavailable or GPUs are simulated",
            )),
        }
    }

    /// Every gauge, to register in a registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.memory_used_bytes.clone()),
            Box::new(self.memory_total_bytes.clone()),
            Box::new(self.utilization_percent.clone()),
            Box::new(self.temperature_celsius.clone()),
            Box::new(self.nvml_available.clone()),
        ]
    }

    /// Sets every gauge from one reading.
    pub fn update(&self, status: &GpuStatus) {
        self.nvml_available
            .set(i64::from(status.nvml == NvmlState::Available));
        let gauges = [
            &self.memory_used_bytes,
            &self.memory_total_bytes,
            &self.utilization_percent,
            &self.temperature_celsius,
        ];
        for g in gauges {
            g.reset();
        }
        for gpu in &status.gpus {
            let index = gpu.index.to_string();
            let labels = [index.as_str(), gpu.name.as_str()];
            let values = [
                gpu.memory_used_bytes,
                gpu.memory_total_bytes,
                gpu.utilization_percent.map(u64::from),
                gpu.temperature_c.map(u64::from),
            ];
            for (g, v) in gauges.iter().zip(values) {
                if let Some(v) = v {
                    g.with_label_values(&labels)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeGpu, FakeGpus, GpuProbe, Unavailable};
    use prometheus::{Encoder, Registry, TextEncoder};

    fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn update_from_a_fake_status() {
        let registry = Registry::new_custom(Some("multiverse_control".into()), None).unwrap();
        let gauges = GpuGauges::new();
        for c in gauges.collectors() {
            registry.register(c).unwrap();
        }
        let mut status = FakeGpus::new(vec![FakeGpu {
            name: "A10G".into(),
            memory_total_mb: 2,
            memory_used_mb: 1,
        }])
        .status();
        status.gpus[0].temperature_c = Some(41);
        gauges.update(&status);
        let text = render(&registry);
        for line in [
            r#"multiverse_control_gpu_memory_used_bytes{gpu="0",name="A10G"} 1048576"#,
            r#"multiverse_control_gpu_memory_total_bytes{gpu="0",name="A10G"} 2097152"#,
            r#"multiverse_control_gpu_utilization_percent{gpu="0",name="A10G"} 0"#,
            r#"multiverse_control_gpu_temperature_celsius{gpu="0",name="A10G"} 41"#,
            "multiverse_control_gpu_nvml_available 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }

        // A field that becomes unreadable, then NVML going away, leave no stale series.
        status.gpus[0].temperature_c = None;
        gauges.update(&status);
        assert!(!render(&registry).contains("gpu_temperature_celsius{"));
        gauges.update(&Unavailable("gone".into()).status());
        let text = render(&registry);
        assert!(!text.contains("gpu=\"0\""), "{text}");
        assert!(text.contains("multiverse_control_gpu_nvml_available 0"));
    }

    #[test]
    fn nvml_available_is_1_with_nvml() {
        let gauges = GpuGauges::new();
        let mut status = Unavailable("x".into()).status();
        status.nvml = NvmlState::Available;
        gauges.update(&status);
        assert_eq!(gauges.nvml_available.get(), 1);
    }
}
