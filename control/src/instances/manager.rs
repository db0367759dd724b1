//! The set of TEI instances of this host: create (validated and placed before anything is
//! spawned), list, start/stop/restart, delete, and their routes.
//!
//! One lock guards the instances and the names and ports of creates still in progress; it is
//! never held across I/O. A create reserves its name and ports under it, then — with the lock
//! released — checks the ports on the host, opens the log, saves the record (persist first:
//! nothing runs that is not in the state) and starts the supervisor, and only then inserts the
//! instance and drops the reservations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::logs::{self, LogSink};
use super::process::{self, RunDir};
use super::spec::{InstanceSpec, Template};
use super::supervisor::{Command, Settings, Shared, State, Status, Supervisor};
pub use super::InstanceError;
use crate::changes::Changes;
use crate::events::{EventBus, EventKind};
use crate::gpu::GpuProbe;
use crate::store::{Desired, InstanceRecord, Revisions, SaveFailed, Store};

/// Manager settings beyond supervision (`[instances]` in the config).
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    pub supervision: Settings,
    pub port_range: (u16, u16),
    pub max_instances: usize,
    pub min_free_vram_bytes: u64,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: usize,
}

/// One instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub name: String,
    pub spec: InstanceSpec,
    pub model: String,
    pub port: u16,
    pub prometheus_port: u16,
    pub desired: Desired,
    pub created_at: String,
    pub status: State,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<process::ExitInfo>,
    pub last_error: Option<String>,
    pub started_at: Option<String>,
    pub uptime_s: Option<u64>,
    /// VRAM used by the process, when NVML can tell.
    pub gpu_memory_bytes: Option<u64>,
}

struct Handle {
    record: InstanceRecord,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
}

impl Handle {
    fn view(&self, vram: Option<u64>) -> InstanceView {
        let st: Status = self.shared.snapshot();
        InstanceView {
            name: self.record.spec.name.clone(),
            model: self.record.spec.model_name().to_string(),
            spec: self.record.spec.clone(),
            port: self.record.port,
            prometheus_port: self.record.prometheus_port,
            desired: self.record.desired,
            created_at: self.record.created_at.clone(),
            status: st.state,
            pid: st.pid,
            restarts: st.restarts,
            last_exit: st.last_exit.clone(),
            last_error: st.last_error.clone(),
            started_at: st.started_at.clone(),
            uptime_s: st.uptime().map(|d| d.as_secs()),
            gpu_memory_bytes: vram,
        }
    }
}

/// The instances and the reservations of creates in progress, behind one lock.
#[derive(Default)]
pub(super) struct Inner {
    handles: BTreeMap<String, Handle>,
    /// Names of creates in progress (a second create of the same name is INSTANCE_EXISTS).
    pub(super) names: BTreeSet<String>,
    /// Ports handed to creates in progress (so concurrent creates get different ones).
    pub(super) ports: BTreeSet<u16>,
    pub(super) revisions: Revisions,
}

impl Inner {
    pub(super) fn taken_ports(&self) -> BTreeSet<u16> {
        self.handles
            .values()
            .flat_map(|h| [h.record.port, h.record.prometheus_port])
            .chain(self.ports.iter().copied())
            .collect()
    }
}

/// All instances of this host.
pub struct Manager {
    pub(super) settings: ManagerSettings,
    pub(super) supervision: Arc<Settings>,
    templates: BTreeMap<String, Template>,
    inner: Mutex<Inner>,
    store: Store,
    events: Arc<EventBus>,
    changes: Changes,
    gpus: Arc<dyn GpuProbe>,
    http: reqwest::Client,
    run_dir: RunDir,
}

/// Manager dependencies.
pub struct Deps {
    pub store: Store,
    pub events: Arc<EventBus>,
    pub changes: Changes,
    pub gpus: Arc<dyn GpuProbe>,
    pub http: reqwest::Client,
    pub run_dir: RunDir,
}

impl Manager {
    /// Restores the persisted instances (starting those that should run).
    pub fn open(
        settings: ManagerSettings,
        templates: BTreeMap<String, Template>,
        persisted: Vec<InstanceRecord>,
        deps: Deps,
    ) -> Arc<Self> {
        let killed = deps.run_dir.kill_leftovers();
        if killed > 0 {
            tracing::warn!(killed, "killed TEI processes left by an earlier run");
        }
        let manager = Arc::new(Self {
            supervision: Arc::new(settings.supervision.clone()),
            settings,
            templates,
            inner: Mutex::new(Inner::default()),
            store: deps.store,
            events: deps.events,
            changes: deps.changes,
            gpus: deps.gpus,
            http: deps.http,
            run_dir: deps.run_dir,
        });
        for record in persisted {
            let name = record.spec.name.clone();
            match manager.open_log(&name) {
                Ok(log) => {
                    let handle = manager.start_supervisor(record, log);
                    manager.lock().handles.insert(name, handle);
                }
                Err(e) => {
                    tracing::error!(instance = %name, error = %e, "cannot restore instance")
                }
            }
        }
        manager
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn templates(&self) -> &BTreeMap<String, Template> {
        &self.templates
    }

    /// The template named `name`.
    pub fn template(&self, name: &str) -> Result<&Template, InstanceError> {
        self.templates
            .get(name)
            .ok_or_else(|| InstanceError::TemplateNotFound(name.to_string()))
    }

    fn open_log(&self, name: &str) -> Result<Arc<LogSink>, InstanceError> {
        LogSink::open(
            &self.settings.log_dir,
            name,
            self.settings.log_max_bytes,
            self.settings.log_keep,
        )
        .map_err(InstanceError::LogOpen)
    }

    /// Starts the supervisor task of a record (which spawns the process if it should run).
    fn start_supervisor(&self, record: InstanceRecord, log: Arc<LogSink>) -> Handle {
        let state = match record.desired {
            Desired::Running => State::Pending,
            Desired::Stopped => State::Stopped,
        };
        let shared = Shared::new(log, state);
        let (tx, rx) = mpsc::channel(16);
        let sup = Supervisor {
            name: record.spec.name.clone(),
            spec: record.spec.clone(),
            port: record.port,
            prometheus_port: record.prometheus_port,
            settings: self.supervision.clone(),
            shared: shared.clone(),
            events: self.events.clone(),
            changes: self.changes.clone(),
            http: self.http.clone(),
            run_dir: self.run_dir.clone(),
        };
        tokio::spawn(sup.run(rx, record.desired == Desired::Running));
        Handle { record, shared, tx }
    }

    /// Validates, places and starts a new instance.
    pub async fn create(&self, spec: InstanceSpec) -> Result<InstanceView, InstanceError> {
        spec.validate()?;
        let name = spec.name.clone();
        {
            let mut inner = self.lock();
            if inner.handles.contains_key(&name) || inner.names.contains(&name) {
                return Err(InstanceError::Exists(name));
            }
            if inner.handles.len() + inner.names.len() >= self.settings.max_instances {
                return Err(InstanceError::MaxReached(self.settings.max_instances));
            }
            inner.names.insert(name.clone());
        }
        let result = self.create_reserved(spec).await;
        self.lock().names.remove(&name);
        result
    }

    /// The rest of a create, its name reserved.
    async fn create_reserved(&self, spec: InstanceSpec) -> Result<InstanceView, InstanceError> {
        if let Some(gpu) = spec.gpu_id {
            self.check_gpu(gpu).await?;
        }
        let (port, prometheus_port) = self.reserve_ports(spec.requested_port()).await?;
        let result = self.insert(spec, port, prometheus_port).await;
        self.release_ports(&[port, prometheus_port]);
        result
    }

    /// Opens the log, persists and starts a checked instance on reserved ports (no lock held
    /// until the instance is inserted).
    async fn insert(
        &self,
        spec: InstanceSpec,
        port: u16,
        prometheus_port: u16,
    ) -> Result<InstanceView, InstanceError> {
        let record = InstanceRecord {
            spec,
            port,
            prometheus_port,
            desired: Desired::Running,
            created_at: multiverse_common::time::now_rfc3339(),
        };
        let name = record.spec.name.clone();
        let log = self.open_log(&name)?;
        // Persist first: nothing runs that is not in the state.
        self.store
            .put_instance(record.clone())
            .done()
            .await
            .map_err(|e| InstanceError::State(e.error))?;
        self.events.emit(&name, EventKind::Created);
        let handle = self.start_supervisor(record, log);
        let view = handle.view(None);
        self.lock().handles.insert(name, handle);
        Ok(view)
    }

    async fn check_gpu(&self, gpu: u32) -> Result<(), InstanceError> {
        let status = crate::gpu::read(self.gpus.clone()).await;
        crate::gpu::placement::check_placement(&status, gpu, self.settings.min_free_vram_bytes)?;
        Ok(())
    }

    /// Every instance, optionally filtered by tag (`key:value`) and status name.
    pub async fn list(&self, tag: Option<&str>, status: Option<&str>) -> Vec<InstanceView> {
        let vram = self.vram().await;
        self.lock()
            .handles
            .values()
            .filter(|h| tag.is_none_or(|t| h.record.spec.has_tag(t)))
            .map(|h| {
                let pid = h.shared.snapshot().pid;
                h.view(pid.and_then(|p| vram.as_ref().and_then(|v| v.vram_by_pid(p))))
            })
            .filter(|v| status.is_none_or(|s| v.status.name() == s))
            .collect()
    }

    async fn vram(&self) -> Option<crate::gpu::GpuStatus> {
        Some(crate::gpu::read(self.gpus.clone()).await)
    }

    pub async fn get(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let vram = self.vram().await;
        let inner = self.lock();
        let h = inner.handles.get(name).ok_or_else(|| not_found(name))?;
        let pid = h.shared.snapshot().pid;
        Ok(h.view(pid.and_then(|p| vram.as_ref().and_then(|v| v.vram_by_pid(p)))))
    }

    /// The log of an instance.
    pub fn log(&self, name: &str) -> Result<Arc<logs::LogSink>, InstanceError> {
        self.lock()
            .handles
            .get(name)
            .map(|h| h.shared.log.clone())
            .ok_or_else(|| not_found(name))
    }

    /// Records the desired state (saved, with the lock released); a failed save puts back what
    /// the file holds.
    async fn set_desired(
        &self,
        name: &str,
        desired: Desired,
    ) -> Result<mpsc::Sender<Command>, InstanceError> {
        let (tx, pending) = {
            let mut guard = self.lock();
            let Inner {
                handles, revisions, ..
            } = &mut *guard;
            let h = handles.get_mut(name).ok_or_else(|| not_found(name))?;
            let before = h.record.desired;
            h.record.desired = desired;
            let pending = (before != desired).then(|| {
                (
                    revisions.begin(name),
                    self.store.put_instance(h.record.clone()),
                )
            });
            (h.tx.clone(), pending)
        };
        if let Some((rev, saving)) = pending {
            let result = saving.done().await;
            let mut guard = self.lock();
            let latest = guard.revisions.finish(name, rev);
            if let Err(SaveFailed { error, durable }) = result {
                if let (true, Some(Some(record))) = (latest, durable) {
                    if let Some(h) = guard.handles.get_mut(name) {
                        h.record = record;
                    }
                }
                return Err(error.into());
            }
        }
        Ok(tx)
    }

    pub async fn start(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Running).await?;
        let _ = tx.send(Command::Start).await;
        self.get(name).await
    }

    /// Stops (draining first); returns once the process is gone.
    pub async fn stop(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Stopped).await?;
        let (ack, done) = oneshot::channel();
        if tx.send(Command::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        self.get(name).await
    }

    pub async fn restart(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Running).await?;
        let _ = tx.send(Command::Restart).await;
        self.get(name).await
    }

    /// Stops and forgets an instance.
    pub async fn delete(&self, name: &str) -> Result<(), InstanceError> {
        let tx = {
            let inner = self.lock();
            inner
                .handles
                .get(name)
                .ok_or_else(|| not_found(name))?
                .tx
                .clone()
        };
        let (ack, done) = oneshot::channel();
        if tx.send(Command::Delete(ack)).await.is_ok() {
            let _ = done.await;
        }
        let (removed, saving) = {
            let mut inner = self.lock();
            (inner.handles.remove(name), self.store.remove_instance(name))
        };
        if let Err(e) = saving.done().await {
            tracing::error!(instance = name, error = %e.error, "deleted, but the state could not be saved");
        }
        drop(removed);
        self.events.emit(name, EventKind::Deleted);
        self.changes.signal();
        Ok(())
    }

    /// Every instance with its state, for the routes.
    pub fn routable(&self) -> Vec<(InstanceRecord, State)> {
        self.lock()
            .handles
            .values()
            .map(|h| (h.record.clone(), h.shared.snapshot().state))
            .collect()
    }

    /// The host proxies reach the instances on.
    pub fn advertise_host(&self) -> &str {
        &self.supervision.advertise_host
    }

    /// Stops every process (control-plane shutdown; the desired state is kept) and ends log
    /// followers.
    pub async fn shutdown(&self) {
        let (txs, logs): (Vec<_>, Vec<_>) = self
            .lock()
            .handles
            .values()
            .map(|h| (h.tx.clone(), h.shared.log.clone()))
            .unzip();
        let waits = txs.into_iter().map(|tx| async move {
            let (ack, done) = oneshot::channel();
            if tx.send(Command::Stop(ack)).await.is_ok() {
                let _ = done.await;
            }
        });
        futures::future::join_all(waits).await;
        for log in logs {
            log.close();
        }
    }
}

fn not_found(name: &str) -> InstanceError {
    InstanceError::NotFound(name.to_string())
}
