//! The thin task around a [`Machine`]: it waits for whichever comes first — a command, the
//! process's exit, the probe's answer, the machine's deadline —, feeds it to the machine, and
//! performs the actions it returns through a [`Host`]. After each step, before its actions, it
//! publishes the status (signalling a route change when the state changed), so an event is
//! never seen before the state it announces. No decision is taken here.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use multiverse_common::clock::Instant;
use tokio::sync::{mpsc, oneshot};

use super::machine::{Action, Input, Machine, ProbeKind, Request};
use super::{Command, Shared, State};
use crate::changes::Changes;
use crate::events::{EventBus, EventKind};
use crate::instances::process::ExitInfo;

/// A probe's answer, to come.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The I/O of supervision: one process at a time, its probe and its log.
pub trait Host: Send {
    /// Starts the process; its pid (process group id), or why it could not be started.
    fn spawn(&mut self) -> Result<u32, String>;
    /// SIGTERM to the group of the current (or last) process.
    fn terminate(&mut self);
    /// SIGKILL to the group of the current (or last) process.
    fn kill(&mut self);
    /// Resolves once the current process has exited and been reaped; never while there is
    /// none. Cancel-safe: dropping it and calling again loses nothing.
    fn exited(&mut self) -> impl Future<Output = Option<ExitInfo>> + Send + '_;
    /// One probe of the instance.
    fn probe(&self, kind: ProbeKind) -> ProbeFuture;
    /// A line of the supervisor's own in the instance log.
    fn note(&self, line: &str);
    /// The instance is deleted: forget what is kept about it on disk, end its log's followers.
    fn finish(&mut self);
}

/// Where the driver reports.
pub struct Context {
    pub name: String,
    pub shared: Arc<Shared>,
    pub events: Arc<EventBus>,
    pub changes: Changes,
    /// Reads the instance's batch limits each time it becomes ready (`None`: not read).
    pub info: Option<super::info::InfoReader>,
}

/// What woke the driver.
enum Woke {
    Command(Option<Command>),
    Exited(Option<ExitInfo>),
    Probed(u64, ProbeKind, Result<(), String>),
    Timer,
}

/// Runs the machine until the instance is deleted, or the command channel closes and the
/// process is stopped. `running`: start the process at once.
pub async fn drive<H: Host>(
    mut machine: Machine,
    mut host: H,
    mut rx: mpsc::Receiver<Command>,
    ctx: Context,
    running: bool,
) {
    let mut stop_waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut delete_waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut probe: Option<(u64, ProbeKind, ProbeFuture)> = None;
    let mut closed = false;
    let mut probe_started = Instant::now();
    let mut pending: VecDeque<Input> = VecDeque::new();
    if running {
        pending.push_back(Input::Request(Request::Start));
    }
    loop {
        while let Some(input) = pending.pop_front() {
            let actions = machine.step(input, Instant::now());
            // The status first: whoever sees an event then finds the state it announces.
            publish(&ctx, &machine);
            for action in actions {
                match action {
                    Action::Spawn => pending.push_back(match host.spawn() {
                        Ok(pid) => Input::Spawned {
                            pid,
                            at: multiverse_common::time::now_rfc3339(),
                        },
                        Err(e) => Input::SpawnFailed(e),
                    }),
                    Action::Terminate => host.terminate(),
                    Action::Kill => {
                        tracing::warn!(instance = %ctx.name, pid = ?machine.status().pid, "did not stop after SIGTERM: SIGKILL");
                        host.kill();
                    }
                    Action::KillLeftovers => host.kill(),
                    Action::Probe { life, kind } => {
                        probe = Some((life, kind, host.probe(kind)));
                        probe_started = Instant::now();
                    }
                    Action::Emit(kind) => {
                        if matches!(kind, EventKind::Ready) {
                            if let Some(info) = &ctx.info {
                                info.spawn(&ctx.name, ctx.shared.clone(), ctx.changes.clone());
                            }
                        }
                        ctx.events.emit(&ctx.name, kind);
                    }
                    Action::Note(line) => host.note(&line),
                    Action::StopsDone => {
                        for w in stop_waiters.drain(..) {
                            let _ = w.send(());
                        }
                    }
                    Action::Finished => {
                        host.finish();
                        for w in stop_waiters.drain(..).chain(delete_waiters.drain(..)) {
                            let _ = w.send(());
                        }
                        return;
                    }
                }
            }
        }
        if closed && machine.is_idle() {
            return;
        }
        let deadline = machine.deadline();
        let woke = tokio::select! {
            cmd = rx.recv(), if !closed => Woke::Command(cmd),
            exit = host.exited() => Woke::Exited(exit),
            (life, kind, result) = async {
                match probe.as_mut() {
                    Some((life, kind, answer)) => (*life, *kind, answer.await),
                    None => std::future::pending().await,
                }
            }, if probe.is_some() => Woke::Probed(life, kind, result),
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Woke::Timer,
        };
        pending.push_back(match woke {
            Woke::Command(Some(Command::Start)) => Input::Request(Request::Start),
            Woke::Command(Some(Command::Restart)) => Input::Request(Request::Restart),
            Woke::Command(Some(Command::Stop(ack))) => {
                stop_waiters.push(ack);
                Input::Request(Request::Stop)
            }
            Woke::Command(Some(Command::Delete(ack))) => {
                delete_waiters.push(ack);
                Input::Request(Request::Delete)
            }
            // The manager is gone: stop, then end.
            Woke::Command(None) => {
                closed = true;
                Input::Request(Request::Stop)
            }
            Woke::Command(Some(Command::Limit(b))) => Input::LimitExceeded(b),
            Woke::Exited(exit) => Input::Exited(exit),
            Woke::Probed(life, kind, result) => {
                probe = None;
                ctx.shared.probe_stats.record(
                    kind.name(),
                    probe_started.elapsed(),
                    result.as_ref().err(),
                );
                if result.is_err()
                    && kind == ProbeKind::Liveness
                    && matches!(ctx.shared.state(), State::Ready | State::Unhealthy)
                {
                    ctx.shared
                        .liveness_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Input::Probed { life, kind, result }
            }
            Woke::Timer => Input::Timer,
        });
    }
}

/// Shows the machine's status; a state change is a route change.
fn publish(ctx: &Context, machine: &Machine) {
    let status = machine.status();
    if ctx.shared.publish(status) != status.state {
        ctx.changes.signal();
    }
}
