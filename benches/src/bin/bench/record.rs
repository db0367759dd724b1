//! The JSON document `--json` writes ([`Record`]) and the parts shared by the latency
//! scenarios: one metric across targets ([`MetricRecord`]), the pacer's lateness
//! ([`PacerRecord`]), one scenario ([`LatencyRecord`]).

use std::collections::BTreeMap;

use serde::Serialize;

use multiverse_benches::load::engine::TargetStats;
use multiverse_benches::load::machine::Machine;
use multiverse_benches::load::report::{self, Added, Summary};
use multiverse_benches::load::schedule::PacerStats;

use crate::arrow::ArrowRecord;
use crate::cli::Settings;
use crate::cpu::CpuRecord;
use crate::hedge::HedgeRecord;
use crate::keys::KeysRecord;
use crate::memory::MemoryRecord;
use crate::models::ModelsRecord;
use crate::policies::PoliciesRecord;
use crate::prefix::PrefixRecord;
use crate::propagation::PropagationRecord;
use crate::rates::RatesRecord;
use crate::throughput::ThroughputRecord;
use crate::usage::UsageRecord;

/// The whole run, as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Record {
    pub benchmark: &'static str,
    pub command: String,
    pub machine: Machine,
    /// /proc/loadavg before the run (1, 5, 15 min): other work on the machine.
    pub loadavg_before: String,
    /// /proc/loadavg after the run.
    pub loadavg_after: String,
    pub settings: Settings,
    pub nginx: NginxInfo,
    /// haproxy, the second comparison proxy (same fields as nginx's).
    pub haproxy: NginxInfo,
    pub latency: Vec<LatencyRecord>,
    pub throughput: Vec<ThroughputRecord>,
    pub rates: Option<RatesRecord>,
    pub propagation: Option<PropagationRecord>,
    pub memory: Option<MemoryRecord>,
    pub models_10k: Option<ModelsRecord>,
    pub keys: Option<KeysRecord>,
    pub prefix: Option<PrefixRecord>,
    pub usage: Option<UsageRecord>,
    pub arrow: Option<ArrowRecord>,
    pub hedge: Option<HedgeRecord>,
    pub policies: Option<PoliciesRecord>,
    /// Everything that went wrong (failed requests, missing samples, children that died).
    pub failures: Vec<String>,
    pub ok: bool,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct NginxInfo {
    pub used: bool,
    pub version: Option<String>,
    pub note: Option<String>,
}

/// One metric of a latency scenario, all targets.
#[derive(Debug, Clone, Serialize)]
pub struct MetricRecord {
    /// "latency" (whole request or stream), "first_event", "gap".
    pub metric: &'static str,
    pub targets: Vec<Summary>,
    /// "<target> − direct" → per-percentile difference, µs.
    pub added: BTreeMap<String, Added>,
}

impl MetricRecord {
    pub fn new(
        metric: &'static str,
        stats: &[TargetStats],
        pick: fn(&TargetStats) -> &hdrhistogram::Histogram<u64>,
    ) -> Self {
        let targets: Vec<Summary> = stats
            .iter()
            .map(|s| Summary::new(&s.name, pick(s), s.errors, s.window))
            .collect();
        let mut added = BTreeMap::new();
        if let Some(direct) = targets.iter().find(|t| t.name == "direct") {
            for t in targets.iter().filter(|t| t.name != "direct") {
                added.insert(format!("{} − direct", t.name), Added::between(t, direct));
            }
        }
        Self {
            metric,
            targets,
            added,
        }
    }

    pub fn target(&self, name: &str) -> Option<&Summary> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn table(&self) -> String {
        // In target order: proxy before nginx.
        let added: Vec<(String, Added)> = self
            .targets
            .iter()
            .filter_map(|t| {
                let key = format!("{} − direct", t.name);
                self.added.get(&key).map(|a| (format!("added ({key})"), *a))
            })
            .collect();
        report::table(&self.targets, &added)
    }
}

#[derive(Debug, Serialize)]
pub struct PacerRecord {
    pub arrivals: u64,
    pub measured_arrivals: u64,
    pub late_p99_us: u64,
    pub late_max_us: u64,
}

impl PacerRecord {
    pub fn new(p: &PacerStats) -> Self {
        Self {
            arrivals: p.ticks,
            measured_arrivals: p.measured_ticks,
            late_p99_us: p.lag_us.value_at_quantile(0.99),
            late_max_us: p.lag_us.max(),
        }
    }
}

/// One latency scenario.
#[derive(Debug, Serialize)]
pub struct LatencyRecord {
    pub scenario: &'static str,
    pub request: String,
    pub rate_per_target: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub metrics: Vec<MetricRecord>,
    pub warmup_errors: BTreeMap<String, u64>,
    pub pacer: PacerRecord,
    /// CPU the proxies (and the generator) used during the run.
    pub cpu: Vec<CpuRecord>,
    pub failures: Vec<String>,
}
