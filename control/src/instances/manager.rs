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
use super::spec::{InstanceSpec, MaxBatchTokens, Protocol, Template};
use super::supervisor::{BatchLimits, Command, Settings, Shared, State, Status, Supervisor};
use super::traffic::{self, Traffic};
pub use super::InstanceError;
use crate::changes::Changes;
use crate::events::{EventBus, EventKind};
use crate::gpu::{free_after_placed, GpuProbe};
use crate::health::stats::{KindStats, ProbeStats};
use crate::store::{BatchSizing, Desired, InstanceRecord, Revisions, SaveFailed, Store};

/// Manager settings beyond supervision (`[instances]` in the config).
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    pub supervision: Settings,
    pub port_range: (u16, u16),
    pub max_instances: usize,
    pub min_free_vram_bytes: u64,
    pub placement: crate::gpu::PlacementMode,
    /// How often `[limits]` are checked.
    pub limits_interval: std::time::Duration,
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
    /// VRAM used by the instance's processes (its process group), when NVML can tell.
    pub gpu_memory_bytes: Option<u64>,
    /// Its GPU and its processes' share of it (`None` without a GPU and without VRAM).
    pub gpu: Option<InstanceGpu>,
    /// Liveness probes that failed since the control plane started.
    pub liveness_failures: u64,
    /// Said when it was created (an overcommitting placement let through by `[gpu] placement =
    /// "warn"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Probe statistics by kind (`startup`, `liveness`, `readiness`), since the control plane
    /// started.
    pub probes: BTreeMap<&'static str, KindStats>,
    /// What `max_batch_tokens = "auto"` was sized to (`tokens`), for which GPU, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_sizing: Option<BatchSizing>,
    /// With `max_cpu_percent` or `max_memory_mb`: whether its own cgroup enforces them
    /// (`cpu_max`, `memory_max`, `path`), or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<super::cgroup::CgroupView>,
}

/// A placement's warning and, for `max_batch_tokens = "auto"`, its sizing and warning.
type PlaceOutcome = (Option<String>, Option<(BatchSizing, Option<String>)>);

/// An instance's GPU: the device's figures and what the instance's processes use of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceGpu {
    /// NVML index (the instance's `gpu_id`; else the GPU its processes were found on).
    pub id: u32,
    /// `None` when the GPU is not (or no longer) reported.
    pub name: Option<String>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// The pids of the instance's process group that NVML lists on this GPU.
    pub process_pids: Vec<u32>,
    /// Their VRAM on this GPU.
    pub process_memory_bytes: Option<u64>,
}

/// GPUs now and the members of each instance's process group, for the views.
pub(super) struct GpuUsage {
    status: crate::gpu::GpuStatus,
    groups: std::collections::HashMap<u32, Vec<u32>>,
}

impl GpuUsage {
    /// What the group of `pgid` uses: its VRAM over all GPUs, and its GPU's figures.
    pub(super) fn of(
        &self,
        gpu_id: Option<u32>,
        pgid: Option<u32>,
    ) -> (Option<u64>, Option<InstanceGpu>) {
        let members: &[u32] = pgid
            .and_then(|p| self.groups.get(&p))
            .map_or(&[], Vec::as_slice);
        let mine = |g: &crate::gpu::GpuStat| -> Vec<(u32, Option<u64>)> {
            g.processes
                .iter()
                .filter(|p| members.contains(&p.pid))
                .map(|p| (p.pid, p.used_memory_bytes))
                .collect()
        };
        let total: Option<u64> = self
            .status
            .gpus
            .iter()
            .flat_map(&mine)
            .filter_map(|(_, b)| b)
            .reduce(u64::saturating_add);
        let id = gpu_id.or_else(|| {
            self.status
                .gpus
                .iter()
                .find(|g| !mine(g).is_empty())
                .map(|g| g.index)
        });
        let gpu = id.map(|id| match self.status.gpu(id) {
            Some(g) => {
                let procs = mine(g);
                InstanceGpu {
                    id,
                    name: Some(g.name.clone()),
                    memory_used_bytes: g.memory_used_bytes,
                    memory_total_bytes: g.memory_total_bytes,
                    utilization_percent: g.utilization_percent,
                    temperature_c: g.temperature_c,
                    process_memory_bytes: procs
                        .iter()
                        .filter_map(|(_, b)| *b)
                        .reduce(u64::saturating_add),
                    process_pids: procs.into_iter().map(|(p, _)| p).collect(),
                }
            }
            None => InstanceGpu {
                id,
                name: None,
                memory_used_bytes: None,
                memory_total_bytes: None,
                utilization_percent: None,
                temperature_c: None,
                process_pids: Vec::new(),
                process_memory_bytes: None,
            },
        });
        (total, gpu)
    }
}

/// `GET /instances/{name}/gpu-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct GpuStats {
    pub instance: String,
    pub nvml: crate::gpu::NvmlState,
    /// Why NVML is unavailable.
    pub reason: Option<String>,
    /// The GPU it was placed on (`None`: all visible, no `CUDA_VISIBLE_DEVICES`).
    pub gpu_id: Option<u32>,
    /// Its process group.
    pub pid: Option<u32>,
    /// VRAM of its processes over all GPUs.
    pub gpu_memory_bytes: Option<u64>,
    pub gpu: Option<InstanceGpu>,
}

struct Handle {
    record: InstanceRecord,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    /// How its cgroup limits are enforced (fixed for its record).
    cgroup: Option<super::cgroup::CgroupView>,
}

impl Handle {
    fn view(&self, usage: Option<&GpuUsage>) -> InstanceView {
        let st: Status = self.shared.snapshot();
        let (vram, gpu) = usage.map_or((None, None), |u| u.of(self.record.spec.gpu_id, st.pid));
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
            gpu,
            warnings: Vec::new(),
            probes: self.shared.probe_stats.snapshot(),
            batch_sizing: self.record.batch_sizing.clone(),
            cgroup: self.cgroup.clone(),
            liveness_failures: self
                .shared
                .liveness_failures
                .load(std::sync::atomic::Ordering::Relaxed),
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
    /// GPUs (and VRAM estimates) of creates in progress, by name (so concurrent creates see
    /// each other's placement).
    gpus: BTreeMap<String, crate::gpu::Placed>,
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
    metrics: Arc<crate::metrics::ControlMetrics>,
}

/// Manager dependencies.
pub struct Deps {
    pub metrics: Arc<crate::metrics::ControlMetrics>,
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
            metrics: deps.metrics,
        });
        tokio::spawn(super::limits::watch(
            Arc::downgrade(&manager),
            manager.settings.limits_interval,
        ));
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
        let shared = Shared::with_stats(
            log,
            state,
            ProbeStats::with_metrics(self.metrics.clone(), "instance", &record.spec.name),
        );
        let (tx, rx) = mpsc::channel(16);
        // The process is launched with what "auto" was sized to at create time.
        let mut spec = record.spec.clone();
        if let (Some(MaxBatchTokens::Auto), Some(s)) = (spec.max_batch_tokens, &record.batch_sizing)
        {
            spec.max_batch_tokens = Some(MaxBatchTokens::Tokens(s.tokens));
        }
        let sup = Supervisor {
            name: record.spec.name.clone(),
            spec,
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
        let cgroup = self
            .supervision
            .cgroups
            .view(&record.spec.name, record.spec.limits.as_ref());
        Handle {
            record,
            shared,
            tx,
            cgroup,
        }
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
        let mut inner = self.lock();
        inner.names.remove(&name);
        inner.gpus.remove(&name);
        result
    }

    /// The rest of a create, its name reserved.
    async fn create_reserved(&self, mut spec: InstanceSpec) -> Result<InstanceView, InstanceError> {
        let (warning, sizing) = self.place(&mut spec).await?;
        let (port, prometheus_port) = self.reserve_ports(spec.requested_port()).await?;
        let (sizing, sizing_warning) = sizing.unzip();
        let result = self.insert(spec, port, prometheus_port, sizing).await;
        self.release_ports(&[port, prometheus_port]);
        let mut view = result?;
        let cgroup_warning = self.supervision.cgroups.warning(view.spec.limits.as_ref());
        for w in [warning, sizing_warning.flatten(), cgroup_warning]
            .into_iter()
            .flatten()
        {
            tracing::warn!(instance = %view.name, "{w}");
            if let Ok(log) = self.log(&view.name) {
                log.note(&w);
            }
            view.warnings.push(w);
        }
        Ok(view)
    }

    /// Checks the spec's GPU, or chooses one ([`crate::gpu::placement`]), and reserves its
    /// estimate for the create in progress; returns the warning of an overcommitting placement
    /// that `[gpu] placement = "warn"` let through, and for `max_batch_tokens = "auto"` its
    /// sizing from that GPU's free VRAM ([`crate::gpu::batch_tokens`]) with its own warning.
    async fn place(&self, spec: &mut InstanceSpec) -> Result<PlaceOutcome, InstanceError> {
        const MIB: u64 = 1024 * 1024;
        let usage = self.gpu_usage().await;
        let estimate_bytes = spec.vram_mb.unwrap_or(0).saturating_mul(MIB);
        let need = estimate_bytes.max(self.settings.min_free_vram_bytes);
        let mut inner = self.lock();
        let mut placed: Vec<crate::gpu::Placed> = inner
            .handles
            .values()
            .filter_map(|h| {
                let gpu_id = h.record.spec.gpu_id?;
                let (used, _) = usage.of(Some(gpu_id), h.shared.snapshot().pid);
                Some(crate::gpu::Placed {
                    gpu_id,
                    estimate_bytes: h.record.spec.vram_mb.unwrap_or(0).saturating_mul(MIB),
                    used_bytes: used.unwrap_or(0),
                })
            })
            .collect();
        placed.extend(inner.gpus.values().copied());
        let p = crate::gpu::place(
            &usage.status,
            spec.gpu_id,
            need,
            &placed,
            self.settings.placement,
        )?;
        let sizing = (spec.max_batch_tokens == Some(MaxBatchTokens::Auto)).then(|| {
            let gpu = p.gpu_id.map(|id| {
                let free = usage
                    .status
                    .gpu(id)
                    .and_then(|g| free_after_placed(g, &placed));
                (id, free)
            });
            crate::gpu::batch_tokens::size(gpu, estimate_bytes)
        });
        if let Some(gpu_id) = p.gpu_id {
            spec.gpu_id = Some(gpu_id);
            inner.gpus.insert(
                spec.name.clone(),
                crate::gpu::Placed {
                    gpu_id,
                    estimate_bytes,
                    used_bytes: 0,
                },
            );
        }
        Ok((p.warning, sizing))
    }

    /// Opens the log, persists and starts a checked instance on reserved ports (no lock held
    /// until the instance is inserted).
    async fn insert(
        &self,
        spec: InstanceSpec,
        port: u16,
        prometheus_port: u16,
        batch_sizing: Option<BatchSizing>,
    ) -> Result<InstanceView, InstanceError> {
        let record = InstanceRecord {
            spec,
            port,
            prometheus_port,
            desired: Desired::Running,
            created_at: multiverse_common::time::now_rfc3339(),
            batch_sizing,
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

    /// Every instance, optionally filtered by tag (`key:value`) and status name.
    pub async fn list(&self, tag: Option<&str>, status: Option<&str>) -> Vec<InstanceView> {
        let usage = self.gpu_usage().await;
        self.lock()
            .handles
            .values()
            .filter(|h| tag.is_none_or(|t| h.record.spec.has_tag(t)))
            .map(|h| h.view(Some(&usage)))
            .filter(|v| status.is_none_or(|s| v.status.name() == s))
            .collect()
    }

    /// The GPUs now and the members of every instance's process group (on blocking threads:
    /// NVML calls and `/proc` reads).
    pub(super) async fn gpu_usage(&self) -> GpuUsage {
        let pgids: Vec<u32> = self
            .lock()
            .handles
            .values()
            .filter_map(|h| h.shared.snapshot().pid)
            .collect();
        let status = crate::gpu::read(self.gpus.clone()).await;
        let groups = tokio::task::spawn_blocking(move || process::group_members(&pgids))
            .await
            .unwrap_or_default();
        GpuUsage { status, groups }
    }

    pub async fn get(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let usage = self.gpu_usage().await;
        let inner = self.lock();
        let h = inner.handles.get(name).ok_or_else(|| not_found(name))?;
        Ok(h.view(Some(&usage)))
    }

    /// `GET /instances/{name}/gpu-stats`: the instance's GPU and its processes' VRAM, with
    /// whether (and why not) NVML is available.
    pub async fn gpu_stats(&self, name: &str) -> Result<GpuStats, InstanceError> {
        let usage = self.gpu_usage().await;
        let v = {
            let inner = self.lock();
            let h = inner.handles.get(name).ok_or_else(|| not_found(name))?;
            h.view(Some(&usage))
        };
        Ok(GpuStats {
            instance: v.name,
            nvml: usage.status.nvml,
            reason: usage.status.reason,
            gpu_id: v.spec.gpu_id,
            pid: v.pid,
            gpu_memory_bytes: v.gpu_memory_bytes,
            gpu: v.gpu,
        })
    }

    /// What each instance with a live process says of its traffic (its TEI metrics), read
    /// concurrently, each within the probe timeout; an instance that cannot be read is left
    /// out (and logged at debug).
    pub async fn traffic(&self) -> BTreeMap<String, Traffic> {
        let host = self.supervision.advertise_host.clone();
        let targets: Vec<(String, String)> = self
            .lock()
            .handles
            .values()
            .filter(|h| matches!(h.shared.state(), State::Ready | State::Unhealthy))
            .map(|h| {
                let port = match h.record.spec.protocol {
                    Protocol::Http => h.record.port,
                    Protocol::Grpc => h.record.prometheus_port,
                };
                (
                    h.record.spec.name.clone(),
                    format!("http://{host}:{port}/metrics"),
                )
            })
            .collect();
        let timeout = self.supervision.probe_timeout;
        let reads = targets.into_iter().map(|(name, url)| async move {
            match traffic::scrape(&self.http, &url, timeout).await {
                Ok(t) => Some((name, t)),
                Err(e) => {
                    tracing::debug!(instance = %name, error = %e, "no traffic figures");
                    None
                }
            }
        });
        futures::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The instances with limits and a live process (for the limits watcher).
    pub(super) fn limited(&self) -> Vec<super::limits::Limited> {
        self.lock()
            .handles
            .values()
            .filter_map(|h| {
                // The proxies enforce max_requests_per_sec; only the measured limits count.
                let limits = h
                    .record
                    .spec
                    .limits
                    .clone()
                    .filter(|l| l.max_memory_mb.is_some() || l.max_vram_mb.is_some())?;
                let pid = h.shared.snapshot().pid?;
                Some(super::limits::Limited {
                    pid,
                    gpu_id: h.record.spec.gpu_id,
                    limits,
                    tx: h.tx.clone(),
                })
            })
            .collect()
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

    /// Stops and forgets an instance; its log files are deleted too unless `keep_logs` (a
    /// failure to delete them is logged: the instance is gone either way).
    pub async fn delete(&self, name: &str, keep_logs: bool) -> Result<(), InstanceError> {
        let (tx, log) = {
            let inner = self.lock();
            let h = inner.handles.get(name).ok_or_else(|| not_found(name))?;
            (h.tx.clone(), h.shared.log.clone())
        };
        let (ack, done) = oneshot::channel();
        if tx.send(Command::Delete(ack)).await.is_ok() {
            let _ = done.await;
        }
        // The process is gone. The files go while the name is still taken, so a create of the
        // same name cannot open a log that is then deleted under it.
        if !keep_logs {
            match tokio::task::spawn_blocking(move || log.remove_files()).await {
                Ok(Ok(n)) => tracing::debug!(instance = name, files = n, "log files removed"),
                Ok(Err(e)) => {
                    tracing::warn!(instance = name, error = %e, "deleting the instance, but its log files could not be removed")
                }
                Err(e) => tracing::warn!(instance = name, error = %e, "log removal did not finish"),
            }
        }
        // Its cgroup too (empty now: its processes have exited).
        if let super::cgroup::Cgroups::Writable(root) = &self.supervision.cgroups {
            let dir = super::cgroup::dir(root, name);
            match tokio::task::spawn_blocking(move || super::cgroup::remove(&dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(instance = name, error = %e, "deleting the instance, but its cgroup could not be removed")
                }
                Err(e) => {
                    tracing::warn!(instance = name, error = %e, "cgroup removal did not finish")
                }
            }
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
    pub fn routable(&self) -> Vec<(InstanceRecord, State, BatchLimits)> {
        self.lock()
            .handles
            .values()
            .map(|h| {
                (
                    h.record.clone(),
                    h.shared.snapshot().state,
                    h.shared.batch_limits(),
                )
            })
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
