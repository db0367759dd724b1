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

/// Which check a probe is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Until ready.
    Startup,
    /// Once ready: failures restart.
    Liveness,
    /// Once ready, after a passing liveness probe (only when configured): failures withdraw
    /// the route.
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
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
        kind: ProbeKind,
        result: Result<(), String>,
    },
    /// The deadline the machine set has come.
    Timer,
    /// The limits watcher found a `[limits]` value exceeded by process `pid`.
    LimitExceeded(Breach),
}

/// A limit exceeded by one process (group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// The process (group leader) it was measured on; another one's breach is ignored.
    pub pid: u32,
    /// `max_memory_mb` or `max_vram_mb`.
    pub limit: &'static str,
    pub used_mb: u64,
    pub max_mb: u64,
    /// Restart the process (else: warn, once per process and limit).
    pub restart: bool,
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
    /// Probe the instance; answer [`Input::Probed`] with this `life` and `kind`.
    Probe { life: u64, kind: ProbeKind },
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
    /// Limits already warned about for this process.
    warned: Vec<&'static str>,
    /// A readiness probe is configured.
    readiness: bool,
    /// The last readiness probe failed (the route is withdrawn until one passes).
    not_ready: bool,
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
            warned: Vec::new(),
            readiness: false,
            not_ready: false,
        }
    }

    /// With a readiness probe after each passing liveness probe.
    pub fn with_readiness(mut self, readiness: bool) -> Self {
        self.readiness = readiness;
        self
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
            Input::Probed { life, kind, result } => {
                if life == self.life && self.probing {
                    self.probing = false;
                    if kind == ProbeKind::Readiness {
                        self.readied(result, now, &mut out);
                    } else {
                        self.probed(result, now, &mut out);
                    }
                }
            }
            Input::Timer => {
                if self.timer.is_some_and(|t| t <= now) {
                    self.timer = None;
                    self.timer_fired(now, &mut out);
                }
            }
            Input::LimitExceeded(b) => self.limit_exceeded(b, now, &mut out),
        }
        out
    }

    /// A limit exceeded by the current process (starting or serving): the event, then a
    /// restart (with backoff, as a crash) or a warning once per process and limit.
    fn limit_exceeded(&mut self, b: Breach, now: Instant, out: &mut Vec<Action>) {
        let current = matches!(self.phase, Phase::Starting { .. } | Phase::Serving { .. });
        if !current || self.status.pid != Some(b.pid) {
            return;
        }
        if !b.restart && self.warned.contains(&b.limit) {
            return;
        }
        let reason = format!(
            "{} exceeded: {} MiB used, {} MiB allowed",
            b.limit, b.used_mb, b.max_mb
        );
        out.push(Action::Emit(EventKind::LimitExceeded {
            limit: b.limit.to_string(),
            used_mb: b.used_mb,
            max_mb: b.max_mb,
            action: if b.restart { "restart" } else { "warn" }.to_string(),
        }));
        if b.restart {
            self.status.last_error = Some(reason.clone());
            let serving = matches!(self.phase, Phase::Serving { failures: 0 });
            self.stop_process(Then::Crash(reason), serving, now, out);
        } else {
            self.warned.push(b.limit);
            out.push(Action::Note(format!("warning: {reason}")));
        }
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
        self.warned.clear();
        self.not_ready = false;
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
                let kind = if matches!(phase, Phase::Starting { .. }) {
                    ProbeKind::Startup
                } else {
                    ProbeKind::Liveness
                };
                self.phase = phase;
                self.probing = true;
                out.push(Action::Probe {
                    life: self.life,
                    kind,
                });
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
                let recovered = *failures > 0;
                *failures = 0;
                if self.readiness {
                    // Readiness decides whether it is ready; it is probed at once.
                    self.probing = true;
                    out.push(Action::Probe {
                        life: self.life,
                        kind: ProbeKind::Readiness,
                    });
                    return;
                }
                if recovered {
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

    /// A readiness probe's answer (serving, liveness passing): ready or withdrawn, never a
    /// restart.
    fn readied(&mut self, result: Result<(), String>, now: Instant, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Serving { failures: 0 }) {
            return;
        }
        match result {
            Ok(()) => {
                if self.not_ready || self.status.state != State::Ready {
                    self.not_ready = false;
                    self.set_state(State::Ready);
                    out.push(Action::Emit(EventKind::Ready));
                }
            }
            Err(reason) => {
                if !self.not_ready || self.status.state != State::Unhealthy {
                    self.not_ready = true;
                    self.set_state(State::Unhealthy);
                    out.push(Action::Emit(EventKind::Unhealthy {
                        reason: format!("readiness probe failed: {reason}"),
                    }));
                }
            }
        }
        self.timer = Some(now + self.t.liveness_interval);
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

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn timing() -> Timing {
        let s = Duration::from_secs(1);
        Timing {
            startup_timeout: 60 * s,
            startup_interval: s,
            liveness_interval: 5 * s,
            liveness_failures: 3,
            drain: 2 * s,
            stop_grace: 10 * s,
            backoff_initial: s,
            backoff_max: 60 * s,
            crash_loop_restarts: 5,
            crash_loop_window: 300 * s,
        }
    }

    fn breach(pid: u32, limit: &'static str, restart: bool) -> Input {
        Input::LimitExceeded(Breach {
            pid,
            limit,
            used_mb: 300,
            max_mb: 200,
            restart,
        })
    }

    fn events(actions: &[Action]) -> Vec<&EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// A machine with process `pid` ready.
    fn ready(pid: u32, now: Instant) -> Machine {
        let mut m = Machine::new(timing(), 8080, State::Pending);
        m.step(Input::Request(Request::Start), now);
        m.step(
            Input::Spawned {
                pid,
                at: "t".into(),
            },
            now,
        );
        let t = m.deadline().expect("a probe timer");
        m.step(Input::Timer, t);
        m.step(
            Input::Probed {
                life: 1,
                kind: ProbeKind::Startup,
                result: Ok(()),
            },
            t,
        );
        assert_eq!(m.status().state, State::Ready);
        m
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_withdraws_and_restores_without_a_restart() {
        let now = Instant::now();
        let mut m = ready(7, now).with_readiness(true);
        let probe = |m: &mut Machine, kind, result, at| {
            m.step(
                Input::Probed {
                    life: 1,
                    kind,
                    result,
                },
                at,
            )
        };
        let t = m.deadline().expect("liveness timer");
        assert_eq!(
            m.step(Input::Timer, t),
            [Action::Probe {
                life: 1,
                kind: ProbeKind::Liveness
            }]
        );
        // Liveness passes: readiness is asked at once.
        assert_eq!(
            probe(&mut m, ProbeKind::Liveness, Ok(()), t),
            [Action::Probe {
                life: 1,
                kind: ProbeKind::Readiness
            }]
        );
        let out = probe(&mut m, ProbeKind::Readiness, Err("503".into()), t);
        assert!(
            matches!(&events(&out)[..], [EventKind::Unhealthy { reason }] if reason.contains("readiness probe failed: 503")),
            "{out:?}"
        );
        assert_eq!(m.status().state, State::Unhealthy);
        // Failing again and again: no restart, no repeated event.
        for _ in 0..5 {
            let t = m.deadline().expect("timer");
            m.step(Input::Timer, t);
            probe(&mut m, ProbeKind::Liveness, Ok(()), t);
            assert!(events(&probe(&mut m, ProbeKind::Readiness, Err("503".into()), t)).is_empty());
        }
        assert_eq!(
            (m.status().state, m.status().restarts),
            (State::Unhealthy, 0)
        );
        let t = m.deadline().expect("timer");
        m.step(Input::Timer, t);
        probe(&mut m, ProbeKind::Liveness, Ok(()), t);
        let out = probe(&mut m, ProbeKind::Readiness, Ok(()), t);
        assert_eq!(events(&out), [&EventKind::Ready]);
        assert_eq!(m.status().state, State::Ready);
        // Liveness failing still restarts (after 3).
        for i in 0..3 {
            let t = m.deadline().expect("timer");
            m.step(Input::Timer, t);
            let out = probe(&mut m, ProbeKind::Liveness, Err("down".into()), t);
            if i == 2 {
                assert_eq!(m.status().state, State::Stopping, "{out:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_limit_is_said_once_per_process() {
        let now = Instant::now();
        let mut m = ready(7, now);
        let out = m.step(breach(7, "max_vram_mb", false), now);
        assert_eq!(
            events(&out),
            [&EventKind::LimitExceeded {
                limit: "max_vram_mb".into(),
                used_mb: 300,
                max_mb: 200,
                action: "warn".into()
            }]
        );
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Note(n) if n.contains("max_vram_mb exceeded"))));
        assert!(
            m.step(breach(7, "max_vram_mb", false), now).is_empty(),
            "once"
        );
        assert_eq!(m.status().state, State::Ready, "no restart");
        assert!(
            m.step(breach(8, "max_memory_mb", true), now).is_empty(),
            "another process"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarting_limit_drains_stops_and_restarts_with_backoff() {
        let now = Instant::now();
        let mut m = ready(7, now);
        let out = m.step(breach(7, "max_memory_mb", true), now);
        assert!(matches!(
            events(&out)[..],
            [EventKind::LimitExceeded { action, .. }] if action == "restart"
        ));
        assert_eq!(m.status().state, State::Stopping);
        assert!(m
            .status()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("max_memory_mb exceeded: 300 MiB used, 200 MiB allowed")));
        // Drained first (it was serving), then SIGTERM.
        let drained = m.deadline().expect("drain timer");
        assert_eq!(drained, now + Duration::from_secs(2));
        assert_eq!(m.step(Input::Timer, drained), [Action::Terminate]);
        let out = m.step(Input::Exited(None), drained);
        let restarted = events(&out);
        assert!(
            matches!(restarted[..], [EventKind::Restarted { reason }] if reason.contains("max_memory_mb")),
            "{out:?}"
        );
        assert_eq!(m.status().state, State::Restarting);
        assert_eq!(m.status().restarts, 1);
        // A new process may warn again.
        let t = m.deadline().expect("backoff");
        assert_eq!(m.step(Input::Timer, t), [Action::Spawn]);
        m.step(
            Input::Spawned {
                pid: 9,
                at: "t".into(),
            },
            t,
        );
        assert_eq!(events(&m.step(breach(9, "max_vram_mb", false), t)).len(), 1);
    }
}
