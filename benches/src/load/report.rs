//! Latency summaries from hdrhistograms and the side-by-side table benchmarks print.
//!
//! Latencies are recorded in microseconds into [`latency_histogram`]s (3 significant digits,
//! up to an hour). A [`Summary`] reduces one target's histogram to the numbers a report shows
//! (count, errors, throughput, p50/p90/p99/p99.9/max) and serializes to JSON for the machine
//! readable record. [`Added`] is the per-percentile difference between two targets — e.g.
//! proxy minus direct — which is what "the proxy adds N µs at p99" means. (It is the difference
//! of the percentiles, not a percentile of per-request differences, which a run that sends
//! each request only once cannot measure.)

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds exactly: one hour, in µs (larger values saturate).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty histogram for latencies in µs, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records `latency` in µs (saturating at [`MAX_LATENCY_US`]).
pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
    hist.saturating_record(latency.as_micros().min(u128::from(MAX_LATENCY_US)) as u64);
}

/// One target's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The target's name, e.g. "direct" or "proxy".
    pub name: String,
    /// Successful requests recorded.
    pub count: u64,
    /// Failed requests (transport errors, timeouts, unexpected statuses).
    pub errors: u64,
    /// Successful requests per second of the measured window.
    pub throughput_rps: f64,
    /// Mean latency, µs (one decimal).
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p99_9_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
}

impl Summary {
    /// Summarizes `hist` (µs) for a measured window of `window`.
    pub fn new(name: &str, hist: &Histogram<u64>, errors: u64, window: Duration) -> Self {
        let count = hist.len();
        let secs = window.as_secs_f64();
        let at = |p: f64| {
            if count == 0 {
                0
            } else {
                hist.value_at_quantile(p)
            }
        };
        Self {
            name: name.to_string(),
            count,
            errors,
            throughput_rps: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            mean_us: if count == 0 {
                0.0
            } else {
                (hist.mean() * 10.0).round() / 10.0
            },
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p99_9_us: at(0.999),
            max_us: if count == 0 { 0 } else { hist.max() },
        }
    }

    fn columns(&self) -> [u64; 5] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.max_us,
        ]
    }
}

/// What one target adds over another, per percentile, in µs (negative: it was faster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// Median difference.
    pub p50_us: i64,
    /// 90th percentile difference.
    pub p90_us: i64,
    /// 99th percentile difference.
    pub p99_us: i64,
    /// 99.9th percentile difference.
    pub p99_9_us: i64,
    /// Difference of the maxima.
    pub max_us: i64,
}

impl Added {
    /// `subject` minus `baseline`, per percentile.
    pub fn between(subject: &Summary, baseline: &Summary) -> Self {
        let d = |a: u64, b: u64| a as i64 - b as i64;
        Self {
            p50_us: d(subject.p50_us, baseline.p50_us),
            p90_us: d(subject.p90_us, baseline.p90_us),
            p99_us: d(subject.p99_us, baseline.p99_us),
            p99_9_us: d(subject.p99_9_us, baseline.p99_9_us),
            max_us: d(subject.max_us, baseline.max_us),
        }
    }

    fn columns(&self) -> [i64; 5] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.max_us,
        ]
    }
}

const HEADERS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// The side-by-side table: one row per target and, for each `(label, added)`, a row of
/// per-percentile differences. All latencies in µs.
///
/// ```text
/// target                    count  errors     req/s   p50 µs   p90 µs ...
/// direct                     5000       0     500.0      102      140 ...
/// proxy                      5000       0     500.0      231      298 ...
/// added (proxy − direct)                                 +129     +158 ...
/// ```
pub fn table(targets: &[Summary], added: &[(String, Added)]) -> String {
    let label_width = targets
        .iter()
        .map(|s| s.name.chars().count())
        .chain(added.iter().map(|(l, _)| l.chars().count()))
        .chain(std::iter::once("target".len()))
        .max()
        .unwrap_or(6);
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<label_width$}  {:>8}  {:>6}  {:>9}",
        "target", "count", "errors", "req/s"
    );
    for h in HEADERS {
        let _ = write!(out, "  {:>9}", format!("{h} µs"));
    }
    out.push('\n');
    for s in targets {
        let _ = write!(
            out,
            "{:<label_width$}  {:>8}  {:>6}  {:>9.1}",
            s.name, s.count, s.errors, s.throughput_rps
        );
        for v in s.columns() {
            let _ = write!(out, "  {v:>9}");
        }
        out.push('\n');
    }
    for (label, a) in added {
        let _ = write!(
            out,
            "{:<label_width$}  {:>8}  {:>6}  {:>9}",
            label, "", "", ""
        );
        for v in a.columns() {
            let _ = write!(out, "  {v:>+9}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = latency_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn summary_percentiles() {
        let s = Summary::new("direct", &hist(1..=1000), 2, Duration::from_secs(2));
        assert_eq!((s.count, s.errors), (1000, 2));
        assert_eq!(s.throughput_rps, 500.0);
        assert_eq!((s.p50_us, s.p90_us, s.p99_us), (500, 900, 990));
        assert_eq!((s.p99_9_us, s.max_us), (999, 1000));
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Summary::new("x", &latency_histogram(), 0, Duration::from_secs(1));
        assert_eq!((s.count, s.p50_us, s.max_us, s.mean_us), (0, 0, 0, 0.0));
    }

    #[test]
    fn record_saturates() {
        let mut h = latency_histogram();
        record(&mut h, Duration::from_secs(10 * 3600));
        record(&mut h, Duration::from_micros(250));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 250);
        assert!(h.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn added_and_table() {
        let direct = Summary::new("direct", &hist(100..=200), 0, Duration::from_secs(1));
        let proxy = Summary::new("proxy", &hist(150..=260), 0, Duration::from_secs(1));
        let added = Added::between(&proxy, &direct);
        assert_eq!(added.p50_us, proxy.p50_us as i64 - direct.p50_us as i64);
        assert!(added.p50_us > 0);
        let label = "added (proxy − direct)".to_string();
        let text = table(&[direct, proxy], &[(label.clone(), added)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("target") && lines[0].contains("p99.9 µs"));
        assert!(lines[1].starts_with("direct"));
        assert!(lines[3].starts_with(&label) && lines[3].contains('+'));
        // Columns line up: every row is as wide as the header (in characters).
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{text}");
    }
}
