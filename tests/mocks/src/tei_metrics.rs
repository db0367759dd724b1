//! `mock-tei`'s Prometheus metrics, named and bucketed as TEI's router exports them (TEI's
//! `router/src/prometheus.rs`, `core/src/queue.rs`, `router/src/lib.rs`), so whatever scrapes a
//! real TEI (the control plane's engine-aware load) can be tested against the mock:
//!
//! | metric | type | mock-tei's value |
//! |---|---|---|
//! | `te_request_count`, `te_request_success`, `te_request_failure` | counter | model requests received / answered / failed (TEI adds `method` / `err` labels; the mock has none) |
//! | `te_queue_size` | gauge | inputs waiting for batch capacity (`--simulate-batching`; else 0), plus the fake `waiting` of `POST /_mock/load` |
//! | `te_batch_next_size`, `te_batch_next_tokens` | histogram | inputs / tokens being inferred when a request starts inferring, itself included |
//! | `te_request_duration` | histogram (s) | time to answer a successful model request |
//! | `te_request_queue_duration`, `te_request_inference_duration` | histogram (s) | its wait for capacity / its `--latency-ms` |
//! | `te_request_tokenization_duration` | histogram (s) | 0 (the mock's tokenizer takes no measurable time) |
//!
//! Each server has its own registry (tests run several in one process). They are served at
//! `/metrics` on the HTTP port and, with `--serve-prometheus`, at any path of
//! `--prometheus-port` ([`serve`]), as TEI's gRPC builds serve them. `POST /_mock/load
//! {"waiting": N, "metrics": bool}` on the HTTP port sets a fake queue and turns `/metrics` off
//! (503) or on, for engine-aware load tests ([`TeiMetrics::set_fake_load`]).

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;

use super::common::{self, Shutdown, Stats};

/// TEI's duration buckets: 35 steps of ×1.5 from 15 µs (about 0.4 h at the top).
fn duration_buckets() -> Vec<f64> {
    let mut value = 0.00001;
    (0..35)
        .map(|_| {
            value *= 1.5;
            value
        })
        .collect()
}

/// Powers of two `2^0 .. 2^(n-1)`, TEI's buckets for batch sizes (13) and batch tokens (21).
fn power_buckets(n: i32) -> Vec<f64> {
    (0..n).map(|x| 2f64.powi(x)).collect()
}

/// The metrics of one `mock-tei` server.
#[derive(Debug)]
pub struct TeiMetrics {
    registry: Registry,
    /// `te_request_count`: model requests received.
    pub request_count: IntCounter,
    /// `te_request_success`: model requests answered.
    pub request_success: IntCounter,
    /// `te_request_failure`: model requests failed.
    pub request_failure: IntCounter,
    /// `te_queue_size`: inputs waiting for batch capacity.
    pub queue_size: IntGauge,
    /// `te_batch_next_size`: inputs being inferred when a request starts inferring.
    pub batch_next_size: Histogram,
    /// `te_batch_next_tokens`: tokens being inferred when a request starts inferring.
    pub batch_next_tokens: Histogram,
    /// `te_request_duration`, seconds.
    pub request_duration: Histogram,
    /// `te_request_tokenization_duration`, seconds.
    pub request_tokenization_duration: Histogram,
    /// `te_request_queue_duration`, seconds.
    pub request_queue_duration: Histogram,
    /// `te_request_inference_duration`, seconds.
    pub request_inference_duration: Histogram,
    /// Fake inputs added to `te_queue_size` (`POST /_mock/load {"waiting": N}`).
    fake_queue: std::sync::atomic::AtomicI64,
    /// True: `/metrics` answers 503 (`POST /_mock/load {"metrics": false}`).
    metrics_off: std::sync::atomic::AtomicBool,
}

impl Default for TeiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TeiMetrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter name");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let request_count = counter("te_request_count", "Model requests received");
        let request_success = counter("te_request_success", "Model requests answered");
        let request_failure = counter("te_request_failure", "Model requests failed");
        let queue_size = IntGauge::new("te_queue_size", "Inputs waiting in the queue")
            .expect("valid gauge name");
        registry
            .register(Box::new(queue_size.clone()))
            .expect("registered once");
        let batch_next_size = histogram(
            "te_batch_next_size",
            "Inputs in the batch a request joins",
            power_buckets(13),
        );
        let batch_next_tokens = histogram(
            "te_batch_next_tokens",
            "Tokens in the batch a request joins",
            power_buckets(21),
        );
        let request_duration = histogram(
            "te_request_duration",
            "Time to answer a request, seconds",
            duration_buckets(),
        );
        let request_tokenization_duration = histogram(
            "te_request_tokenization_duration",
            "Tokenization time of a request, seconds",
            duration_buckets(),
        );
        let request_queue_duration = histogram(
            "te_request_queue_duration",
            "Time a request waited in the queue, seconds",
            duration_buckets(),
        );
        let request_inference_duration = histogram(
            "te_request_inference_duration",
            "Inference time of a request, seconds",
            duration_buckets(),
        );
        Self {
            registry,
            request_count,
            request_success,
            request_failure,
            queue_size,
            batch_next_size,
            batch_next_tokens,
            request_duration,
            request_tokenization_duration,
            request_queue_duration,
            request_inference_duration,
            fake_queue: Default::default(),
            metrics_off: Default::default(),
        }
    }

    /// Applies `POST /_mock/load`: `waiting` fake inputs in `te_queue_size` (on top of the
    /// simulated batching queue), `metrics` on or off; other fields are ignored.
    pub fn set_fake_load(&self, s: &crate::engine_load::LoadSettings) {
        use std::sync::atomic::Ordering;
        if let Some(w) = s.waiting {
            let old = self.fake_queue.swap(i64::from(w), Ordering::SeqCst);
            self.queue_size.add(i64::from(w) - old);
        }
        if let Some(on) = s.metrics {
            self.metrics_off.store(!on, Ordering::SeqCst);
        }
    }

    /// Records a successful model request's durations.
    pub fn observe_success(&self, total: Duration, queue: Duration, inference: Duration) {
        self.request_duration.observe(total.as_secs_f64());
        self.request_tokenization_duration.observe(0.0);
        self.request_queue_duration.observe(queue.as_secs_f64());
        self.request_inference_duration
            .observe(inference.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }

    /// The exposition as an HTTP response.
    pub fn response(&self) -> Response {
        if self.metrics_off.load(std::sync::atomic::Ordering::SeqCst) {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "metrics turned off",
            )
                .into_response();
        }
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            self.render(),
        )
            .into_response()
    }
}

/// Serves `metrics` at every path of `listener` (`--serve-prometheus`) until `shutdown`.
pub async fn serve(
    metrics: Arc<TeiMetrics>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let router = Router::new().fallback(move || {
        let metrics = metrics.clone();
        async move { metrics.response() }
    });
    // Connections to the metrics port are not model traffic: they get their own counters.
    common::serve_http(listener, router, Arc::new(Stats::default()), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_teis() {
        let d = duration_buckets();
        assert_eq!(d.len(), 35);
        assert!((d[0] - 0.000015).abs() < 1e-12);
        assert!((d[1] / d[0] - 1.5).abs() < 1e-12);
        assert_eq!(power_buckets(13).last(), Some(&4096.0));
        assert_eq!(power_buckets(21).last(), Some(&1_048_576.0));
    }

    #[test]
    fn renders_teis_names() {
        let m = TeiMetrics::new();
        m.request_count.inc();
        m.queue_size.set(3);
        m.batch_next_size.observe(2.0);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("# TYPE te_request_count counter\nte_request_count 1\n"));
        assert!(text.contains("# TYPE te_queue_size gauge\nte_queue_size 3\n"));
        assert!(
            text.contains("te_batch_next_size_bucket{le=\"2\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("te_batch_next_size_count 1\n"));
        for name in [
            "te_request_success",
            "te_request_failure",
            "te_batch_next_tokens",
            "te_request_duration",
            "te_request_tokenization_duration",
            "te_request_queue_duration",
            "te_request_inference_duration",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
        }
    }

    #[test]
    fn a_fake_queue_adds_to_the_real_one_and_metrics_turn_off() {
        use crate::engine_load::LoadSettings;
        let m = TeiMetrics::new();
        m.queue_size.add(2);
        let set = |w: Option<u32>, on: Option<bool>| LoadSettings {
            waiting: w,
            metrics: on,
            ..Default::default()
        };
        m.set_fake_load(&set(Some(50), None));
        assert_eq!(m.queue_size.get(), 52);
        m.set_fake_load(&set(Some(10), None));
        assert_eq!(
            m.queue_size.get(),
            12,
            "the fake part is replaced, not added twice"
        );
        m.set_fake_load(&set(None, Some(false)));
        assert_eq!(
            m.response().status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_fake_load(&set(Some(0), Some(true)));
        assert_eq!(
            (m.response().status(), m.queue_size.get()),
            (axum::http::StatusCode::OK, 2)
        );
    }
}
