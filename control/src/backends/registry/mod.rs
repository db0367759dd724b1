//! The registry of backends: those declared in config and those registered through the API
//! (persisted), each with its health. Every change is signalled, so a new snapshot reaches the
//! proxies.
//!
//! API backends are persisted through the [`Store`]'s writer: a mutation changes the map and
//! sends the record to the writer under the registry's lock (so the file sees changes in the same
//! order), then awaits the save with the lock released — the fsync never happens under it. A
//! failed save puts back what the file holds and answers `STATE_WRITE_FAILED`.
//!
//! Each backend also has its probe statistics ([`ProbeStats`], per kind, fed to the Prometheus
//! probe series with `target_type="backend"`), shown on its view with their summary (success
//! rate and average response time of every probe) for the list.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiverse_common::{Health, ModelKind};
use multiverse_proto::discovery::v1 as pb;
use serde::Serialize;

use super::probe::CheckResult;
use super::BackendSpec;
use crate::changes::Changes;
use crate::events::{BackendRef, EventBus, EventKind};
use crate::health::stats::{KindStats, ProbeStats};
use crate::health::{HealthRecord, HealthSettings, Status, Transition};
use crate::metrics::ControlMetrics;
use crate::store::{BackendRecord, Probes, Revisions, SaveFailed, Saving, StateError, Store};

/// Where a backend was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

/// A backend as the API shows it (never the key).
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub models: Vec<String>,
    pub kind: String,
    pub weight: u32,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub has_api_key: bool,
    pub source: Source,
    pub created_at: String,
    pub updated_at: String,
    pub deregistered: bool,
    pub health: HealthRecord,
    /// The routing policy the backend asks for its models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::store::PolicySpec>,
    /// Requests each proxy sends it at once (absent: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Requests per second to it across all proxies (absent: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_sec: Option<u32>,
    /// The custom probes it was registered with (none: `GET /v1/models` is its readiness).
    pub probes: Option<Probes>,
    /// Every probe so far, by kind: `startup` (registration and update), `liveness`,
    /// `readiness` (each round, default or custom).
    pub probe_stats: BTreeMap<&'static str, KindStats>,
    /// Of every probe so far, 0.0-1.0 (none before the first).
    pub success_rate: Option<f64>,
    /// Average response time of every probe so far, in ms.
    pub avg_latency_ms: Option<f64>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no backend `{0}`")]
    NotFound(String),
    #[error("a backend named `{0}` already exists")]
    Exists(String),
    #[error("at most {0} backends may be registered")]
    MaxReached(usize),
    #[error("backend `{0}` is declared in the config file; change it there")]
    ConfigOwned(String),
    #[error(transparent)]
    State(#[from] StateError),
}

struct Entry {
    record: BackendRecord,
    source: Source,
    health: HealthRecord,
    stats: Arc<ProbeStats>,
}

impl Entry {
    fn view(&self) -> BackendView {
        let r = &self.record;
        let summary = self.stats.summary();
        BackendView {
            id: r.id.clone(),
            name: r.name.clone(),
            url: r.url.clone(),
            models: r.models.clone(),
            kind: r.kind.clone(),
            weight: r.weight,
            owner: r.owner.clone(),
            tags: r.tags.clone(),
            has_api_key: r.api_key.is_some(),
            source: self.source,
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            deregistered: r.deregistered,
            health: self.health.clone(),
            policy: r.policy.clone(),
            max_concurrent: r.max_concurrent,
            max_requests_per_sec: r.max_requests_per_sec,
            probes: r.probes.clone(),
            probe_stats: self.stats.snapshot(),
            success_rate: summary.success_rate,
            avg_latency_ms: summary.avg_latency_ms,
        }
    }
}

/// The map and its bookkeeping, behind one lock.
#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    revisions: Revisions,
}

/// All backends, by id.
pub struct Registry {
    inner: Mutex<Inner>,
    store: Store,
    max_backends: usize,
    /// Signalled on every change that affects routes.
    changes: Changes,
    /// Where `backend_*` events go (none in tests that do not look).
    events: Option<Arc<EventBus>>,
    /// Where probe figures go (none in tests that do not look).
    metrics: Option<Arc<ControlMetrics>>,
}

/// A new backend id.
pub fn new_id() -> String {
    let n: u64 = rand::random();
    format!("bk-{n:016x}")
}

/// A change sent to the writer: which key, which revision, the save to await.
struct Pending {
    id: String,
    rev: u64,
    saving: Saving<Option<BackendRecord>>,
}

impl Registry {
    /// Loads the persisted backends and adds the config-declared ones (id `cfg-<name>`).
    pub fn open(
        store: Store,
        changes: Changes,
        persisted: Vec<BackendRecord>,
        config: &[BackendSpec],
        max_backends: usize,
    ) -> Self {
        let now = multiverse_common::time::now_rfc3339();
        let mut entries = BTreeMap::new();
        for spec in config {
            let record = BackendRecord {
                id: format!("cfg-{}", spec.name),
                name: spec.name.clone(),
                url: spec.url.clone(),
                models: spec.models.clone(),
                kind: spec
                    .kind
                    .clone()
                    .unwrap_or_else(|| ModelKind::Chat.to_string()),
                weight: spec.weight,
                owner: String::new(),
                tags: BTreeMap::new(),
                api_key: spec.api_key.clone(),
                pinned_address: None,
                created_at: now.clone(),
                updated_at: now.clone(),
                deregistered: false,
                policy: spec.policy.clone(),
                max_concurrent: spec.max_concurrent,
                max_requests_per_sec: spec.max_requests_per_sec,
                probes: spec.probes.clone(),
            };
            entries.insert(record.id.clone(), Entry::new(record, Source::Config, None));
        }
        for record in persisted {
            if entries.values().any(|e| e.record.name == record.name) {
                tracing::warn!(backend = %record.name, "a backend in the state file has the name of a config backend; the config one is used");
                continue;
            }
            entries.insert(record.id.clone(), Entry::new(record, Source::Api, None));
        }
        Self {
            inner: Mutex::new(Inner {
                entries,
                revisions: Revisions::default(),
            }),
            store,
            max_backends,
            changes,
            events: None,
            metrics: None,
        }
    }

    /// The same registry feeding the Prometheus probe series (`target_type="backend"`).
    pub fn with_metrics(mut self, metrics: Arc<ControlMetrics>) -> Self {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        for e in inner.entries.values_mut() {
            e.stats = Arc::new(stats_for(&e.record.name, Some(&metrics)));
        }
        self.metrics = Some(metrics);
        self
    }

    /// The probe statistics of backend `id`, to record a probe into (outside the lock).
    pub fn probe_stats(&self, id: &str) -> Option<Arc<ProbeStats>> {
        self.lock().entries.get(id).map(|e| e.stats.clone())
    }

    /// Records one probe of `kind` of backend `id` (if it still exists).
    pub fn record_probe(
        &self,
        id: &str,
        kind: &'static str,
        took: Duration,
        error: Option<&String>,
    ) {
        if let Some(stats) = self.probe_stats(id) {
            stats.record(kind, took, error);
        }
    }

    /// The same registry announcing its changes on `events` (`backend_*` events).
    pub fn with_events(mut self, events: Arc<EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    fn announce(&self, record: &BackendRecord, kind: EventKind) {
        if let Some(bus) = &self.events {
            let backend = BackendRef {
                id: record.id.clone(),
                name: record.name.clone(),
            };
            bus.emit_backend(backend, kind);
        }
    }

    /// The events of a health transition: healthy or unhealthy, and a soft deregistration.
    fn announce_transition(&self, record: &BackendRecord, t: &Transition, reason: Option<String>) {
        let reason = reason.unwrap_or_else(|| "check failed".into());
        if t.from != t.to {
            match t.to {
                Status::Healthy => self.announce(record, EventKind::BackendHealthy),
                Status::Unhealthy => self.announce(
                    record,
                    EventKind::BackendUnhealthy {
                        reason: reason.clone(),
                    },
                ),
                Status::Unknown => {}
            }
        }
        if t.deregistered {
            self.announce(record, EventKind::BackendDeregistered { reason });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<BackendView> {
        self.lock().entries.values().map(Entry::view).collect()
    }

    pub fn get(&self, id: &str) -> Option<BackendView> {
        self.lock().entries.get(id).map(Entry::view)
    }

    /// The persisted record (with its key), for updates that keep unchanged fields.
    pub fn record(&self, id: &str) -> Option<BackendRecord> {
        self.lock().entries.get(id).map(|e| e.record.clone())
    }

    /// Sends the persisted form of `id` (its record, or its removal) to the writer; under the
    /// lock, so the writer sees the changes in the map's order.
    fn send(&self, inner: &mut Inner, id: &str) -> Pending {
        let rev = inner.revisions.begin(id);
        let saving = match inner.entries.get(id) {
            Some(e) => self.store.put_backend(e.record.clone()),
            None => self.store.remove_backend(id),
        };
        Pending {
            id: id.to_string(),
            rev,
            saving,
        }
    }

    /// Awaits a save (no lock held); on failure puts the file's record back into the map, unless
    /// a later change of the same backend was sent meanwhile (its outcome decides).
    async fn settle(&self, pending: Pending) -> Result<(), StateError> {
        let result = pending.saving.done().await;
        let mut inner = self.lock();
        let latest = inner.revisions.finish(&pending.id, pending.rev);
        let Err(SaveFailed { error, durable }) = result else {
            drop(inner);
            self.changes.signal();
            return Ok(());
        };
        tracing::error!(error = %error, backend = %pending.id, "could not save the state; the change was undone");
        if let (true, Some(durable)) = (latest, durable) {
            match durable {
                Some(record) => match inner.entries.get_mut(&pending.id) {
                    Some(e) => e.record = record,
                    None => {
                        let entry = Entry::new(record, Source::Api, self.metrics.as_ref());
                        inner.entries.insert(pending.id.clone(), entry);
                    }
                },
                None => {
                    inner.entries.remove(&pending.id);
                }
            }
        }
        drop(inner);
        self.changes.signal();
        Err(error)
    }

    /// Adds a checked backend; `initial` is the check that admitted it.
    pub async fn insert(
        &self,
        record: BackendRecord,
        initial: CheckResult,
        settings: &HealthSettings,
    ) -> Result<BackendView, RegistryError> {
        let (view, announced, pending) = {
            let mut inner = self.lock();
            if inner.entries.values().any(|e| e.record.name == record.name) {
                return Err(RegistryError::Exists(record.name));
            }
            if inner.entries.len() >= self.max_backends {
                return Err(RegistryError::MaxReached(self.max_backends));
            }
            let mut entry = Entry::new(record, Source::Api, self.metrics.as_ref());
            let reason = initial.reason.clone();
            let t = entry.health.record(initial, settings);
            let view = entry.view();
            let id = entry.record.id.clone();
            let announced = (entry.record.clone(), t, reason);
            inner.entries.insert(id.clone(), entry);
            (view, announced, self.send(&mut inner, &id))
        };
        self.settle(pending).await?;
        let (record, t, reason) = announced;
        self.announce(&record, EventKind::BackendRegistered);
        if let Some(t) = t {
            self.announce_transition(&record, &t, reason);
        }
        Ok(view)
    }

    /// Replaces a backend's record (same id), after a successful check.
    pub async fn update(
        &self,
        record: BackendRecord,
        check: CheckResult,
        settings: &HealthSettings,
    ) -> Result<BackendView, RegistryError> {
        let (view, announced, pending) = {
            let mut inner = self.lock();
            let id = record.id.clone();
            if inner
                .entries
                .values()
                .any(|e| e.record.name == record.name && e.record.id != id)
            {
                return Err(RegistryError::Exists(record.name));
            }
            let entry = inner
                .entries
                .get_mut(&id)
                .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
            if entry.source == Source::Config {
                return Err(RegistryError::ConfigOwned(entry.record.name.clone()));
            }
            if entry.record.name != record.name {
                // Its figures are labelled with its name.
                entry.stats = Arc::new(stats_for(&record.name, self.metrics.as_ref()));
            }
            entry.record = record;
            let reason = check.reason.clone();
            let t = entry.health.record(check, settings);
            let view = entry.view();
            let announced = (entry.record.clone(), t, reason);
            (view, announced, self.send(&mut inner, &id))
        };
        self.settle(pending).await?;
        let (record, t, reason) = announced;
        self.announce(&record, EventKind::BackendUpdated);
        if let Some(t) = t {
            self.announce_transition(&record, &t, reason);
        }
        Ok(view)
    }

    /// Removes a backend.
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let (removed, pending) = {
            let mut inner = self.lock();
            match inner.entries.get(id) {
                None => return Err(RegistryError::NotFound(id.to_string())),
                Some(e) if e.source == Source::Config => {
                    return Err(RegistryError::ConfigOwned(e.record.name.clone()))
                }
                Some(_) => {}
            }
            let removed = inner.entries.remove(id).map(|e| e.record);
            (removed, self.send(&mut inner, id))
        };
        self.settle(pending).await?;
        if let Some(record) = removed {
            self.announce(&record, EventKind::BackendDeleted);
        }
        Ok(())
    }

    /// Undoes a soft deregistration.
    pub async fn restore(&self, id: &str) -> Result<BackendView, RegistryError> {
        let (view, record, pending) = {
            let mut inner = self.lock();
            let entry = inner
                .entries
                .get_mut(id)
                .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
            entry.record.deregistered = false;
            entry.health = HealthRecord::default();
            let view = entry.view();
            let record = entry.record.clone();
            let pending = (entry.source == Source::Api).then(|| self.send(&mut inner, id));
            (view, record, pending)
        };
        match pending {
            Some(p) => self.settle(p).await?,
            None => self.changes.signal(),
        }
        self.announce(&record, EventKind::BackendRestored);
        Ok(view)
    }

    /// Backends to check this round (not deregistered).
    pub fn check_targets(&self) -> Vec<BackendRecord> {
        self.lock()
            .entries
            .values()
            .filter(|e| !e.record.deregistered)
            .map(|e| e.record.clone())
            .collect()
    }

    /// Counts a check result (a failure towards deregistration only if `deregisters`); a
    /// status change (or deregistration) is signalled for a push. A deregistration is saved in
    /// the background: a failed save is logged and the backend stays deregistered here (it is
    /// checked no more either way).
    pub fn record_check(
        &self,
        id: &str,
        result: CheckResult,
        settings: &HealthSettings,
        deregisters: bool,
    ) -> Option<Transition> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(id)?;
        let reason = result.reason.clone();
        let t = entry.health.record_counted(result, settings, deregisters)?;
        let record = entry.record.clone();
        if t.deregistered {
            entry.record.deregistered = true;
            if entry.source == Source::Api {
                let saving = self.store.put_backend(entry.record.clone());
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = saving.done().await {
                        tracing::error!(error = %e.error, backend = %id, "could not save the deregistration");
                    }
                });
            }
        }
        drop(inner);
        self.changes.signal();
        self.announce_transition(&record, &t, reason);
        Some(t)
    }

    /// What the snapshot is built from: every routable backend with its pushed health.
    pub fn routable(&self) -> Vec<(BackendRecord, pb::HealthStatus)> {
        self.lock()
            .entries
            .values()
            .filter(|e| !e.record.deregistered)
            .map(|e| {
                let health = Health::from(e.health.status);
                (e.record.clone(), health.into())
            })
            .collect()
    }
}

impl Entry {
    fn new(record: BackendRecord, source: Source, metrics: Option<&Arc<ControlMetrics>>) -> Self {
        Self {
            stats: Arc::new(stats_for(&record.name, metrics)),
            record,
            source,
            health: HealthRecord::default(),
        }
    }
}

fn stats_for(name: &str, metrics: Option<&Arc<ControlMetrics>>) -> ProbeStats {
    match metrics {
        Some(m) => ProbeStats::with_metrics(m.clone(), "backend", name),
        None => ProbeStats::default(),
    }
}

#[cfg(test)]
mod tests;
