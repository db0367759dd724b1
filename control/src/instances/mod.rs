//! TEI instances on this host's GPUs: the set of them ([`Manager`]), what each is
//! ([`spec`]), its process ([`process`]), health probe ([`probe`]), supervisor
//! ([`supervisor`]) and log ([`logs`]).
//!
//! The manager validates a spec before anything is spawned (name, port range, port used by
//! another instance, port free on the system — checked outside any lock —, GPU id, free VRAM,
//! instance count), keeps the desired state durable, and turns ready instances into endpoints.

pub mod logs;
pub mod probe;
pub mod process;
pub mod spec;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use multiverse_proto::discovery::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::events::{EventBus, EventKind};
use crate::gpu::GpuProbe;
use crate::state::{StateError, Store};
use process::RunDir;
use spec::{InstanceSpec, Protocol, Template};
use supervisor::{Command, Settings, Shared, State, Status, Supervisor};

/// Whether an instance should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// An instance as stored in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    /// The port in use (assigned once, kept across restarts).
    pub port: u16,
    pub prometheus_port: u16,
    pub desired: Desired,
    pub created_at: String,
}

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

/// Why an instance operation failed, with its stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceError {
    pub code: &'static str,
    pub message: String,
}

impl InstanceError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StateError> for InstanceError {
    fn from(e: StateError) -> Self {
        Self::new("STATE_WRITE_FAILED", e.to_string())
    }
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

/// All instances of this host.
pub struct Manager {
    settings: ManagerSettings,
    supervision: Arc<Settings>,
    templates: BTreeMap<String, Template>,
    instances: Mutex<BTreeMap<String, Handle>>,
    /// Ports handed to creates that are still being checked (so concurrent creates differ).
    reserved: Mutex<std::collections::BTreeSet<u16>>,
    store: Option<Arc<Store>>,
    events: Arc<EventBus>,
    changed: Arc<Notify>,
    gpus: Arc<dyn GpuProbe>,
    http: reqwest::Client,
    run_dir: RunDir,
}

/// Manager dependencies.
pub struct Deps {
    pub store: Option<Arc<Store>>,
    pub events: Arc<EventBus>,
    pub changed: Arc<Notify>,
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
            instances: Mutex::new(BTreeMap::new()),
            reserved: Mutex::new(Default::default()),
            store: deps.store,
            events: deps.events,
            changed: deps.changed,
            gpus: deps.gpus,
            http: deps.http,
            run_dir: deps.run_dir,
        });
        for record in persisted {
            let name = record.spec.name.clone();
            match manager.launch(record) {
                Ok(handle) => {
                    manager.lock().insert(name, handle);
                }
                Err(e) => {
                    tracing::error!(instance = %name, error = %e.message, "cannot restore instance")
                }
            }
        }
        manager
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn templates(&self) -> &BTreeMap<String, Template> {
        &self.templates
    }

    /// Starts the supervisor of a record.
    fn launch(&self, record: InstanceRecord) -> Result<Handle, InstanceError> {
        let log = logs::LogSink::open(
            &self.settings.log_dir,
            &record.spec.name,
            self.settings.log_max_bytes,
            self.settings.log_keep,
        )
        .map_err(|e| InstanceError::new("LOG_OPEN_FAILED", format!("cannot open the log: {e}")))?;
        let shared = Shared::new(log);
        let (tx, rx) = mpsc::channel(16);
        let sup = Supervisor {
            name: record.spec.name.clone(),
            spec: record.spec.clone(),
            port: record.port,
            prometheus_port: record.prometheus_port,
            settings: self.supervision.clone(),
            shared: shared.clone(),
            events: self.events.clone(),
            changed: self.changed.clone(),
            http: self.http.clone(),
            run_dir: self.run_dir.clone(),
        };
        if record.desired == Desired::Stopped {
            shared
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state = State::Stopped;
        }
        tokio::spawn(sup.run(rx, record.desired == Desired::Running));
        Ok(Handle { record, shared, tx })
    }

    fn persist(&self, map: &BTreeMap<String, Handle>) -> Result<(), StateError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let records = map.values().map(|h| h.record.clone()).collect();
        store.update(|s| s.instances = records)
    }

    /// Validates, places and starts a new instance.
    pub async fn create(&self, spec: InstanceSpec) -> Result<InstanceView, InstanceError> {
        spec.validate()
            .map_err(|e| InstanceError::new(e.code, e.message))?;
        {
            let map = self.lock();
            if map.contains_key(&spec.name) {
                return Err(InstanceError::new(
                    "INSTANCE_EXISTS",
                    format!("an instance named `{}` already exists", spec.name),
                ));
            }
            if map.len() >= self.settings.max_instances {
                return Err(InstanceError::new(
                    "MAX_INSTANCES_REACHED",
                    format!(
                        "at most {} instances may exist",
                        self.settings.max_instances
                    ),
                ));
            }
        }
        if let Some(gpu) = spec.gpu_id {
            self.check_gpu(gpu).await?;
        }
        let (port, prometheus_port) = self.reserve_ports(spec.requested_port()).await?;
        let result = self.insert(spec, port, prometheus_port);
        self.release_ports(&[port, prometheus_port]);
        result
    }

    fn release_ports(&self, ports: &[u16]) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for p in ports {
            reserved.remove(p);
        }
    }

    /// Reserves the instance port (`wanted`, or the first free one in the range) and a
    /// prometheus port. Reservation happens under the lock, so concurrent creates never pick
    /// the same port; whether a port is free on the host is checked outside any lock.
    async fn reserve_ports(&self, wanted: Option<u16>) -> Result<(u16, u16), InstanceError> {
        let (lo, hi) = self.settings.port_range;
        let mut busy = std::collections::BTreeSet::new();
        let mut chosen: Vec<u16> = Vec::with_capacity(2);
        while chosen.len() < 2 {
            let candidate = {
                // Choosing and reserving are one step under the reservation lock (taken before
                // the instances lock, everywhere).
                let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
                let mut taken: std::collections::BTreeSet<u16> = self
                    .lock()
                    .values()
                    .flat_map(|h| [h.record.port, h.record.prometheus_port])
                    .collect();
                taken.extend(reserved.iter());
                let pick = match (chosen.is_empty(), wanted) {
                    (true, Some(p)) => {
                        if taken.contains(&p) {
                            drop(reserved);
                            return Err(InstanceError::new(
                                "PORT_CONFLICT",
                                format!("port {p} is used by another instance"),
                            ));
                        }
                        Some(p)
                    }
                    _ => (lo..=hi).find(|p| !taken.contains(p) && !busy.contains(p)),
                };
                let Some(p) = pick else {
                    drop(reserved);
                    self.release_ports(&chosen);
                    return Err(InstanceError::new(
                        "NO_FREE_PORT",
                        format!("no free port left in the range {lo}-{hi}"),
                    ));
                };
                reserved.insert(p);
                p
            };
            let host = self.supervision.hostname.clone();
            let free = tokio::task::spawn_blocking(move || port_free(&host, candidate))
                .await
                .unwrap_or(false);
            if free {
                chosen.push(candidate);
                continue;
            }
            self.release_ports(&[candidate]);
            if chosen.is_empty() && wanted.is_some() {
                return Err(InstanceError::new(
                    "PORT_IN_USE",
                    format!("port {candidate} is already in use on this host"),
                ));
            }
            busy.insert(candidate);
        }
        Ok((chosen[0], chosen[1]))
    }

    /// Persists and starts a checked instance on reserved ports.
    fn insert(
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
        let mut map = self.lock();
        // Someone may have taken the name or the last slot while we checked.
        if map.contains_key(&name) {
            return Err(InstanceError::new(
                "INSTANCE_EXISTS",
                format!("an instance named `{name}` already exists"),
            ));
        }
        if map.len() >= self.settings.max_instances {
            return Err(InstanceError::new(
                "MAX_INSTANCES_REACHED",
                format!(
                    "at most {} instances may exist",
                    self.settings.max_instances
                ),
            ));
        }
        // Persist first: nothing runs that is not in the state.
        let mut records: Vec<InstanceRecord> = map.values().map(|h| h.record.clone()).collect();
        records.push(record.clone());
        if let Some(store) = &self.store {
            store.update(|s| s.instances = records)?;
        }
        self.events.emit(&name, EventKind::Created);
        let handle = self.launch(record)?;
        let view = handle.view(None);
        map.insert(name, handle);
        Ok(view)
    }

    async fn check_gpu(&self, gpu: u32) -> Result<(), InstanceError> {
        let status = crate::gpu::read(self.gpus.clone()).await;
        crate::gpu::placement::check_placement(&status, gpu, self.settings.min_free_vram_bytes)
            .map_err(|e| InstanceError::new(e.code(), e.to_string()))
    }

    /// Every instance, optionally filtered by tag (`key:value`) and status name.
    pub async fn list(&self, tag: Option<&str>, status: Option<&str>) -> Vec<InstanceView> {
        let vram = self.vram().await;
        self.lock()
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
        let map = self.lock();
        let h = map.get(name).ok_or_else(|| not_found(name))?;
        let pid = h.shared.snapshot().pid;
        Ok(h.view(pid.and_then(|p| vram.as_ref().and_then(|v| v.vram_by_pid(p)))))
    }

    /// The log of an instance.
    pub fn log(&self, name: &str) -> Result<Arc<logs::LogSink>, InstanceError> {
        self.lock()
            .get(name)
            .map(|h| h.shared.log.clone())
            .ok_or_else(|| not_found(name))
    }

    fn set_desired(
        &self,
        name: &str,
        desired: Desired,
    ) -> Result<mpsc::Sender<Command>, InstanceError> {
        let mut map = self.lock();
        let h = map.get_mut(name).ok_or_else(|| not_found(name))?;
        let before = h.record.desired;
        h.record.desired = desired;
        let tx = h.tx.clone();
        if before != desired {
            if let Err(e) = self.persist(&map) {
                if let Some(h) = map.get_mut(name) {
                    h.record.desired = before;
                }
                return Err(e.into());
            }
        }
        Ok(tx)
    }

    pub async fn start(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Running)?;
        let _ = tx.send(Command::Start).await;
        self.get(name).await
    }

    /// Stops (draining first); returns once the process is gone.
    pub async fn stop(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Stopped)?;
        let (ack, done) = oneshot::channel();
        if tx.send(Command::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        self.get(name).await
    }

    pub async fn restart(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let tx = self.set_desired(name, Desired::Running)?;
        let _ = tx.send(Command::Restart).await;
        self.get(name).await
    }

    /// Stops and forgets an instance.
    pub async fn delete(&self, name: &str) -> Result<(), InstanceError> {
        let tx = {
            let map = self.lock();
            map.get(name).ok_or_else(|| not_found(name))?.tx.clone()
        };
        let (ack, done) = oneshot::channel();
        if tx.send(Command::Delete(ack)).await.is_ok() {
            let _ = done.await;
        }
        let mut map = self.lock();
        let removed = map.remove(name);
        if let Err(e) = self.persist(&map) {
            tracing::error!(instance = name, error = %e, "deleted, but the state could not be saved");
        }
        drop(map);
        drop(removed);
        self.events.emit(name, EventKind::Deleted);
        self.changed.notify_one();
        Ok(())
    }

    /// Endpoints of ready (or draining/unhealthy) instances, by model.
    pub fn routable(&self) -> Vec<InstanceRoute> {
        let host = &self.supervision.advertise_host;
        self.lock()
            .values()
            .filter_map(|h| {
                let health = match h.shared.snapshot().state {
                    State::Ready => pb::HealthStatus::Healthy,
                    State::Unhealthy => pb::HealthStatus::Unhealthy,
                    State::Stopping => pb::HealthStatus::Draining,
                    _ => return None,
                };
                let spec = &h.record.spec;
                Some(InstanceRoute {
                    model: spec.model_name().to_string(),
                    kind: spec.model_kind().into(),
                    endpoint: pb::Endpoint {
                        id: spec.name.clone(),
                        address: format!("{host}:{}", h.record.port),
                        protocol: match spec.protocol {
                            Protocol::Http => pb::Protocol::Http1,
                            Protocol::Grpc => pb::Protocol::Grpc,
                        } as i32,
                        weight: 1,
                        health: health as i32,
                        labels: spec.tags.clone().into_iter().collect(),
                        source: Some(pb::EndpointSource {
                            kind: pb::SourceKind::TeiInstance as i32,
                            name: spec.name.clone(),
                        }),
                        ..Default::default()
                    },
                })
            })
            .collect()
    }

    /// Stops every process (control-plane shutdown; the desired state is kept) and ends log
    /// followers.
    pub async fn shutdown(&self) {
        let txs: Vec<_> = self.lock().values().map(|h| h.tx.clone()).collect();
        let logs: Vec<_> = self.lock().values().map(|h| h.shared.log.clone()).collect();
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

/// An instance's contribution to the snapshot.
#[derive(Debug, Clone)]
pub struct InstanceRoute {
    pub model: String,
    pub kind: pb::ModelKind,
    pub endpoint: pb::Endpoint,
}

fn not_found(name: &str) -> InstanceError {
    InstanceError::new("INSTANCE_NOT_FOUND", format!("no instance `{name}`"))
}

/// Whether `port` can be bound on `host` right now.
fn port_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}
