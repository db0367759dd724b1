//! One instance's supervisor: a task that owns the TEI process and walks the status machine
//!
//! ```text
//! pending → starting → ready ⇄ unhealthy → restarting → starting → …
//!                 ↘ failed (startup timeout, crash loop, cannot spawn)
//! any → stopping → stopped (stop / delete)
//! ```
//!
//! - [`machine`] decides, purely: it takes inputs (a request, the process spawned or exited, a
//!   probe result, its timer) with the current time and answers with actions (spawn, signal,
//!   probe, emit an event, write a log note, acknowledge) and a new [`Status`] and deadline.
//! - [`driver`] is the thin task around it: it waits for the next input, feeds it, and performs
//!   the actions through a [`Host`].
//! - [`host`] is the real [`Host`]: TEI processes ([`super::process`]), their log capture and
//!   pid files, and the HTTP/gRPC probes.
//!
//! The startup probe runs until the instance is ready or the startup timeout ends it in
//! `failed`. After that the liveness probe runs; one failure makes it `unhealthy` (its route is
//! withdrawn), N restart it. A process that exits by itself is noticed at once. Restarts back
//! off exponentially and K restarts within a window end in `failed`. Stopping drains first: the
//! endpoint is pushed as DRAINING, then the process gets SIGTERM, a grace period and SIGKILL.

pub mod driver;
pub mod host;
pub mod info;
pub mod machine;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiverse_common::clock::Instant;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::logs::LogSink;
use super::process::{ExitInfo, RunDir};
use super::spec::InstanceSpec;
use crate::changes::Changes;
use crate::events::EventBus;
use crate::health::stats::ProbeStats;
pub use driver::Host;

/// Supervision settings (`[instances]` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub program: String,
    pub grpc_program: String,
    /// Extra arguments for gRPC instances (e.g. `--grpc` for mock-tei).
    pub grpc_args: Vec<String>,
    /// `--hostname` passed to TEI.
    pub hostname: String,
    /// The host proxies connect to.
    pub advertise_host: String,
    pub stop_grace: Duration,
    pub drain: Duration,
    pub startup_timeout: Duration,
    pub startup_interval: Duration,
    pub liveness_interval: Duration,
    pub liveness_failures: u32,
    pub probe_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
    /// More environment variables for every instance (e.g. the simulated GPUs' directory).
    pub env: Vec<(String, String)>,
    /// The user and group instances run as (`None`: the control plane's).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Whether instances get their own cgroup (`[instances] cgroup_root`).
    pub cgroups: super::cgroup::Cgroups,
    /// `[tracing] otlp_endpoint`: passed to TEI as `--otlp-endpoint`, with the instance's
    /// name as `--otlp-service-name`.
    pub otlp_endpoint: Option<String>,
}

/// What an instance's TEI reports of its batch limits (`/info`); 0: not known (yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_client_batch_size: u32,
    pub max_batch_tokens: u32,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Starting,
    Ready,
    Unhealthy,
    Restarting,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unhealthy => "unhealthy",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// What the API shows of a running supervisor.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    pub last_error: Option<String>,
    /// RFC 3339 start of the current process.
    pub started_at: Option<String>,
    #[serde(skip)]
    pub started: Option<Instant>,
}

impl Status {
    pub fn new(state: State) -> Self {
        Status {
            state,
            pid: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            started_at: None,
            started: None,
        }
    }

    pub fn uptime(&self) -> Option<Duration> {
        self.started.map(|s| s.elapsed())
    }
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum Command {
    Start,
    /// Answered once the process is gone.
    Stop(oneshot::Sender<()>),
    Restart,
    /// Answered once the process is gone and the supervisor has ended.
    Delete(oneshot::Sender<()>),
    /// The limits watcher found a limit exceeded.
    Limit(machine::Breach),
}

/// What the supervisor shares with the manager.
pub struct Shared {
    status: Mutex<Status>,
    pub log: Arc<LogSink>,
    /// Liveness probes that failed (probes of a ready or unhealthy instance; the startup
    /// probe's failures while it loads are expected and not counted), since the control plane
    /// started.
    pub liveness_failures: AtomicU64,
    /// Per probe kind.
    pub probe_stats: ProbeStats,
    /// [`BatchLimits`] packed (client batch size high, tokens low), read from `/info`.
    batch_limits: AtomicU64,
}

impl Shared {
    pub fn new(log: Arc<LogSink>, state: State) -> Arc<Self> {
        Self::with_stats(log, state, ProbeStats::default())
    }

    pub fn with_stats(log: Arc<LogSink>, state: State, probe_stats: ProbeStats) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(Status::new(state)),
            log,
            liveness_failures: AtomicU64::new(0),
            probe_stats,
            batch_limits: AtomicU64::new(0),
        })
    }

    /// The batch limits read from the instance's `/info` (zeros before a read succeeded).
    pub fn batch_limits(&self) -> BatchLimits {
        let v = self.batch_limits.load(Ordering::Relaxed);
        BatchLimits {
            max_client_batch_size: (v >> 32) as u32,
            max_batch_tokens: v as u32,
        }
    }

    /// Stores `limits`; whether they differ from what was known.
    pub fn set_batch_limits(&self, limits: BatchLimits) -> bool {
        let v =
            (u64::from(limits.max_client_batch_size) << 32) | u64::from(limits.max_batch_tokens);
        self.batch_limits.swap(v, Ordering::Relaxed) != v
    }

    /// The current state (without copying the rest of the status).
    pub fn state(&self) -> State {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the status; returns the state it had.
    fn publish(&self, status: &Status) -> State {
        let mut current = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let before = current.state;
        current.clone_from(status);
        before
    }
}

/// Everything one instance's supervisor needs.
pub struct Supervisor {
    pub name: String,
    pub spec: InstanceSpec,
    pub port: u16,
    pub prometheus_port: u16,
    pub settings: Arc<Settings>,
    pub shared: Arc<Shared>,
    pub events: Arc<EventBus>,
    pub changes: Changes,
    pub http: reqwest::Client,
    pub run_dir: RunDir,
}

impl Supervisor {
    /// Runs until the instance is deleted (or the manager is gone and the process stopped).
    pub async fn run(self, rx: mpsc::Receiver<Command>, running: bool) {
        let machine = machine::Machine::new(
            machine::Timing::from(self.settings.as_ref()),
            self.port,
            self.shared.snapshot().state,
        )
        .with_readiness(
            self.spec
                .probes
                .as_ref()
                .is_some_and(|p| p.readiness.is_some()),
        );
        let launch = host::TeiHost::launch(
            &self.name,
            &self.spec,
            self.port,
            self.prometheus_port,
            &self.settings,
            &self.run_dir,
        );
        let info = info::InfoReader {
            http: self.http.clone(),
            protocol: self.spec.protocol,
            host: self.settings.advertise_host.clone(),
            port: self.port,
            timeout: self.settings.probe_timeout,
        };
        let probe = host::ProbeTarget {
            http: self.http,
            protocol: self.spec.protocol,
            host: self.settings.advertise_host.clone(),
            port: self.port,
            timeout: self.settings.probe_timeout,
            custom: self.spec.probes.clone().unwrap_or_default(),
        };
        let host = host::TeiHost::new(
            &self.name,
            launch,
            probe,
            self.shared.log.clone(),
            self.run_dir,
        );
        let ctx = driver::Context {
            name: self.name,
            shared: self.shared,
            events: self.events,
            changes: self.changes,
            info: Some(info),
        };
        driver::drive(machine, host, rx, ctx, running).await;
    }
}
