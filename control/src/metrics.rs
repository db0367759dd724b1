//! The control plane's Prometheus metrics (`GET /metrics`).

use std::sync::Arc;

use multiverse_common::Health;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the control plane exports.
pub struct ControlMetrics {
    registry: Registry,
    checks: IntCounterVec,
    transitions: IntCounterVec,
    pub nacks: IntCounterVec,
    pub proxies_connected: IntGauge,
    /// Operator API connections closed on accept, by the limit they were over.
    api_connections_shed: IntCounterVec,
    /// Per proxy: 1 while connected.
    pub proxy_connected: IntGaugeVec,
    /// Per proxy: the snapshot version it ACKed last.
    pub proxy_acked_version: IntGaugeVec,
    pub snapshot_version: IntGauge,
    pub backends: IntGauge,
    pub gpus: crate::gpu::metrics::GpuGauges,
    pub instances: IntGaugeVec,
    /// Probe response times by target type (`instance`), target and kind.
    probe_duration: HistogramVec,
    /// Probes by target type, target, kind and result (`ok`, `failed`).
    probes: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl ControlMetrics {
    /// Counts an operator API connection closed on accept over `limit` (a static label).
    pub fn api_connection_shed(&self, limit: &str) {
        self.api_connections_shed.with_label_values(&[limit]).inc();
    }

    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("multiverse_control".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let checks = must(IntCounterVec::new(
            Opts::new("health_checks_total", "Health checks by backend and result"),
            &["backend", "result"],
        ));
        let transitions = must(IntCounterVec::new(
            Opts::new("health_transitions_total", "Health status changes"),
            &["backend", "to"],
        ));
        let nacks = must(IntCounterVec::new(
            Opts::new("nacks_total", "Snapshots rejected by proxies"),
            &["node"],
        ));
        let api_connections_shed = must(IntCounterVec::new(
            Opts::new(
                "api_connections_shed_total",
                "Operator API connections closed on accept, by the limit they were over \
                 (max_connections, max_connections_per_ip)",
            ),
            &["limit"],
        ));
        let proxies_connected = must(IntGauge::new(
            "proxies_connected",
            "Proxies with an open discovery stream",
        ));
        let proxy_connected = must(IntGaugeVec::new(
            Opts::new(
                "proxy_connected",
                "1 while the proxy's discovery stream is open",
            ),
            &["node"],
        ));
        let proxy_acked_version = must(IntGaugeVec::new(
            Opts::new(
                "proxy_acked_version",
                "The snapshot version the proxy ACKed last",
            ),
            &["node"],
        ));
        let snapshot_version = must(IntGauge::new(
            "snapshot_version",
            "Version of the snapshot being pushed",
        ));
        let backends = must(IntGauge::new("backends", "Registered backends"));
        let gpus = crate::gpu::metrics::GpuGauges::new();
        let instances = must(IntGaugeVec::new(
            Opts::new("instances", "TEI instances by status"),
            &["status"],
        ));
        let probe_duration = must(HistogramVec::new(
            HistogramOpts::new("probe_duration_seconds", "Probe response times").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["target_type", "target", "kind"],
        ));
        let probes = must(IntCounterVec::new(
            Opts::new("probes_total", "Probes by target, kind and result"),
            &["target_type", "target", "kind", "result"],
        ));
        for c in [
            Box::new(checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(probe_duration.clone()),
            Box::new(probes.clone()),
            Box::new(transitions.clone()),
            Box::new(nacks.clone()),
            Box::new(proxies_connected.clone()),
            Box::new(api_connections_shed.clone()),
            Box::new(proxy_connected.clone()),
            Box::new(proxy_acked_version.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(backends.clone()),
            Box::new(instances.clone()),
        ]
        .into_iter()
        .chain(gpus.collectors())
        {
            must(registry.register(c));
        }
        Arc::new(Self {
            registry,
            checks,
            transitions,
            nacks,
            proxies_connected,
            api_connections_shed,
            proxy_connected,
            proxy_acked_version,
            snapshot_version,
            backends,
            gpus,
            instances,
            probe_duration,
            probes,
        })
    }

    /// One probe of `target` (of `target_type`, e.g. `instance`) of `kind`.
    pub fn observe_probe(
        &self,
        target_type: &str,
        target: &str,
        kind: &str,
        took: std::time::Duration,
        ok: bool,
    ) {
        self.probe_duration
            .with_label_values(&[target_type, target, kind])
            .observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "failed" };
        self.probes
            .with_label_values(&[target_type, target, kind, result])
            .inc();
    }

    pub fn check(&self, backend: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.checks.with_label_values(&[backend, result]).inc();
    }

    pub fn transition(&self, backend: &str, to: Health) {
        let to = to.as_str();
        self.transitions.with_label_values(&[backend, to]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}
