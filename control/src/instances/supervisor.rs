//! One instance's supervisor: a task that owns the TEI process and walks the status machine
//!
//! ```text
//! pending → starting → ready ⇄ unhealthy → restarting → starting → …
//!                 ↘ failed (startup timeout, crash loop, cannot spawn)
//! any → stopping → stopped (stop / delete)
//! ```
//!
//! The startup probe runs until the instance is ready or the startup timeout ends it in
//! `failed`. After that the liveness probe runs; one failure makes it `unhealthy` (its route is
//! withdrawn), N restart it. A process that exits by itself is noticed at once. Restarts back
//! off exponentially and K restarts within a window end in `failed`. Stopping drains first: the
//! endpoint is pushed as DRAINING, then the process gets SIGTERM, a grace period and SIGKILL.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiverse_common::Backoff;
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use super::logs::{self, LogSink};
use super::probe::probe;
use super::process::{self, ExitInfo, RunDir};
use super::spec::{command_line, InstanceSpec, Protocol};
use crate::changes::Changes;
use crate::events::{EventBus, EventKind};

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
    pub fn uptime(&self) -> Option<Duration> {
        self.started.map(|s| s.elapsed())
    }
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum Command {
    Start,
    Stop(oneshot::Sender<()>),
    Restart,
    Delete(oneshot::Sender<()>),
}

/// What the supervisor shares with the manager.
pub struct Shared {
    pub status: Mutex<Status>,
    pub log: Arc<LogSink>,
}

impl Shared {
    pub fn new(log: Arc<LogSink>) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(Status {
                state: State::Pending,
                pid: None,
                restarts: 0,
                last_exit: None,
                last_error: None,
                started_at: None,
                started: None,
            }),
            log,
        })
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// How one process life ended.
enum Outcome {
    Stopped(Option<oneshot::Sender<()>>),
    Deleted(oneshot::Sender<()>),
    Restart,
    Crashed(String),
    StartupTimeout(String),
    SpawnFailed(String),
}

/// A command that interrupted a process life.
enum Interrupt {
    Stop(Option<oneshot::Sender<()>>),
    Delete(oneshot::Sender<()>),
    Restart,
}

/// The supervisor task of one instance.
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
    fn set_state(&self, state: State) {
        let before = self.shared.snapshot().state;
        self.shared.update(|s| s.state = state);
        if before != state {
            self.changes.signal();
        }
    }

    /// Runs until the instance is deleted.
    pub async fn run(self, mut rx: mpsc::Receiver<Command>, mut running: bool) {
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        loop {
            if !running {
                match rx.recv().await {
                    Some(Command::Start | Command::Restart) => {
                        running = true;
                        backoff.reset();
                        restarts.clear();
                    }
                    Some(Command::Stop(ack)) => {
                        let _ = ack.send(());
                    }
                    Some(Command::Delete(ack)) => return self.finish(ack),
                    None => return,
                }
                continue;
            }
            let outcome = self.life(&mut rx).await;
            let reason = match outcome {
                Outcome::Stopped(ack) => {
                    running = false;
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    continue;
                }
                Outcome::Deleted(ack) => return self.finish(ack),
                Outcome::Restart => {
                    self.shared.update(|s| s.restarts += 1);
                    self.events.emit(
                        &self.name,
                        EventKind::Restarted {
                            reason: "requested".into(),
                        },
                    );
                    continue;
                }
                Outcome::StartupTimeout(e) | Outcome::SpawnFailed(e) => {
                    self.fail(e);
                    running = false;
                    continue;
                }
                Outcome::Crashed(reason) => reason,
            };
            // An unplanned end: restart with backoff, unless it is a crash loop.
            let now = Instant::now();
            restarts.push_back(now);
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.settings.crash_loop_window)
            {
                restarts.pop_front();
            }
            if restarts.len() as u32 > self.settings.crash_loop_restarts {
                self.fail(format!(
                    "crash loop: {} restarts within {:?}; last: {reason}",
                    restarts.len() - 1,
                    self.settings.crash_loop_window
                ));
                running = false;
                continue;
            }
            self.set_state(State::Restarting);
            let delay = backoff.next_delay();
            self.shared
                .log
                .note(&format!("[multiverse] {reason}; restarting in {delay:?}"));
            self.events
                .emit(&self.name, EventKind::Restarted { reason });
            self.shared.update(|s| s.restarts += 1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop(ack)) => {
                        self.stopped();
                        let _ = ack.send(());
                        running = false;
                    }
                    Some(Command::Delete(ack)) => return self.finish(ack),
                    Some(Command::Start | Command::Restart) => {}
                    None => return,
                },
            }
        }
    }

    fn fail(&self, error: String) {
        self.shared
            .log
            .note(&format!("[multiverse] failed: {error}"));
        self.shared.update(|s| {
            s.last_error = Some(error.clone());
            s.pid = None;
            s.started = None;
            s.started_at = None;
        });
        self.set_state(State::Failed);
        self.events.emit(&self.name, EventKind::Failed { error });
    }

    fn stopped(&self) {
        self.shared.update(|s| {
            s.pid = None;
            s.started = None;
            s.started_at = None;
        });
        self.set_state(State::Stopped);
        self.events.emit(&self.name, EventKind::Stopped);
    }

    fn finish(&self, ack: oneshot::Sender<()>) {
        self.set_state(State::Stopped);
        self.run_dir.forget(&self.name);
        self.shared.log.close();
        let _ = ack.send(());
    }

    /// One process life: spawn, startup probe, liveness probe, until it ends.
    async fn life(&self, rx: &mut mpsc::Receiver<Command>) -> Outcome {
        let s = self.settings.clone();
        let (program, proto_args): (&str, &[String]) = match self.spec.protocol {
            Protocol::Http => (&s.program, &[]),
            Protocol::Grpc => (&s.grpc_program, &s.grpc_args),
        };
        let socket = self.run_dir.socket(&self.name);
        let launch = command_line(
            &self.spec,
            program,
            proto_args,
            &s.hostname,
            self.port,
            self.prometheus_port,
            &socket.display().to_string(),
        );
        self.set_state(State::Starting);
        let mut child = match process::spawn(&launch) {
            Ok(c) => c,
            Err(e) => return Outcome::SpawnFailed(format!("cannot start `{program}`: {e}")),
        };
        let pid = child.id().unwrap_or(0);
        self.run_dir.record(&self.name, pid);
        // The note goes first: the child's output waits in its pipes until captured.
        self.shared.log.note(&format!(
            "[multiverse] started pid {pid}: {program} {}",
            launch.args.join(" ")
        ));
        if let Some(out) = child.stdout.take() {
            logs::capture(out, logs::Stream::Stdout, self.shared.log.clone());
        }
        if let Some(err) = child.stderr.take() {
            logs::capture(err, logs::Stream::Stderr, self.shared.log.clone());
        }
        self.shared.update(|st| {
            st.pid = Some(pid);
            st.started = Some(Instant::now());
            st.started_at = Some(multiverse_common::time::now_rfc3339());
        });
        self.events.emit(
            &self.name,
            EventKind::Started {
                pid,
                port: self.port,
            },
        );

        // Startup: probe until ready; the process may exit or a command may come meanwhile.
        let deadline = Instant::now() + s.startup_timeout;
        loop {
            let check = async {
                tokio::time::sleep(s.startup_interval).await;
                self.probe().await
            };
            tokio::select! {
                status = child.wait() => return self.exited(status, "during startup"),
                cmd = rx.recv() => if let Some(i) = interrupt(cmd) {
                    return self.interrupted(&mut child, i, false).await;
                },
                result = check => {
                    if result.is_ok() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        self.end(&mut child, false).await;
                        return Outcome::StartupTimeout(format!(
                            "not ready within the startup timeout of {:?}",
                            s.startup_timeout
                        ));
                    }
                }
            }
        }
        self.set_state(State::Ready);
        self.events.emit(&self.name, EventKind::Ready);

        // Liveness: one failure withdraws the route, N restart the process.
        let mut failures = 0;
        loop {
            let check = async {
                tokio::time::sleep(s.liveness_interval).await;
                self.probe().await
            };
            tokio::select! {
                status = child.wait() => return self.exited(status, "while serving"),
                cmd = rx.recv() => if let Some(i) = interrupt(cmd) {
                    let healthy = failures == 0;
                    return self.interrupted(&mut child, i, healthy).await;
                },
                result = check => match result {
                    Ok(()) => {
                        if failures > 0 {
                            failures = 0;
                            self.set_state(State::Ready);
                            self.events.emit(&self.name, EventKind::Ready);
                        }
                    }
                    Err(reason) => {
                        failures += 1;
                        if failures == 1 {
                            self.set_state(State::Unhealthy);
                            self.events.emit(&self.name, EventKind::Unhealthy { reason: reason.clone() });
                        }
                        if failures >= s.liveness_failures {
                            self.end(&mut child, false).await;
                            return Outcome::Crashed(format!(
                                "liveness probe failed {failures} times: {reason}"
                            ));
                        }
                    }
                }
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        probe(
            &self.http,
            self.spec.protocol,
            &self.settings.advertise_host,
            self.port,
            self.settings.probe_timeout,
        )
        .await
    }

    fn exited(&self, status: std::io::Result<std::process::ExitStatus>, when: &str) -> Outcome {
        let exit = status.ok().map(ExitInfo::from_status);
        let what = exit
            .as_ref()
            .map(ExitInfo::describe)
            .unwrap_or_else(|| "ended".into());
        self.run_dir.forget(&self.name);
        self.shared.update(|st| {
            st.last_exit = exit.clone();
            st.pid = None;
            st.started = None;
            st.started_at = None;
        });
        Outcome::Crashed(format!("process {what} {when}"))
    }

    /// Stops the process: DRAINING first when it was serving, then SIGTERM → SIGKILL.
    async fn end(&self, child: &mut Child, drain: bool) {
        self.set_state(State::Stopping);
        if drain && !self.settings.drain.is_zero() {
            tokio::time::sleep(self.settings.drain).await;
        }
        let exit = process::stop(child, self.settings.stop_grace).await;
        self.run_dir.forget(&self.name);
        self.shared.update(|st| {
            st.last_exit = exit;
            st.pid = None;
            st.started = None;
            st.started_at = None;
        });
    }

    async fn interrupted(&self, child: &mut Child, i: Interrupt, serving: bool) -> Outcome {
        match i {
            Interrupt::Stop(ack) => {
                self.end(child, serving).await;
                self.set_state(State::Stopped);
                self.events.emit(&self.name, EventKind::Stopped);
                Outcome::Stopped(ack)
            }
            Interrupt::Delete(ack) => {
                self.end(child, serving).await;
                self.events.emit(&self.name, EventKind::Stopped);
                Outcome::Deleted(ack)
            }
            Interrupt::Restart => {
                self.end(child, serving).await;
                Outcome::Restart
            }
        }
    }
}

/// Commands that end a process life (`Start` while running is a no-op).
fn interrupt(cmd: Option<Command>) -> Option<Interrupt> {
    match cmd {
        Some(Command::Start) => None,
        Some(Command::Stop(ack)) => Some(Interrupt::Stop(Some(ack))),
        Some(Command::Restart) => Some(Interrupt::Restart),
        Some(Command::Delete(ack)) => Some(Interrupt::Delete(ack)),
        // The manager is gone: stop.
        None => Some(Interrupt::Stop(None)),
    }
}
