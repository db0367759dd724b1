//! Probe statistics of one instance, per [`ProbeKind`]: totals, average and p99 response time
//! (of the last [`WINDOW`] probes), last success and failure, consecutive failures. Updated by
//! the driver after each probe (a short `std` mutex, never held across I/O), shown on
//! `GET /instances/{name}`, and fed to the Prometheus histogram when one is attached.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::machine::ProbeKind;

/// Response times kept per kind for the p99.
pub const WINDOW: usize = 1000;

/// One kind's figures, as the API shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindStats {
    pub total: u64,
    pub successes: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    /// Over every probe so far.
    pub avg_ms: Option<f64>,
    /// Over the last [`WINDOW`] probes.
    pub p99_ms: Option<f64>,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_error: Option<String>,
    #[serde(skip)]
    sum_ms: f64,
    #[serde(skip)]
    recent_ms: VecDeque<f64>,
}

/// Every kind's figures.
#[derive(Default)]
pub struct ProbeStats {
    kinds: Mutex<BTreeMap<&'static str, KindStats>>,
    /// `multiverse_control_probe_duration_seconds` / `_probes_total`, labelled with this target.
    metrics: Option<(std::sync::Arc<crate::metrics::ControlMetrics>, String)>,
}

impl ProbeStats {
    /// Stats that also feed the Prometheus probe metrics under `target` (the instance name).
    pub fn with_metrics(
        metrics: std::sync::Arc<crate::metrics::ControlMetrics>,
        target: &str,
    ) -> Self {
        Self {
            kinds: Mutex::default(),
            metrics: Some((metrics, target.to_string())),
        }
    }

    /// One probe of `kind` that took `took` and failed with `error` (or passed).
    pub fn record(&self, kind: ProbeKind, took: Duration, error: Option<&String>) {
        if let Some((m, target)) = &self.metrics {
            m.observe_probe("instance", target, kind.name(), took, error.is_none());
        }
        let ms = took.as_secs_f64() * 1000.0;
        let now = multiverse_common::time::now_rfc3339();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let k = kinds.entry(kind.name()).or_default();
        k.total += 1;
        k.sum_ms += ms;
        k.avg_ms = Some(k.sum_ms / k.total as f64);
        k.recent_ms.push_back(ms);
        if k.recent_ms.len() > WINDOW {
            k.recent_ms.pop_front();
        }
        let mut sorted: Vec<f64> = k.recent_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        k.p99_ms = sorted.get(rank.saturating_sub(1)).copied();
        match error {
            None => {
                k.successes += 1;
                k.consecutive_failures = 0;
                k.last_success_at = Some(now);
            }
            Some(e) => {
                k.failures += 1;
                k.consecutive_failures += 1;
                k.last_failure_at = Some(now);
                k.last_error = Some(e.clone());
            }
        }
    }

    /// The figures now, by kind name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, KindStats> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_average_p99_and_streaks() {
        let s = ProbeStats::default();
        for i in 1..=100u64 {
            s.record(ProbeKind::Liveness, Duration::from_millis(i), None);
        }
        let err = "503".to_string();
        s.record(ProbeKind::Liveness, Duration::from_millis(1), Some(&err));
        s.record(ProbeKind::Liveness, Duration::from_millis(1), Some(&err));
        let k = &s.snapshot()["liveness"];
        assert_eq!((k.total, k.successes, k.failures), (102, 100, 2));
        assert_eq!(k.consecutive_failures, 2);
        assert_eq!(k.last_error.as_deref(), Some("503"));
        assert!(k.last_success_at.is_some() && k.last_failure_at.is_some());
        let avg = k.avg_ms.unwrap();
        assert!((avg - 5052.0 / 102.0).abs() < 0.01, "{avg}");
        assert!((k.p99_ms.unwrap() - 99.0).abs() < 0.5, "{:?}", k.p99_ms);
        s.record(ProbeKind::Liveness, Duration::from_millis(1), None);
        assert_eq!(s.snapshot()["liveness"].consecutive_failures, 0);
        assert!(!s.snapshot().contains_key("readiness"));
    }
}
