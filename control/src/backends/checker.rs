//! Active health checking of every registered backend: each interval, every backend that is not
//! deregistered is probed — its liveness probe if it has one, then its readiness probe
//! (default `GET /v1/models`) — concurrently up to a bound and each with a timeout; an operator
//! can also force one check (`POST /admin/backends/{id}/check`). The results feed the
//! registry's thresholds ([`crate::health`]) and each probe its statistics.
//!
//! Every check of a backend with a pinned address goes to that address ([`Clients`]), never to
//! what its name resolves to now: a name that rebinds to a private or metadata address after
//! registration cannot steer the control plane's probes there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::clients::Clients;
use super::probe;
use super::registry::Registry;
use crate::health::{CheckResult, HealthRecord, HealthSettings, Status};
use crate::metrics::ControlMetrics;
use crate::store::BackendRecord;

/// Runs the checks.
pub struct Checker {
    registry: Arc<Registry>,
    clients: Arc<Clients>,
    settings: HealthSettings,
    metrics: Arc<ControlMetrics>,
}

impl Checker {
    pub fn new(
        registry: Arc<Registry>,
        clients: Arc<Clients>,
        settings: HealthSettings,
        metrics: Arc<ControlMetrics>,
    ) -> Self {
        Self {
            registry,
            clients,
            settings,
            metrics,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }

    /// Checks every backend each interval, forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.round().await;
        }
    }

    /// One round: every backend that is not deregistered, once.
    pub async fn round(&self) {
        let targets = self.registry.check_targets();
        let results: Vec<_> = futures::stream::iter(targets)
            .map(|t| async move {
                let result = self.check(&t).await;
                (t, result)
            })
            .buffer_unordered(self.settings.max_concurrent_checks.max(1))
            .collect()
            .await;
        for (target, (result, deregisters)) in results {
            self.metrics.check(&target.name, result.ok);
            let reason = result.reason.clone();
            if let Some(t) =
                self.registry
                    .record_check(&target.id, result, &self.settings, deregisters)
            {
                self.metrics.transition(&target.name, t.to.into());
                if t.to == Status::Unhealthy || t.deregistered {
                    tracing::warn!(backend = %target.name, from = ?t.from, to = ?t.to, deregistered = t.deregistered, reason = reason.as_deref().unwrap_or(""), "backend health changed");
                } else {
                    tracing::info!(backend = %target.name, from = ?t.from, to = ?t.to, "backend health changed");
                }
            }
        }
    }

    /// Checks one backend now and counts the result; `None` if there is no such backend.
    pub async fn check_now(&self, id: &str) -> Option<(CheckResult, HealthRecord)> {
        let record = self.registry.record(id)?;
        let (result, deregisters) = self.check(&record).await;
        self.registry
            .record_check(id, result.clone(), &self.settings, deregisters);
        let view = self.registry.get(id)?;
        Some((result, view.health))
    }

    /// One round's check of `record`, at its pinned address when it has one: its liveness
    /// probe (if any), then its readiness probe (custom, or `GET /v1/models`), each recorded in
    /// its probe statistics. The result is the first failure (its reason naming the probe when
    /// there is a liveness probe) or the readiness success; the flag says whether a failure
    /// counts towards deregistration (with a liveness probe, only its own failures do).
    async fn check(&self, record: &BackendRecord) -> (CheckResult, bool) {
        let client = match self
            .clients
            .for_backend(&record.url, record.pinned_address.as_deref())
        {
            Ok(client) => client,
            Err(reason) => {
                let failed = CheckResult {
                    at: multiverse_common::time::now_rfc3339(),
                    ok: false,
                    latency_ms: 0,
                    status: None,
                    reason: Some(reason),
                };
                return (failed, true);
            }
        };
        let (timeout, key) = (self.timeout(), record.api_key.as_deref());
        let probes = record.probes.as_ref();
        let liveness = probes.and_then(|p| p.liveness.as_ref());
        let started = Instant::now();
        let named = |mut r: CheckResult, kind: &str| {
            if liveness.is_some() {
                r.reason = r.reason.map(|reason| format!("{kind}: {reason}"));
            }
            r
        };
        if let Some(spec) = liveness {
            let r = probe::custom(&client, &record.url, key, spec, timeout).await;
            let took = started.elapsed();
            self.registry
                .record_probe(&record.id, "liveness", took, r.reason.as_ref());
            if !r.ok {
                return (named(r, "liveness"), true);
            }
        }
        let ready_started = Instant::now();
        let mut r = match probes.and_then(|p| p.readiness.as_ref()) {
            Some(spec) => probe::custom(&client, &record.url, key, spec, timeout).await,
            None => probe::check(&client, &record.url, key, timeout).await.0,
        };
        let took = ready_started.elapsed();
        self.registry
            .record_probe(&record.id, "readiness", took, r.reason.as_ref());
        r.latency_ms = started.elapsed().as_millis() as u64;
        (named(r, "readiness"), liveness.is_none())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backends::resolve::StaticResolver;
    use crate::changes::Changes;
    use crate::store::Store;
    use crate::testing;

    /// A backend stand-in on `addr` counting the requests it gets.
    async fn backend(addr: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let bound = testing::serve(addr, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { (200, r#"{"data":[{"id":"demo"}]}"#.to_string()) }
        })
        .await;
        (bound, hits)
    }

    /// Both the recurring and the forced check go to the address pinned at registration even
    /// though the name now resolves elsewhere (a DNS rebinding).
    #[tokio::test]
    async fn checks_go_to_the_pinned_address_not_to_what_the_name_resolves_to_now() {
        let (pinned, at_pinned) = backend("127.0.0.1:0".parse().expect("addr")).await;
        // The same port on another loopback address: where the name points now.
        let (elsewhere, at_elsewhere) = backend(SocketAddr::new(
            "127.0.0.2".parse().expect("ip"),
            pinned.port(),
        ))
        .await;
        let resolver = StaticResolver::default().with("backend.test", &[elsewhere.ip() as IpAddr]);
        let clients = Arc::new(Clients::new(Arc::new(resolver), Vec::new()).expect("clients"));

        let registry = Arc::new(Registry::open(
            Store::ephemeral(),
            Changes::new(),
            Vec::new(),
            &[],
            8,
        ));
        let mut record = BackendRecord::example("rebound");
        record.url = format!("http://backend.test:{}", pinned.port());
        record.pinned_address = Some(pinned.to_string());
        let initial = CheckResult {
            at: "t".into(),
            ok: true,
            latency_ms: 1,
            status: Some(200),
            reason: None,
        };
        let settings = HealthSettings::default();
        registry
            .insert(record, initial, &settings)
            .await
            .expect("insert");
        let checker = Checker::new(
            registry.clone(),
            clients.clone(),
            settings,
            ControlMetrics::new(),
        );

        checker.round().await;
        let (forced, health) = checker.check_now("bk-rebound").await.expect("backend");
        assert!(forced.ok, "{forced:?}");
        assert_eq!(health.history.len(), 3, "initial + recurring + forced");
        assert!(health.history.iter().all(|r| r.ok), "{:?}", health.history);
        assert_eq!(
            at_pinned.load(Ordering::SeqCst),
            2,
            "both checks at the pin"
        );
        assert_eq!(
            at_elsewhere.load(Ordering::SeqCst),
            0,
            "none where the name points"
        );

        // Without a pin, the name is resolved at check time (private backends allowed).
        let mut unpinned = BackendRecord::example("unpinned");
        unpinned.url = format!("http://backend.test:{}", pinned.port());
        let (check, _) = checker.check(&unpinned).await;
        assert!(check.ok, "{check:?}");
        assert_eq!(at_elsewhere.load(Ordering::SeqCst), 1);
    }
}
