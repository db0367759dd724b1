//! The registry of backends: those declared in config and those registered through the API
//! (persisted), each with its health. Every change is saved (API backends) and signalled, so a
//! new snapshot reaches the proxies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use multiverse_common::{Health, ModelKind};
use multiverse_proto::discovery::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::probe::CheckResult;
use super::{parse_kind, parse_url, BackendSpec};
use crate::health::{HealthRecord, HealthSettings, Transition};
use crate::state::{StateError, Store};

/// A backend as stored (the state file's `[[backends]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRecord {
    /// Stable id, assigned at registration.
    pub id: String,
    pub name: String,
    pub url: String,
    pub models: Vec<String>,
    pub kind: String,
    pub weight: u32,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Secret: kept in the 0600 state file, never returned by the API or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The address proxies connect to when it was pinned at registration (public-only mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_address: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Softly deregistered by health checking; restorable.
    #[serde(default)]
    pub deregistered: bool,
}

impl BackendRecord {
    /// The endpoint this backend contributes to each of its models.
    pub fn endpoint(&self, health: pb::HealthStatus) -> Option<pb::Endpoint> {
        let target = parse_url(&self.url).ok()?;
        Some(pb::Endpoint {
            id: self.name.clone(),
            address: self.pinned_address.clone().unwrap_or(target.address),
            protocol: pb::Protocol::Http1 as i32,
            weight: self.weight,
            health: health as i32,
            labels: self.tags.clone().into_iter().collect(),
            source: Some(pb::EndpointSource {
                kind: pb::SourceKind::ExternalBackend as i32,
                name: self.name.clone(),
            }),
            tls: target.tls,
            host: target.host,
            path_prefix: target.path_prefix,
            upstream_api_key: self.api_key.clone().unwrap_or_default(),
        })
    }

    /// The model kind, defaulting to chat.
    pub fn kind(&self) -> pb::ModelKind {
        parse_kind(Some(&self.kind)).unwrap_or(pb::ModelKind::Chat)
    }

    #[cfg(test)]
    pub fn example(name: &str) -> Self {
        BackendRecord {
            id: format!("bk-{name}"),
            name: name.into(),
            url: "http://127.0.0.1:8000".into(),
            models: vec!["demo".into()],
            kind: "chat".into(),
            weight: 1,
            owner: "ops".into(),
            tags: BTreeMap::from([("team".into(), "a".into())]),
            api_key: Some("sk-secret".into()),
            pinned_address: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            deregistered: false,
        }
    }
}

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
}

/// What the health checker needs of a backend.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub id: String,
    pub name: String,
    pub url: String,
    pub api_key: Option<String>,
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
}

impl Entry {
    fn view(&self) -> BackendView {
        let r = &self.record;
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
        }
    }
}

/// All backends, by id.
pub struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
    state: Option<Arc<Store>>,
    max_backends: usize,
    /// Signalled on every change that affects routes.
    pub changed: Arc<Notify>,
}

/// A new backend id.
pub fn new_id() -> String {
    let n: u64 = rand::random();
    format!("bk-{n:016x}")
}

impl Registry {
    /// Loads the persisted backends and adds the config-declared ones (id `cfg-<name>`).
    pub fn open(
        state: Option<Arc<Store>>,
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
            };
            entries.insert(record.id.clone(), Entry::new(record, Source::Config));
        }
        for record in persisted {
            if entries.values().any(|e| e.record.name == record.name) {
                tracing::warn!(backend = %record.name, "a backend in the state file has the name of a config backend; the config one is used");
                continue;
            }
            entries.insert(record.id.clone(), Entry::new(record, Source::Api));
        }
        Self {
            entries: Mutex::new(entries),
            state,
            max_backends,
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<BackendView> {
        self.lock().values().map(Entry::view).collect()
    }

    pub fn get(&self, id: &str) -> Option<BackendView> {
        self.lock().get(id).map(Entry::view)
    }

    /// The persisted record (with its key), for updates that keep unchanged fields.
    pub fn record(&self, id: &str) -> Option<BackendRecord> {
        self.lock().get(id).map(|e| e.record.clone())
    }

    /// Adds a checked backend; `initial` is the check that admitted it.
    pub fn insert(
        &self,
        record: BackendRecord,
        initial: CheckResult,
        settings: &HealthSettings,
    ) -> Result<BackendView, RegistryError> {
        let mut entries = self.lock();
        if entries.values().any(|e| e.record.name == record.name) {
            return Err(RegistryError::Exists(record.name));
        }
        if entries.len() >= self.max_backends {
            return Err(RegistryError::MaxReached(self.max_backends));
        }
        let mut entry = Entry::new(record, Source::Api);
        entry.health.record(initial, settings);
        let view = entry.view();
        let id = entry.record.id.clone();
        entries.insert(id.clone(), entry);
        if let Err(e) = self.persist(&entries) {
            entries.remove(&id);
            return Err(e.into());
        }
        drop(entries);
        self.changed.notify_one();
        Ok(view)
    }

    /// Replaces a backend's record (same id), after a successful check.
    pub fn update(
        &self,
        record: BackendRecord,
        check: CheckResult,
        settings: &HealthSettings,
    ) -> Result<BackendView, RegistryError> {
        let mut entries = self.lock();
        let id = record.id.clone();
        if entries
            .values()
            .any(|e| e.record.name == record.name && e.record.id != id)
        {
            return Err(RegistryError::Exists(record.name));
        }
        let entry = entries
            .get_mut(&id)
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        if entry.source == Source::Config {
            return Err(RegistryError::ConfigOwned(entry.record.name.clone()));
        }
        let previous = std::mem::replace(&mut entry.record, record);
        entry.health.record(check, settings);
        let view = entry.view();
        if let Err(e) = self.persist(&entries) {
            if let Some(entry) = entries.get_mut(&id) {
                entry.record = previous;
            }
            return Err(e.into());
        }
        drop(entries);
        self.changed.notify_one();
        Ok(view)
    }

    /// Removes a backend.
    pub fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        match entries.get(id) {
            None => return Err(RegistryError::NotFound(id.to_string())),
            Some(e) if e.source == Source::Config => {
                return Err(RegistryError::ConfigOwned(e.record.name.clone()))
            }
            Some(_) => {}
        }
        let removed = entries.remove(id);
        if let Err(e) = self.persist(&entries) {
            if let Some(entry) = removed {
                entries.insert(id.to_string(), entry);
            }
            return Err(e.into());
        }
        drop(entries);
        self.changed.notify_one();
        Ok(())
    }

    /// Undoes a soft deregistration.
    pub fn restore(&self, id: &str) -> Result<BackendView, RegistryError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        entry.record.deregistered = false;
        entry.health = HealthRecord::default();
        let view = entry.view();
        if entry.source == Source::Api {
            self.persist(&entries)?;
        }
        drop(entries);
        self.changed.notify_one();
        Ok(view)
    }

    /// Backends to check this round (not deregistered).
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        self.lock()
            .values()
            .filter(|e| !e.record.deregistered)
            .map(|e| CheckTarget {
                id: e.record.id.clone(),
                name: e.record.name.clone(),
                url: e.record.url.clone(),
                api_key: e.record.api_key.clone(),
            })
            .collect()
    }

    /// Counts a check result; a status change (or deregistration) is signalled for a push.
    pub fn record_check(
        &self,
        id: &str,
        result: CheckResult,
        settings: &HealthSettings,
    ) -> Option<Transition> {
        let mut entries = self.lock();
        let entry = entries.get_mut(id)?;
        let t = entry.health.record(result, settings)?;
        if t.deregistered {
            entry.record.deregistered = true;
            if entry.source == Source::Api {
                if let Err(e) = self.persist(&entries) {
                    tracing::error!(error = %e, "could not save the deregistration");
                }
            }
        }
        drop(entries);
        self.changed.notify_one();
        Some(t)
    }

    /// What the snapshot is built from: every routable backend with its pushed health.
    pub fn routable(&self) -> Vec<(BackendRecord, pb::HealthStatus)> {
        self.lock()
            .values()
            .filter(|e| !e.record.deregistered)
            .map(|e| {
                let health = Health::from(e.health.status);
                (e.record.clone(), health.into())
            })
            .collect()
    }

    fn persist(&self, entries: &BTreeMap<String, Entry>) -> Result<(), StateError> {
        let Some(store) = &self.state else {
            return Ok(());
        };
        let backends = entries
            .values()
            .filter(|e| e.source == Source::Api)
            .map(|e| e.record.clone())
            .collect();
        store.update(|s| s.backends = backends)
    }
}

impl Entry {
    fn new(record: BackendRecord, source: Source) -> Self {
        Self {
            record,
            source,
            health: HealthRecord::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Status;
    use crate::state::StateFile;

    fn ok() -> CheckResult {
        CheckResult {
            at: "t".into(),
            ok: true,
            latency_ms: 1,
            status: Some(200),
            reason: None,
        }
    }

    #[test]
    fn insert_conflicts_limits_and_persistence() {
        let dir = std::env::temp_dir().join(format!("mv-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = HealthSettings::default();
        let open = |dir: &std::path::Path| {
            let (store, state) = Store::open(StateFile::new(dir)).expect("open");
            Registry::open(Some(Arc::new(store)), state.backends, &[], 2)
        };
        let reg = open(&dir);
        let a = reg
            .insert(BackendRecord::example("a"), ok(), &s)
            .expect("insert a");
        assert_eq!(a.health.status, Status::Healthy);
        assert!(a.has_api_key);
        assert!(matches!(
            reg.insert(BackendRecord::example("a"), ok(), &s),
            Err(RegistryError::Exists(_))
        ));
        reg.insert(BackendRecord::example("b"), ok(), &s)
            .expect("insert b");
        assert!(matches!(
            reg.insert(BackendRecord::example("c"), ok(), &s),
            Err(RegistryError::MaxReached(2))
        ));
        // Reopening restores both with their ids.
        let again = open(&dir);
        let ids: Vec<_> = again.list().into_iter().map(|v| v.id).collect();
        assert_eq!(ids, vec!["bk-a".to_string(), "bk-b".to_string()]);
        again.remove("bk-a").expect("remove");
        assert_eq!(again.routable().len(), 1);
    }
}
