//! What the proxy tells operators about itself: Prometheus metrics, rendered on the admin
//! listener's `/metrics`, and a rate limit for log lines any client can cause.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    retries: IntCounterVec,
    hedges: IntCounterVec,
    hedge_wins: IntCounterVec,
    ejections: IntCounterVec,
    client_faults: IntCounterVec,
    midstream_failures: IntCounterVec,
    tokens: IntCounterVec,
    first_token: HistogramVec,
    token_gap: HistogramVec,
    in_flight: IntGauge,
    /// Client connections open (both client listeners).
    pub client_connections: IntGauge,
    /// Client connections closed on accept, by the limit they were over.
    pub connections_shed: IntCounterVec,
    pub table_version: IntGaugeVec,
    pub table_updates: IntCounter,
    pub snapshots_rejected: IntCounter,
    pub control_plane_connected: IntGaugeVec,
    key_requests: IntCounterVec,
    key_tokens: IntCounterVec,
    /// Addresses a `dns+` control-plane name resolved to last, by name.
    pub control_plane_addresses: IntGaugeVec,
    /// Resolutions of `dns+` names, by name and result (`ok`, `error`).
    pub dns_resolutions: IntCounterVec,
    /// 1 for each model whose policy the control planes disagree on.
    policy_conflicts: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    queue_sheds: IntCounterVec,
    rate_sheds: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("multiverse_proxy".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let requests = must(IntCounterVec::new(
            Opts::new("requests_total", "Requests by model, endpoint and status"),
            &["model", "endpoint", "status"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request start to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["model"],
        ));
        let connect_errors = must(IntCounterVec::new(
            Opts::new("upstream_connect_errors_total", "Failed upstream connects"),
            &["endpoint"],
        ));
        let retries = must(IntCounterVec::new(
            Opts::new("retries_total", "Attempts retried on another endpoint"),
            &["model"],
        ));
        let hedges = must(IntCounterVec::new(
            Opts::new(
                "hedges_total",
                "Hedged requests: a second endpoint sent the same idempotent request after                  the model's hedge_after_ms without an answer from the first",
            ),
            &["model"],
        ));
        let hedge_wins = must(IntCounterVec::new(
            Opts::new(
                "hedge_wins_total",
                "Hedged requests answered by the second (hedge) endpoint first",
            ),
            &["model"],
        ));
        let ejections = must(IntCounterVec::new(
            Opts::new(
                "outlier_ejections_total",
                "Endpoints ejected by passive outlier detection",
            ),
            &["endpoint"],
        ));
        let client_faults = must(IntCounterVec::new(
            Opts::new(
                "client_faults_total",
                "Requests that failed by the client's doing (malformed or oversized header or \
                 body, timeout, gone), by reason",
            ),
            &["reason"],
        ));
        let midstream_failures = must(IntCounterVec::new(
            Opts::new(
                "upstream_midstream_failures_total",
                "Responses whose upstream failed after the response had started (the client \
                 got an SSE error event, gRPC UNAVAILABLE, or a closed connection), by model, \
                 endpoint and body (sse, grpc, http)",
            ),
            &["model", "endpoint", "body"],
        ));
        let tokens = must(IntCounterVec::new(
            Opts::new(
                "tokens_total",
                "Tokens from OpenAI responses' usage, by model, endpoint, inference key id \
                 (\"-\": open mode) and kind (prompt, completion)",
            ),
            &["model", "endpoint", "key", "kind"],
        ));
        let first_token = must(HistogramVec::new(
            HistogramOpts::new(
                "time_to_first_token_seconds",
                "SSE streams: time from the request's start to the response's first chunk",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["model"],
        ));
        let token_gap = must(HistogramVec::new(
            HistogramOpts::new(
                "inter_token_gap_seconds",
                "SSE streams: time between two chunks of a response",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["model"],
        ));
        let in_flight = must(IntGauge::new("in_flight_requests", "Requests in flight"));
        let client_connections = must(IntGauge::new(
            "client_connections",
            "Client connections open (both client listeners)",
        ));
        let connections_shed = must(IntCounterVec::new(
            Opts::new(
                "connections_shed_total",
                "Client connections closed on accept, by the limit they were over \
                 (max_connections, max_connections_per_ip)",
            ),
            &["limit"],
        ));
        let table_version = must(IntGaugeVec::new(
            Opts::new(
                "table_info",
                "The routing table in use (1 for the current version label)",
            ),
            &["version"],
        ));
        let table_updates = must(IntCounter::new(
            "table_updates_total",
            "Routing tables applied",
        ));
        let snapshots_rejected = must(IntCounter::new(
            "snapshots_rejected_total",
            "Snapshots NACKed",
        ));
        let control_plane_connected = must(IntGaugeVec::new(
            Opts::new(
                "control_plane_connected",
                "1 while the discovery stream to a control plane is up",
            ),
            &["control_plane"],
        ));
        let key_requests = must(IntCounterVec::new(
            Opts::new(
                "key_requests_total",
                "Requests by inference key id (\"-\": no or an unknown key) and status, in keys \
                 mode (401, 403 and 429 are the gateway's refusals)",
            ),
            &["key", "status"],
        ));
        let key_tokens = must(IntCounterVec::new(
            Opts::new(
                "key_tokens_total",
                "Tokens by inference key id, from responses' usage: in (prompt), out (completion)",
            ),
            &["key", "direction"],
        ));
        let control_plane_addresses = must(IntGaugeVec::new(
            Opts::new(
                "control_plane_addresses",
                "Addresses a dns+ control-plane name resolved to last (one plane each)",
            ),
            &["source"],
        ));
        let dns_resolutions = must(IntCounterVec::new(
            Opts::new(
                "dns_resolutions_total",
                "Resolutions of dns+ control-plane names, by result",
            ),
            &["source", "result"],
        ));
        let policy_conflicts = must(IntGaugeVec::new(
            Opts::new(
                "policy_conflicts",
                "1 for each model whose routing policy the control planes disagree on (the \
                 lowest plane id's is used; /config_dump lists them)",
            ),
            &["model"],
        ));
        let queue_depth = must(IntGaugeVec::new(
            Opts::new(
                "queue_depth",
                "Requests waiting in a model's admission queue (every endpoint at its \
                 max_concurrent)",
            ),
            &["model"],
        ));
        let queue_wait = must(HistogramVec::new(
            HistogramOpts::new(
                "queue_wait_seconds",
                "Time admitted requests waited in a model's queue",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["model"],
        ));
        let queue_sheds = must(IntCounterVec::new(
            Opts::new(
                "queue_sheds_total",
                "Requests refused by admission (429): queue full, displaced by a higher \
                 priority, or timed out waiting",
            ),
            &["model", "reason"],
        ));
        let rate_sheds = must(IntCounterVec::new(
            Opts::new(
                "endpoint_rate_sheds_total",
                "Requests refused (429) because every endpoint of the model that could take \
                 them was over its max_requests_per_sec share, by model and endpoint",
            ),
            &["model", "endpoint"],
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rate_sheds.clone()),
            Box::new(policy_conflicts.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_wait.clone()),
            Box::new(queue_sheds.clone()),
            Box::new(key_requests.clone()),
            Box::new(key_tokens.clone()),
            Box::new(duration.clone()),
            Box::new(connect_errors.clone()),
            Box::new(retries.clone()),
            Box::new(hedges.clone()),
            Box::new(hedge_wins.clone()),
            Box::new(ejections.clone()),
            Box::new(client_faults.clone()),
            Box::new(midstream_failures.clone()),
            Box::new(tokens.clone()),
            Box::new(first_token.clone()),
            Box::new(token_gap.clone()),
            Box::new(in_flight.clone()),
            Box::new(client_connections.clone()),
            Box::new(connections_shed.clone()),
            Box::new(table_version.clone()),
            Box::new(table_updates.clone()),
            Box::new(snapshots_rejected.clone()),
            Box::new(control_plane_connected.clone()),
            Box::new(control_plane_addresses.clone()),
            Box::new(dns_resolutions.clone()),
        ] {
            must(registry.register(c));
        }
        Arc::new(Self {
            registry,
            requests,
            duration,
            connect_errors,
            retries,
            hedges,
            hedge_wins,
            ejections,
            client_faults,
            midstream_failures,
            tokens,
            first_token,
            token_gap,
            in_flight,
            client_connections,
            connections_shed,
            table_version,
            table_updates,
            snapshots_rejected,
            control_plane_connected,
            key_requests,
            key_tokens,
            control_plane_addresses,
            dns_resolutions,
            policy_conflicts,
            queue_depth,
            queue_wait,
            queue_sheds,
            rate_sheds,
        })
    }

    /// Counts a request of inference key `key` (`-`: none or unknown) that ended with `status`,
    /// and the tokens its response reported.
    pub fn key_request(&self, key: &str, status: u16, tokens: Option<(u64, u64)>) {
        let mut buf = itoa_buf();
        let status = fmt_status(status, &mut buf);
        self.key_requests.with_label_values(&[key, status]).inc();
        if let Some((input, output)) = tokens {
            self.key_tokens
                .with_label_values(&[key, "in"])
                .inc_by(input);
            self.key_tokens
                .with_label_values(&[key, "out"])
                .inc_by(output);
        }
    }

    pub fn request_done(&self, model: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let mut buf = itoa_buf();
        let status = fmt_status(status, &mut buf);
        self.requests
            .with_label_values(&[model, endpoint, status])
            .inc();
        self.duration
            .with_label_values(&[model])
            .observe(elapsed.as_secs_f64());
    }

    pub fn connect_error(&self, endpoint: &str) {
        self.connect_errors.with_label_values(&[endpoint]).inc();
    }

    pub fn retry(&self, model: &str) {
        self.retries.with_label_values(&[model]).inc();
    }

    /// A second endpoint was sent a hedged request.
    pub fn hedge(&self, model: &str) {
        self.hedges.with_label_values(&[model]).inc();
    }

    /// A hedged request was answered by its second endpoint.
    pub fn hedge_win(&self, model: &str) {
        self.hedge_wins.with_label_values(&[model]).inc();
    }

    pub fn ejection(&self, endpoint: &str) {
        self.ejections.with_label_values(&[endpoint]).inc();
    }

    /// The gauge of requests in flight (moved by the request path's in-flight guard).
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Counts a request that failed by the client's doing (`reason`: a static label).
    pub fn client_fault(&self, reason: &str) {
        self.client_faults.with_label_values(&[reason]).inc();
    }

    /// A model's admission queue holds `depth` requests.
    pub fn queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[model])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A request admitted after waiting `waited` in `model`'s queue.
    pub fn queue_waited(&self, model: &str, waited: Duration) {
        self.queue_wait
            .with_label_values(&[model])
            .observe(waited.as_secs_f64());
    }

    /// A request refused by admission (`reason`: full, displaced, timeout).
    pub fn queue_shed(&self, model: &str, reason: &str) {
        self.queue_sheds.with_label_values(&[model, reason]).inc();
    }

    /// Counts a request refused because `endpoint` of `model` (like every other that could
    /// take it) was over its rate.
    pub fn rate_shed(&self, model: &str, endpoint: &str) {
        self.rate_sheds.with_label_values(&[model, endpoint]).inc();
    }

    /// Counts a response cut by its upstream after it started (`body`: a static label).
    pub fn midstream_failure(&self, model: &str, endpoint: &str, body: &str) {
        self.midstream_failures
            .with_label_values(&[model, endpoint, body])
            .inc();
    }

    /// Counts the tokens a response reported (`key`: the key id, `-` in open mode).
    pub fn tokens(&self, model: &str, endpoint: &str, key: &str, (prompt, completion): (u64, u64)) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            self.tokens
                .with_label_values(&[model, endpoint, key, kind])
                .inc_by(n);
        }
    }

    /// The time-to-first-token and inter-token-gap histograms of `model`'s SSE streams.
    pub fn stream_pace(&self, model: &str) -> (Histogram, Histogram) {
        (
            self.first_token.with_label_values(&[model]),
            self.token_gap.with_label_values(&[model]),
        )
    }

    /// Records a new table version (the gauge carries the version as a label) and the models
    /// whose policy its planes disagree on.
    pub fn table_applied<'a>(&self, version: &str, conflicts: impl Iterator<Item = &'a String>) {
        self.table_version.reset();
        self.table_version.with_label_values(&[version]).set(1);
        self.table_updates.inc();
        self.policy_conflicts.reset();
        for model in conflicts {
            self.policy_conflicts.with_label_values(&[model]).set(1);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Formats a status code without allocating.
fn fmt_status(status: u16, buf: &mut [u8; 3]) -> &str {
    if !(100..=999).contains(&status) {
        return "0";
    }
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("0")
}

/// At most `per_second` log lines a second (lock-free, approximate under races): for lines any
/// client can cause, so that none can flood the log. Lines held back are counted and reported
/// with the next line let through.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    start: Instant,
    second: AtomicU64,
    used: AtomicU32,
    held_back: AtomicU64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            start: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU32::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one let through)` if this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.start.elapsed().as_secs())
    }

    fn allow_at(&self, now_second: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now_second > second
            && self
                .second
                .compare_exchange(second, now_second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.request_done("demo", "e1", 200, Duration::from_millis(3));
        m.table_applied("7", [].iter());
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(text.contains(
            "multiverse_proxy_requests_total{endpoint=\"e1\",model=\"demo\",status=\"200\"} 1"
        ));
        assert!(text.contains("multiverse_proxy_table_info{version=\"7\"} 1"));
    }

    #[test]
    fn log_limit_lets_a_burst_through_per_second() {
        let limit = LogLimit::new(3);
        let first: Vec<_> = (0..5).map(|_| limit.allow_at(0)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // the next second lets three more through; the first reports the two held back
        assert_eq!(limit.allow_at(1), Some(2));
        assert_eq!(limit.allow_at(1), Some(0));
        assert_eq!(limit.allow_at(1), Some(0));
        assert_eq!(limit.allow_at(1), None);
        assert_eq!(limit.allow_at(5), Some(1));
    }

    #[test]
    fn status_formatting() {
        let mut b = itoa_buf();
        assert_eq!(fmt_status(404, &mut b), "404");
        assert_eq!(fmt_status(0, &mut b), "0");
    }
}
