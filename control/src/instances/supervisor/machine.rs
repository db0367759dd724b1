//! The supervision state machine of one instance, without I/O: [`Machine::step`] takes an
//! [`Input`] and the current time and returns the [`Action`]s to perform, in order; the status
//! and the next deadline are read off the machine afterwards. The driver performs the actions
//! and feeds the machine what happens.

use std::collections::VecDeque;
use std::time::Duration;

use multiverse_common::clock::Instant;
use multiverse_common::Backoff;

use super::{Settings, State, Status};
use crate::events::EventKind;
use crate::instances::process::ExitInfo;

/// The durations and thresholds of supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub startup_timeout: Duration,
    pub startup_interval: Duration,
    pub liveness_interval: Duration,
    pub liveness_failures: u32,
    pub drain: Duration,
    pub stop_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
}

impl From<&Settings> for Timing {
    fn from(s: &Settings) -> Self {
        Timing {
            startup_timeout: s.startup_timeout,
            startup_interval: s.startup_interval,
            liveness_interval: s.liveness_interval,
            liveness_failures: s.liveness_failures,
            drain: s.drain,
            stop_grace: s.stop_grace,
            backoff_initial: s.backoff_initial,
            backoff_max: s.backoff_max,
            crash_loop_restarts: s.crash_loop_restarts,
            crash_loop_window: s.crash_loop_window,
        }
    }
}

/// What an operator (or the manager) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Stop,
    Restart,
    Delete,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Request(Request),
    /// The [`Action::Spawn`] succeeded; `at` is the RFC 3339 time of the start.
    Spawned {
        pid: u32,
        at: String,
    },
    /// The [`Action::Spawn`] failed, and why.
    SpawnFailed(String),
    /// The process exited (and was reaped); how, when known.
    Exited(Option<ExitInfo>),
    /// The result of the [`Action::Probe`] of process life `life`.
    Probed {
        life: u64,
        result: Result<(), String>,
    },
    /// The deadline the machine set has come.
    Timer,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the process; answer [`Input::Spawned`] or [`Input::SpawnFailed`] at once.
    Spawn,
    /// SIGTERM to the process group.
    Terminate,
    /// SIGKILL to the process group: the grace period after SIGTERM ran out.
    Kill,
    /// SIGKILL to the group of a process that exited: whatever it left behind goes too.
    KillLeftovers,
    /// Probe the instance; answer [`Input::Probed`] with this `life`.
    Probe { life: u64 },
    /// A lifecycle event.
    Emit(EventKind),
    /// A line of the supervisor's own in the instance log.
    Note(String),
    /// Every stop request so far is done.
    StopsDone,
    /// The instance is deleted: nothing more will happen.
    Finished,
}

/// What to do once the process is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    /// Stay stopped (or start again, when a start was asked for meanwhile).
    Stop {
        start_after: bool,
    },
    Delete,
    /// Start again at once (a requested restart).
    Restart,
    /// Restart with backoff (liveness failures).
    Crash(String),
    /// End in `failed` (startup timeout).
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No process: pending, stopped or failed.
    Idle,
    /// [`Action::Spawn`] sent.
    Spawning,
    /// Probing until ready or `deadline`.
    Starting { deadline: Instant },
    /// Ready (no failure) or unhealthy (failures since the last success).
    Serving { failures: u32 },
    /// Pushed as DRAINING; SIGTERM when the timer fires.
    Draining { then: Then },
    /// SIGTERM sent (and SIGKILL, once `killed`); waiting for the exit.
    Stopping { then: Then, killed: bool },
    /// Waiting to restart.
    Backoff,
    /// Deleted.
    Done,
}

/// The machine.
#[derive(Debug)]
pub struct Machine {
    t: Timing,
    port: u16,
    status: Status,
    phase: Phase,
    timer: Option<Instant>,
    /// The probe of this life is out (its answer is awaited).
    probing: bool,
    /// Process lives so far; probes of an earlier life are ignored.
    life: u64,
    backoff: Backoff,
    /// When the recent unplanned restarts happened (within the crash-loop window).
    crashes: VecDeque<Instant>,
}

impl Machine {
    /// A machine for an instance on `port`, showing `state` (pending, or stopped when it
    /// should not run) until it starts.
    pub fn new(t: Timing, port: u16, state: State) -> Self {
        Machine {
            backoff: Backoff::new(t.backoff_initial, t.backoff_max),
            t,
            port,
            status: Status::new(state),
            phase: Phase::Idle,
            timer: None,
            probing: false,
            life: 0,
            crashes: VecDeque::new(),
        }
    }

    /// The status to show.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// When [`Input::Timer`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.timer
    }

    /// No process and nothing pending: stopped, failed or deleted.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Done)
    }

    /// Feeds one input.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Request(r) => self.request(r, now, &mut out),
            Input::Spawned { pid, at } => self.spawned(pid, at, now, &mut out),
            Input::SpawnFailed(error) => {
                if self.phase == Phase::Spawning {
                    self.fail(error, &mut out);
                }
            }
            Input::Exited(exit) => self.exited(exit, now, &mut out),
            Input::Probed { life, result } => {
                if life == self.life && self.probing {
                    self.probing = false;
                    self.probed(result, now, &mut out);
                }
            }
            Input::Timer => {
                if self.timer.is_some_and(|t| t <= now) {
                    self.timer = None;
                    self.timer_fired(now, &mut out);
                }
            }
        }
        out
    }

    fn set_state(&mut self, state: State) {
        self.status.state = state;
    }

    fn clear_process(&mut self) {
        self.status.pid = None;
        self.status.started = None;
        self.status.started_at = None;
    }

    /// Starts afresh (after a stop or a failure): the backoff and the crash window reset.
    fn begin(&mut self, out: &mut Vec<Action>) {
        self.backoff.reset();
        self.crashes.clear();
        self.start_life(out);
    }

    fn start_life(&mut self, out: &mut Vec<Action>) {
        self.set_state(State::Starting);
        self.phase = Phase::Spawning;
        self.timer = None;
        self.probing = false;
        out.push(Action::Spawn);
    }

    fn spawned(&mut self, pid: u32, at: String, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Spawning {
            return;
        }
        self.life += 1;
        self.status.pid = Some(pid);
        self.status.started = Some(now);
        self.status.started_at = Some(at);
        out.push(Action::Emit(EventKind::Started {
            pid,
            port: self.port,
        }));
        self.phase = Phase::Starting {
            deadline: now + self.t.startup_timeout,
        };
        self.timer = Some(now + self.t.startup_interval);
    }

    fn fail(&mut self, error: String, out: &mut Vec<Action>) {
        out.push(Action::Note(format!("failed: {error}")));
        self.status.last_error = Some(error.clone());
        self.clear_process();
        self.set_state(State::Failed);
        self.phase = Phase::Idle;
        self.timer = None;
        self.probing = false;
        out.push(Action::Emit(EventKind::Failed { error }));
    }

    fn request(&mut self, r: Request, now: Instant, out: &mut Vec<Action>) {
        let serving = match self.phase {
            Phase::Serving { failures } => Some(failures == 0),
            Phase::Starting { .. } => Some(false),
            _ => None,
        };
        match (&mut self.phase, r) {
            (Phase::Done, _) => {}
            // Nothing runs.
            (Phase::Idle, Request::Start | Request::Restart) => self.begin(out),
            (Phase::Idle, Request::Stop) => out.push(Action::StopsDone),
            (Phase::Idle, Request::Delete) => self.finish(out),
            // A process is (being) started.
            (Phase::Spawning, _) => {}
            (Phase::Starting { .. } | Phase::Serving { .. }, Request::Start) => {}
            (Phase::Starting { .. } | Phase::Serving { .. }, other) => {
                let then = match other {
                    Request::Stop => Then::Stop { start_after: false },
                    Request::Delete => Then::Delete,
                    Request::Restart | Request::Start => Then::Restart,
                };
                self.stop_process(then, serving.unwrap_or(false), now, out);
            }
            // Waiting to restart.
            (Phase::Backoff, Request::Start | Request::Restart) => self.start_life(out),
            (Phase::Backoff, Request::Stop) => {
                self.clear_process();
                self.set_state(State::Stopped);
                self.phase = Phase::Idle;
                self.timer = None;
                out.push(Action::Emit(EventKind::Stopped));
                out.push(Action::StopsDone);
            }
            (Phase::Backoff, Request::Delete) => self.finish(out),
            // Already stopping: the last request decides what follows.
            (Phase::Draining { then } | Phase::Stopping { then, .. }, r) => {
                let next = match (&*then, r) {
                    (Then::Delete, _) => None,
                    (_, Request::Delete) => Some(Then::Delete),
                    (Then::Stop { .. }, Request::Start | Request::Restart) => {
                        Some(Then::Stop { start_after: true })
                    }
                    (_, Request::Stop) => Some(Then::Stop { start_after: false }),
                    (_, Request::Start | Request::Restart) => None,
                };
                if let Some(next) = next {
                    *then = next;
                }
            }
        }
    }

    /// Stops the process: DRAINING first when it was serving (and a drain is configured).
    fn stop_process(&mut self, then: Then, drain: bool, now: Instant, out: &mut Vec<Action>) {
        self.set_state(State::Stopping);
        self.probing = false;
        if drain && !self.t.drain.is_zero() {
            self.phase = Phase::Draining { then };
            self.timer = Some(now + self.t.drain);
        } else {
            self.terminate(then, now, out);
        }
    }

    fn terminate(&mut self, then: Then, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Terminate);
        self.phase = Phase::Stopping {
            then,
            killed: false,
        };
        self.timer = Some(now + self.t.stop_grace);
    }

    fn timer_fired(&mut self, now: Instant, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            phase @ (Phase::Starting { .. } | Phase::Serving { .. }) => {
                self.phase = phase;
                self.probing = true;
                out.push(Action::Probe { life: self.life });
            }
            Phase::Draining { then } => self.terminate(then, now, out),
            Phase::Stopping {
                then,
                killed: false,
            } => {
                out.push(Action::Kill);
                self.phase = Phase::Stopping { then, killed: true };
            }
            Phase::Backoff => self.start_life(out),
            other => self.phase = other,
        }
    }

    fn probed(&mut self, result: Result<(), String>, now: Instant, out: &mut Vec<Action>) {
        match (&mut self.phase, result) {
            (Phase::Starting { .. }, Ok(())) => {
                self.set_state(State::Ready);
                out.push(Action::Emit(EventKind::Ready));
                self.phase = Phase::Serving { failures: 0 };
                self.timer = Some(now + self.t.liveness_interval);
            }
            (Phase::Starting { deadline }, Err(_)) => {
                if now >= *deadline {
                    let error = format!(
                        "not ready within the startup timeout of {:?}",
                        self.t.startup_timeout
                    );
                    self.stop_process(Then::Fail(error), false, now, out);
                } else {
                    self.timer = Some(now + self.t.startup_interval);
                }
            }
            (Phase::Serving { failures }, Ok(())) => {
                if *failures > 0 {
                    *failures = 0;
                    self.set_state(State::Ready);
                    out.push(Action::Emit(EventKind::Ready));
                }
                self.timer = Some(now + self.t.liveness_interval);
            }
            (Phase::Serving { failures }, Err(reason)) => {
                *failures += 1;
                let failures = *failures;
                if failures == 1 {
                    self.set_state(State::Unhealthy);
                    out.push(Action::Emit(EventKind::Unhealthy {
                        reason: reason.clone(),
                    }));
                }
                if failures >= self.t.liveness_failures {
                    let why = format!("liveness probe failed {failures} times: {reason}");
                    self.stop_process(Then::Crash(why), false, now, out);
                } else {
                    self.timer = Some(now + self.t.liveness_interval);
                }
            }
            _ => {}
        }
    }

    fn exited(&mut self, exit: Option<ExitInfo>, now: Instant, out: &mut Vec<Action>) {
        let when = match &self.phase {
            Phase::Starting { .. } => "during startup",
            Phase::Serving { .. } => "while serving",
            Phase::Draining { .. } | Phase::Stopping { .. } => "",
            _ => return,
        };
        let what = exit
            .as_ref()
            .map(ExitInfo::describe)
            .unwrap_or_else(|| "ended".into());
        self.status.last_exit = exit;
        self.clear_process();
        self.timer = None;
        self.probing = false;
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Draining { then } | Phase::Stopping { then, .. } => {
                out.push(Action::KillLeftovers);
                self.stopped(then, now, out);
            }
            _ => self.crashed(format!("process {what} {when}"), now, out),
        }
    }

    /// The process is gone after a stop.
    fn stopped(&mut self, then: Then, now: Instant, out: &mut Vec<Action>) {
        match then {
            Then::Stop { start_after } => {
                self.set_state(State::Stopped);
                out.push(Action::Emit(EventKind::Stopped));
                out.push(Action::StopsDone);
                if start_after {
                    self.begin(out);
                }
            }
            Then::Delete => {
                out.push(Action::Emit(EventKind::Stopped));
                self.finish(out);
            }
            Then::Restart => {
                self.status.restarts += 1;
                out.push(Action::Emit(EventKind::Restarted {
                    reason: "requested".into(),
                }));
                self.start_life(out);
            }
            Then::Crash(reason) => self.crashed(reason, now, out),
            Then::Fail(error) => self.fail(error, out),
        }
    }

    /// An unplanned end: restart with backoff, unless it is a crash loop.
    fn crashed(&mut self, reason: String, now: Instant, out: &mut Vec<Action>) {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.t.crash_loop_window)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() as u32 > self.t.crash_loop_restarts {
            let error = format!(
                "crash loop: {} restarts within {:?}; last: {reason}",
                self.crashes.len() - 1,
                self.t.crash_loop_window
            );
            return self.fail(error, out);
        }
        self.set_state(State::Restarting);
        let delay = self.backoff.next_delay();
        out.push(Action::Note(format!("{reason}; restarting in {delay:?}")));
        out.push(Action::Emit(EventKind::Restarted { reason }));
        self.status.restarts += 1;
        self.phase = Phase::Backoff;
        self.timer = Some(now + delay);
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        self.set_state(State::Stopped);
        self.phase = Phase::Done;
        self.timer = None;
        out.push(Action::Finished);
    }
}
