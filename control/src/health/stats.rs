//! Probe statistics of one target (an instance or a backend), per probe kind (`startup`,
//! `liveness`, `readiness`): totals, average and p99 response time (of the last [`WINDOW`]
//! probes), last success and failure, consecutive failures. Updated after each probe (a short
//! `std` mutex, never held across I/O), shown on `GET /instances/{name}` and
//! `GET /admin/backends/{id}`, and fed to the Prometheus probe series when attached.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

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
    /// `multiverse_control_probe_duration_seconds` / `_probes_total`, labelled with this
    /// target's type (`instance`, `backend`) and name.
    metrics: Option<(
        std::sync::Arc<crate::metrics::ControlMetrics>,
        &'static str,
        String,
    )>,
}

impl ProbeStats {
    /// Stats that also feed the Prometheus probe metrics under `target_type` (`instance`,
    /// `backend`) and `target` (its name).
    pub fn with_metrics(
        metrics: std::sync::Arc<crate::metrics::ControlMetrics>,
        target_type: &'static str,
        target: &str,
    ) -> Self {
        Self {
            kinds: Mutex::default(),
            metrics: Some((metrics, target_type, target.to_string())),
        }
    }

    /// One probe of `kind` (`startup`, `liveness`, `readiness`) that took `took` and failed
    /// with `error` (or passed).
    pub fn record(&self, kind: &'static str, took: Duration, error: Option<&String>) {
        if let Some((m, target_type, target)) = &self.metrics {
            m.observe_probe(target_type, target, kind, took, error.is_none());
        }
        let ms = took.as_secs_f64() * 1000.0;
        let now = multiverse_common::time::now_rfc3339();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let k = kinds.entry(kind).or_default();
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

    /// Every kind together: the share of probes that passed and their average response time
    /// (`None` before the first probe), as the backend list shows them.
    pub fn summary(&self) -> Summary {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let (total, successes, sum_ms) = kinds.values().fold((0u64, 0u64, 0.0), |(t, s, m), k| {
            (t + k.total, s + k.successes, m + k.sum_ms)
        });
        Summary {
            probes: total,
            success_rate: (total > 0).then(|| successes as f64 / total as f64),
            avg_latency_ms: (total > 0).then(|| sum_ms / total as f64),
        }
    }
}

/// Every kind of a target's probes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub probes: u64,
    /// 0.0-1.0.
    pub success_rate: Option<f64>,
    pub avg_latency_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_average_p99_and_streaks() {
        let s = ProbeStats::default();
        for i in 1..=100u64 {
            s.record("liveness", Duration::from_millis(i), None);
        }
        let err = "503".to_string();
        s.record("liveness", Duration::from_millis(1), Some(&err));
        s.record("liveness", Duration::from_millis(1), Some(&err));
        let k = &s.snapshot()["liveness"];
        assert_eq!((k.total, k.successes, k.failures), (102, 100, 2));
        assert_eq!(k.consecutive_failures, 2);
        assert_eq!(k.last_error.as_deref(), Some("503"));
        assert!(k.last_success_at.is_some() && k.last_failure_at.is_some());
        let avg = k.avg_ms.unwrap();
        assert!((avg - 5052.0 / 102.0).abs() < 0.01, "{avg}");
        assert!((k.p99_ms.unwrap() - 99.0).abs() < 0.5, "{:?}", k.p99_ms);
        s.record("liveness", Duration::from_millis(1), None);
        assert_eq!(s.snapshot()["liveness"].consecutive_failures, 0);
        assert!(!s.snapshot().contains_key("readiness"));
        s.record("readiness", Duration::from_millis(9), Some(&err));
        let sum = s.summary();
        assert_eq!(sum.probes, 104);
        assert!(
            (sum.success_rate.unwrap() - 101.0 / 104.0).abs() < 1e-9,
            "{sum:?}"
        );
        assert!(
            (sum.avg_latency_ms.unwrap() - 5062.0 / 104.0).abs() < 0.01,
            "{sum:?}"
        );
        assert_eq!(ProbeStats::default().summary(), Summary::default());
    }
}
