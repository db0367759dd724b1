//! What a TEI instance says about its own traffic: the `te_request_*` series of its Prometheus
//! metrics (TEI's `router/src/prometheus.rs`), read on demand for `GET /metrics/json`.
//!
//! HTTP builds serve them at `/metrics` on the instance's port; gRPC builds on
//! `--prometheus-port`. Counters with labels (TEI labels them by `method` and `err`) are summed.

use std::time::Duration;

use serde::Serialize;

/// Requests an instance has answered since its process started, by its own count.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Traffic {
    /// `te_request_count`: model requests received.
    pub requests_total: u64,
    /// `te_request_success`.
    pub requests_succeeded: u64,
    /// `te_request_failure`.
    pub requests_failed: u64,
    /// `te_request_duration_sum / _count` (successful requests), in ms; `None` before any.
    pub avg_latency_ms: Option<f64>,
}

/// Reads TEI's Prometheus text; `None` when it has no `te_request_count` (not a TEI).
pub fn parse(text: &str) -> Option<Traffic> {
    let mut seen = false;
    let mut t = Traffic::default();
    let (mut dur_sum, mut dur_count) = (0.0f64, 0.0f64);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        match name {
            "te_request_count" => {
                seen = true;
                t.requests_total += v as u64;
            }
            "te_request_success" => t.requests_succeeded += v as u64,
            "te_request_failure" => t.requests_failed += v as u64,
            "te_request_duration_sum" => dur_sum += v,
            "te_request_duration_count" => dur_count += v,
            _ => {}
        }
    }
    if dur_count > 0.0 {
        t.avg_latency_ms = Some(dur_sum / dur_count * 1000.0);
    }
    seen.then_some(t)
}

/// `GET url` within `timeout`, parsed; `Err` says why there is nothing.
pub async fn scrape(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Traffic, String> {
    let resp = http
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status().as_u16()));
    }
    let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    parse(&text).ok_or_else(|| format!("{url} has no te_request_count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums_tei_series() {
        let text = "# HELP te_request_count Model requests\n\
            # TYPE te_request_count counter\n\
            te_request_count{method=\"single\"} 3\n\
            te_request_count{method=\"batch\"} 2\n\
            te_request_success{method=\"single\"} 4\n\
            te_request_failure{err=\"tokenizer\"} 1\n\
            te_request_duration_bucket{le=\"0.1\"} 4\n\
            te_request_duration_sum 0.2\n\
            te_request_duration_count 4\n\
            te_queue_size 0\n";
        let t = parse(text).expect("a TEI");
        assert_eq!(
            (t.requests_total, t.requests_succeeded, t.requests_failed),
            (5, 4, 1)
        );
        let avg = t.avg_latency_ms.expect("avg");
        assert!((avg - 50.0).abs() < 1e-9, "{avg}");
        let idle = parse("te_request_count 0\nte_request_duration_count 0\n").expect("a TEI");
        assert_eq!(idle.avg_latency_ms, None, "no request, no average");
        assert_eq!(parse("other_metric 1\n"), None);
        assert_eq!(
            parse("te_request_count NaN\n").map(|t| t.requests_total),
            Some(0)
        );
    }
}
