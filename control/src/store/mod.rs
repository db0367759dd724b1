//! Durable desired state: what operators registered, kept in `<data_dir>/state.toml`.
//!
//! - [`records`] — the persisted records (backends, instances, inference keys), as the file
//!   holds them;
//! - [`file`] — loading, and the atomic save (temporary file, fsync, rename, directory fsync).
//!
//! [`Store`] is the one writer. Nothing else writes the file: an owner of records (the backend
//! registry, the instance manager) sends a [`Change`] — one record put or removed — and awaits
//! the [`Saving`] it gets back. A dedicated thread applies the changes in the order they were
//! sent to its own copy of the records and saves the file after each, so the fsync never runs
//! on a tokio worker, under a registry or instance lock, or on any path that holds a lock.
//!
//! Sending never blocks (the queue is unbounded), so an owner may send while holding its own
//! lock — which keeps the file's order of changes equal to the order of its in-memory ones — and
//! await the result after releasing it. A change whose save fails is not applied: the file keeps
//! what it had, the writer's copy too, and the sender is told, with the record as the file still
//! holds it, so it can put its memory back ([`Revisions`] says whether that is still its job).
//!
//! Batched persistence (`[state] save_interval_ms` > 0, [`Store::open_batched`]): the writer
//! ([`writer`]) acknowledges a change once it is applied to its copy and saves at most once
//! per interval — the first change after a save opens a window, the save at its end writes
//! every change of the window at once. A crash therefore loses at most the changes of the last
//! interval; [`Store::flush`] (called at shutdown) and the end of the writer save at once. A
//! failed batched save cannot be reported to the changes' senders (they were answered): it is
//! logged and retried an interval later. Snapshot-version reservations are never batched (a
//! restart must not reuse versions): they are saved at once, with whatever is pending.

pub mod file;
pub mod records;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::oneshot;

pub use file::{StateError, StateFile};
pub use records::{
    BackendRecord, BatchSizing, Desired, DesiredState, InstanceRecord, InstanceSpec, KeyRecord,
    Limits, MaxBatchTokens, PolicySpec, ProbeSpec, Probes, Protocol, Template, FORMAT_VERSION,
};

/// One change of the persisted records.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Adds or replaces the backend with this record's id.
    PutBackend(Box<BackendRecord>),
    /// Removes the backend with this id.
    RemoveBackend(String),
    /// Adds or replaces the instance with this spec's name.
    /// (Boxed: a spec with probes and limits is large.)
    PutInstance(Box<InstanceRecord>),
    /// Removes the instance with this name.
    RemoveInstance(String),
    /// Adds or replaces the inference key with this record's id.
    PutKey(Box<KeyRecord>),
    /// Removes the inference key with this id.
    RemoveKey(String),
    /// Sets the API policy of the model with this name.
    PutPolicy(String, Box<PolicySpec>),
    /// Removes the API policy of the model with this name.
    RemovePolicy(String),
    /// Raises the snapshot version floor to this (never lowers it).
    RaiseVersionFloor(u64),
}

/// The records as the writer holds them, keyed so that a change replaces exactly one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// By id (the file lists them in this order).
    pub backends: BTreeMap<String, BackendRecord>,
    /// By name.
    pub instances: BTreeMap<String, InstanceRecord>,
    /// By id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// By model name.
    pub policies: BTreeMap<String, PolicySpec>,
    pub version_floor: u64,
}

impl Records {
    fn from_state(state: DesiredState) -> Self {
        Records {
            backends: state
                .backends
                .into_iter()
                .map(|b| (b.id.clone(), b))
                .collect(),
            instances: state
                .instances
                .into_iter()
                .map(|i| (i.spec.name.clone(), i))
                .collect(),
            keys: state.keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
            policies: state.policies,
            version_floor: state.version_floor,
        }
    }

    pub(crate) fn to_state(&self) -> DesiredState {
        DesiredState {
            format: FORMAT_VERSION,
            version_floor: self.version_floor,
            backends: self.backends.values().cloned().collect(),
            instances: self.instances.values().cloned().collect(),
            keys: self.keys.values().cloned().collect(),
            policies: self.policies.clone(),
        }
    }

    pub(crate) fn apply(&mut self, change: Change) {
        match change {
            Change::PutBackend(b) => {
                self.backends.insert(b.id.clone(), *b);
            }
            Change::RemoveBackend(id) => {
                self.backends.remove(&id);
            }
            Change::PutInstance(i) => {
                self.instances.insert(i.spec.name.clone(), *i);
            }
            Change::RemoveInstance(name) => {
                self.instances.remove(&name);
            }
            Change::PutKey(k) => {
                self.keys.insert(k.id.clone(), *k);
            }
            Change::RemoveKey(id) => {
                self.keys.remove(&id);
            }
            Change::PutPolicy(model, p) => {
                self.policies.insert(model, *p);
            }
            Change::RemovePolicy(model) => {
                self.policies.remove(&model);
            }
            Change::RaiseVersionFloor(v) => self.version_floor = self.version_floor.max(v),
        }
    }
}

use writer::{Job, Reply};

/// The handle of the one writer; cheap to clone. The writer stops when every handle is gone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    path: Option<Arc<PathBuf>>,
}

/// Why a change was not saved, and what the file holds instead.
#[derive(Debug)]
pub struct SaveFailed<T> {
    pub error: StateError,
    /// The changed record as the file holds it now (`Some(None)`: not there); `None` when the
    /// writer has stopped and this is not known.
    pub durable: Option<T>,
}

/// A sent change, until the writer has saved it (or failed to).
#[must_use = "a change is only known to be saved once `done` returns"]
pub struct Saving<T> {
    rx: oneshot::Receiver<Result<(), SaveFailed<T>>>,
    path: Option<Arc<PathBuf>>,
}

impl<T> Saving<T> {
    /// Waits for the writer.
    pub async fn done(self) -> Result<(), SaveFailed<T>> {
        match self.rx.await {
            Ok(result) => result,
            Err(_) => Err(SaveFailed {
                error: StateError::Write {
                    path: self.path.as_deref().cloned().unwrap_or_default(),
                    source: std::io::Error::other("the state writer has stopped"),
                },
                durable: None,
            }),
        }
    }
}

impl Store {
    /// Loads the file (an error leaves it untouched and stops the start) and starts the writer.
    pub fn open(file: StateFile) -> Result<(Self, DesiredState), StateError> {
        Self::open_batched(file, Duration::ZERO)
    }

    /// [`open`](Self::open), saving at most once per `save_interval` (zero: after every
    /// change); see the module docs.
    pub fn open_batched(
        file: StateFile,
        save_interval: Duration,
    ) -> Result<(Self, DesiredState), StateError> {
        let state = file.load()?;
        let path = Arc::new(file.path().to_path_buf());
        let store = Self::start(
            Some(file),
            Records::from_state(state.clone()),
            save_interval,
        );
        Ok((
            Store {
                path: Some(path),
                ..store
            },
            state,
        ))
    }

    /// A store that keeps the records in memory only (for tests and tools).
    pub fn ephemeral() -> Self {
        Self::start(None, Records::default(), Duration::ZERO)
    }

    fn start(file: Option<StateFile>, records: Records, save_interval: Duration) -> Self {
        let (jobs, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer::run(file, records, rx, save_interval));
        if let Err(e) = spawned {
            // Every later save then fails with "the state writer has stopped".
            tracing::error!(error = %e, "cannot start the state writer");
        }
        Store { jobs, path: None }
    }

    /// The state file (`None` for an ephemeral store).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref().map(PathBuf::as_path)
    }

    /// Adds or replaces a backend record.
    pub fn put_backend(&self, record: BackendRecord) -> Saving<Option<BackendRecord>> {
        let id = record.id.clone();
        self.submit(Change::PutBackend(Box::new(record)), move |r| {
            r.backends.get(&id).cloned()
        })
    }

    /// Removes a backend record.
    pub fn remove_backend(&self, id: &str) -> Saving<Option<BackendRecord>> {
        let key = id.to_string();
        self.submit(Change::RemoveBackend(id.to_string()), move |r| {
            r.backends.get(&key).cloned()
        })
    }

    /// Adds or replaces an instance record.
    pub fn put_instance(&self, record: InstanceRecord) -> Saving<Option<InstanceRecord>> {
        let name = record.spec.name.clone();
        self.submit(Change::PutInstance(Box::new(record)), move |r| {
            r.instances.get(&name).cloned()
        })
    }

    /// Removes an instance record.
    pub fn remove_instance(&self, name: &str) -> Saving<Option<InstanceRecord>> {
        let key = name.to_string();
        self.submit(Change::RemoveInstance(name.to_string()), move |r| {
            r.instances.get(&key).cloned()
        })
    }

    /// Adds or replaces an inference key record.
    pub fn put_key(&self, record: KeyRecord) -> Saving<Option<KeyRecord>> {
        let id = record.id.clone();
        self.submit(Change::PutKey(Box::new(record)), move |r| {
            r.keys.get(&id).cloned()
        })
    }

    /// Removes an inference key record.
    pub fn remove_key(&self, id: &str) -> Saving<Option<KeyRecord>> {
        let key = id.to_string();
        self.submit(Change::RemoveKey(id.to_string()), move |r| {
            r.keys.get(&key).cloned()
        })
    }

    /// Sets a model's API policy.
    pub fn put_policy(&self, model: &str, policy: PolicySpec) -> Saving<Option<PolicySpec>> {
        let name = model.to_string();
        self.submit(
            Change::PutPolicy(model.to_string(), Box::new(policy)),
            move |r| r.policies.get(&name).cloned(),
        )
    }

    /// Removes a model's API policy.
    pub fn remove_policy(&self, model: &str) -> Saving<Option<PolicySpec>> {
        let name = model.to_string();
        self.submit(Change::RemovePolicy(model.to_string()), move |r| {
            r.policies.get(&name).cloned()
        })
    }

    /// Raises the snapshot version floor to `version`.
    pub fn raise_version_floor(&self, version: u64) -> Saving<u64> {
        self.submit(Change::RaiseVersionFloor(version), |r| r.version_floor)
    }

    /// Saves every change acknowledged but not saved yet (batched persistence), at once; with
    /// nothing pending (or without batching) it returns at once. Called at shutdown.
    pub async fn flush(&self) -> Result<(), StateError> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Queues `change`; `durable` extracts, on failure, what the file holds instead.
    fn submit<T: Send + 'static>(
        &self,
        change: Change,
        durable: impl FnOnce(&Records) -> T + Send + 'static,
    ) -> Saving<T> {
        let (tx, rx) = oneshot::channel();
        let reply: Reply = Box::new(move |result, records| {
            let _ = tx.send(result.map_err(|error| SaveFailed {
                error,
                durable: Some(durable(records)),
            }));
        });
        // A send error means the writer is gone: `done` reports it (the reply was dropped).
        let _ = self.jobs.send(Job::Change { change, reply });
        Saving {
            rx,
            path: self.path.clone(),
        }
    }
}

/// Which in-memory change of each key is the latest one an owner sent to the store.
///
/// An owner applies a change to its memory, sends it and, if the save fails, puts the record the
/// file holds back into memory — but only when no later change of the same key was sent
/// meanwhile: that one's outcome decides (and, if it fails too, it restores the file's record).
#[derive(Debug, Default)]
pub struct Revisions {
    next: u64,
    latest: HashMap<String, u64>,
}

impl Revisions {
    /// A change of `key` begins; returns its revision.
    pub fn begin(&mut self, key: &str) -> u64 {
        self.next += 1;
        self.latest.insert(key.to_string(), self.next);
        self.next
    }

    /// Change `rev` of `key` has its outcome; true when it is still the latest change of `key`.
    pub fn finish(&mut self, key: &str, rev: u64) -> bool {
        if self.latest.get(key) == Some(&rev) {
            self.latest.remove(key);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mv-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        d
    }

    #[tokio::test]
    async fn changes_are_saved_in_order_and_survive_a_reopen() {
        let d = dir("order");
        let (store, state) = Store::open(StateFile::new(&d)).expect("open");
        assert!(state.backends.is_empty());
        // Sent back to back, awaited later: applied in the order sent.
        let a = store.put_backend(BackendRecord::example("a"));
        let b = store.put_backend(BackendRecord::example("b"));
        let mut a2 = BackendRecord::example("a");
        a2.weight = 7;
        let a2 = store.put_backend(a2);
        let gone = store.remove_backend("bk-b");
        for s in [a, b, a2, gone] {
            s.done().await.expect("saved");
        }
        drop(store);
        let (_, state) = Store::open(StateFile::new(&d)).expect("reopen");
        assert_eq!(state.backends.len(), 1);
        assert_eq!(state.backends[0].weight, 7);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_failed_save_is_not_applied_and_reports_what_the_file_holds() {
        let d = dir("fail");
        let (store, _) = Store::open(StateFile::new(&d)).expect("open");
        store
            .put_backend(BackendRecord::example("a"))
            .done()
            .await
            .expect("saved");
        // The data directory becomes a regular file: the next save cannot even create it.
        std::fs::remove_dir_all(&d).expect("rm");
        std::fs::write(&d, "not a directory").expect("file");
        let mut changed = BackendRecord::example("a");
        changed.weight = 9;
        let err = store
            .put_backend(changed)
            .done()
            .await
            .expect_err("cannot save");
        assert!(matches!(err.error, StateError::Write { .. }), "{err:?}");
        let durable = err.durable.expect("known").expect("still in the file");
        assert_eq!(
            durable.weight, 1,
            "the file keeps the record before the change"
        );
        // Once writable again, the next change is applied to the state without the failed one.
        std::fs::remove_file(&d).expect("rm");
        store
            .put_backend(BackendRecord::example("b"))
            .done()
            .await
            .expect("saved");
        drop(store);
        let (_, state) = Store::open(StateFile::new(&d)).expect("reopen");
        let weights: Vec<_> = state
            .backends
            .iter()
            .map(|b| (b.id.as_str(), b.weight))
            .collect();
        assert_eq!(weights, [("bk-a", 1), ("bk-b", 1)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_the_latest_change_of_a_key_restores_it() {
        let mut r = Revisions::default();
        let first = r.begin("a");
        let second = r.begin("a");
        let other = r.begin("b");
        assert!(!r.finish("a", first), "a later change of `a` is pending");
        assert!(r.finish("a", second));
        assert!(r.finish("b", other));
        assert!(!r.finish("b", other), "finished once");
    }
}
