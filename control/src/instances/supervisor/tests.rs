//! The supervisor (machine and driver) on tokio's paused time, with a scripted [`Host`]: time
//! only moves when every task waits, so each delay is checked to the instant.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiverse_common::clock::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::driver::{drive, Context, Host, ProbeFuture};
use super::machine::{Machine, Timing};
use super::{Command, Shared, State};
use crate::changes::Changes;
use crate::events::{Event, EventBus};
use crate::instances::logs::test_util::TempDir;
use crate::instances::logs::LogSink;
use crate::instances::process::ExitInfo;

const S: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        startup_timeout: 60 * S,
        startup_interval: S,
        liveness_interval: 5 * S,
        liveness_failures: 3,
        drain: 2 * S,
        stop_grace: 10 * S,
        backoff_initial: S,
        backoff_max: 60 * S,
        crash_loop_restarts: 5,
        crash_loop_window: 300 * S,
    }
}

/// A signal the fake process got, and whether it was still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Term,
    Kill { alive: bool },
}

/// What the fake host was asked to do, and when.
#[derive(Default)]
struct Record {
    spawns: Vec<Instant>,
    signals: Vec<(Instant, Sig)>,
    notes: Vec<String>,
    finished: bool,
}

/// Probe answer for (process life from 1, probe number within that life from 0).
type Script = Arc<dyn Fn(u32, u32) -> Result<(), String> + Send + Sync>;

/// A process that does what the test says.
struct Fake {
    record: Arc<Mutex<Record>>,
    /// Each process exits with code 2 as soon as it is started.
    crashes_at_once: bool,
    ignores_sigterm: bool,
    probes: Script,
    lives: u32,
    probes_this_life: Arc<AtomicU32>,
    exit_tx: Option<oneshot::Sender<ExitInfo>>,
    exit_rx: Option<oneshot::Receiver<ExitInfo>>,
}

impl Fake {
    fn new(probes: impl Fn(u32, u32) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Fake {
            record: Arc::default(),
            crashes_at_once: false,
            ignores_sigterm: false,
            probes: Arc::new(probes),
            lives: 0,
            probes_this_life: Arc::default(),
            exit_tx: None,
            exit_rx: None,
        }
    }

    fn exit(&mut self, info: ExitInfo) {
        if let Some(tx) = self.exit_tx.take() {
            let _ = tx.send(info);
        }
    }
}

fn code(c: i32) -> ExitInfo {
    ExitInfo {
        code: Some(c),
        signal: None,
    }
}

fn signal(s: i32) -> ExitInfo {
    ExitInfo {
        code: None,
        signal: Some(s),
    }
}

impl Host for Fake {
    fn spawn(&mut self) -> Result<u32, String> {
        self.lives += 1;
        self.probes_this_life.store(0, Ordering::SeqCst);
        self.record.lock().unwrap().spawns.push(Instant::now());
        let (tx, rx) = oneshot::channel();
        self.exit_tx = Some(tx);
        self.exit_rx = Some(rx);
        if self.crashes_at_once {
            self.exit(code(2));
        }
        Ok(1000 + self.lives)
    }

    fn terminate(&mut self) {
        self.record
            .lock()
            .unwrap()
            .signals
            .push((Instant::now(), Sig::Term));
        if !self.ignores_sigterm {
            self.exit(signal(15));
        }
    }

    fn kill(&mut self) {
        let alive = self.exit_tx.is_some();
        self.record
            .lock()
            .unwrap()
            .signals
            .push((Instant::now(), Sig::Kill { alive }));
        self.exit(signal(9));
    }

    async fn exited(&mut self) -> Option<ExitInfo> {
        let Some(rx) = self.exit_rx.as_mut() else {
            return std::future::pending().await;
        };
        let exit = rx.await.ok();
        self.exit_rx = None;
        exit
    }

    fn probe(&self, _kind: super::machine::ProbeKind) -> ProbeFuture {
        let n = self.probes_this_life.fetch_add(1, Ordering::SeqCst);
        let result = (self.probes)(self.lives, n);
        Box::pin(async move { result })
    }

    fn note(&self, line: &str) {
        self.record.lock().unwrap().notes.push(line.to_string());
    }

    fn finish(&mut self) {
        self.record.lock().unwrap().finished = true;
    }
}

/// A supervisor under test.
struct Run {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    events: broadcast::Receiver<Event>,
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Run {
    fn start(tag: &str, timing: Timing, fake: Fake) -> Run {
        let record = fake.record.clone();
        Self::start_with(tag, timing, fake, record)
    }

    fn start_with(
        tag: &str,
        timing: Timing,
        host: impl Host + 'static,
        record: Arc<Mutex<Record>>,
    ) -> Run {
        let dir = TempDir::new(tag);
        let log = LogSink::open(&dir.0, "inst", 0, 1).expect("log");
        let shared = Shared::new(log, State::Pending);
        let bus = EventBus::new();
        let events = bus.subscribe();
        let (tx, rx) = mpsc::channel(16);
        let ctx = Context {
            name: "inst".into(),
            shared: shared.clone(),
            events: bus,
            changes: Changes::new(),
            info: None,
        };
        let machine = Machine::new(timing, 8080, State::Pending);
        let task = tokio::spawn(drive(machine, host, rx, ctx, true));
        Run {
            tx,
            shared,
            events,
            record,
            task,
            _dir: dir,
        }
    }

    /// The events up to and including the next one of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(86_400), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no `{kind}` event within a (paused) day: {seen:?}"))
                .expect("bus open");
            let done = e.kind.name() == kind;
            seen.push(e);
            assert!(seen.len() < 100, "no `{kind}` in the first 100 events");
            if done {
                return seen;
            }
        }
    }

    fn spawns(&self) -> Vec<Instant> {
        self.record.lock().unwrap().spawns.clone()
    }

    fn signals(&self) -> Vec<(Instant, Sig)> {
        self.record.lock().unwrap().signals.clone()
    }

    async fn send(&self, cmd: Command) {
        self.tx.send(cmd).await.expect("supervisor running");
    }
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_ends_in_failed_after_backoffs_that_double() {
    let mut fake = Fake::new(|_, _| Ok(()));
    fake.crashes_at_once = true;
    let t = Timing {
        crash_loop_restarts: 3,
        ..timing()
    };
    let mut run = Run::start("crash-loop", t, fake);
    let events = run.until("failed").await;
    assert_eq!(
        names(&events),
        [
            "started",
            "restarted",
            "started",
            "restarted",
            "started",
            "restarted",
            "started",
            "failed"
        ]
    );
    assert_eq!(gaps(&run.spawns()), [S, 2 * S, 4 * S], "1 s, then doubling");
    let status = run.shared.snapshot();
    assert_eq!(status.state, State::Failed);
    assert_eq!(status.restarts, 3);
    assert_eq!(status.last_exit, Some(code(2)));
    assert!(status.pid.is_none());
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.starts_with("crash loop: 3 restarts within 300s; last: process exited with code 2"),
        "{error}"
    );
    // Failed stays failed: no more starts, however long.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(run.spawns().len(), 4);
    assert_eq!(run.shared.snapshot().state, State::Failed);
}

#[tokio::test(start_paused = true)]
async fn backoff_keeps_growing_while_serving_and_resets_on_a_start() {
    // Ready every time; the test kills the process (as `kill -9` would).
    let fake = Fake::new(|_, _| Ok(()));
    let exits = Arc::new(Mutex::new(None::<oneshot::Sender<ExitInfo>>));
    let t = Timing {
        crash_loop_restarts: 2,
        ..timing()
    };
    // The driver owns the fake; the test reaches its process through a wrapper.
    let record = fake.record.clone();
    let mut run = Run::start_with("backoff", t, Killable(fake, exits.clone()), record);
    let kill = || {
        let tx = exits.lock().unwrap().take().expect("a process");
        let _ = tx.send(signal(9));
    };
    run.until("ready").await;
    kill();
    run.until("ready").await;
    kill();
    run.until("ready").await;
    let spawns = run.spawns();
    // Each restart waits longer although the instance was ready in between.
    assert_eq!(
        gaps(&spawns),
        [S + S, 2 * S + S],
        "backoff, then the 1 s startup probe"
    );
    kill();
    let events = run.until("failed").await;
    assert_eq!(
        names(&events),
        ["failed"],
        "the third crash within the window"
    );
    // A start begins afresh: at once, then 1 s after the next crash, and with a new window.
    let before = Instant::now();
    run.send(Command::Start).await;
    run.until("ready").await;
    assert_eq!(*run.spawns().last().expect("spawned"), before);
    kill();
    run.until("ready").await;
    let spawns = run.spawns();
    assert_eq!(
        spawns[4] - spawns[3],
        S + S,
        "the backoff starts again from 1 s"
    );
    assert_eq!(run.shared.snapshot().state, State::Ready);
}

/// A [`Fake`] whose current process the test can end.
struct Killable(Fake, Arc<Mutex<Option<oneshot::Sender<ExitInfo>>>>);

impl Host for Killable {
    fn spawn(&mut self) -> Result<u32, String> {
        let pid = self.0.spawn()?;
        *self.1.lock().unwrap() = self.0.exit_tx.take();
        Ok(pid)
    }
    fn terminate(&mut self) {
        self.0.terminate();
    }
    fn kill(&mut self) {
        self.0.kill();
    }
    async fn exited(&mut self) -> Option<ExitInfo> {
        self.0.exited().await
    }
    fn probe(&self, kind: super::machine::ProbeKind) -> ProbeFuture {
        self.0.probe(kind)
    }
    fn note(&self, line: &str) {
        self.0.note(line);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}

#[tokio::test(start_paused = true)]
async fn liveness_failures_make_it_unhealthy_then_restart_it() {
    // The first process answers its startup probe, then never again; the second is fine.
    let fake = Fake::new(|life, n| match (life, n) {
        (1, 0) => Ok(()),
        (1, _) => Err("/health timed out after 2s".into()),
        _ => Ok(()),
    });
    let mut run = Run::start("liveness", timing(), fake);
    let t0 = Instant::now();
    let events = run.until("unhealthy").await;
    assert_eq!(names(&events), ["started", "ready", "unhealthy"]);
    assert_eq!(
        Instant::now() - t0,
        6 * S,
        "ready at 1 s, first liveness probe 5 s later"
    );
    assert_eq!(run.shared.snapshot().state, State::Unhealthy);
    let events = run.until("ready").await;
    assert_eq!(names(&events), ["restarted", "started", "ready"]);
    let reason = match &events[0].kind {
        crate::events::EventKind::Restarted { reason } => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason,
        "liveness probe failed 3 times: /health timed out after 2s"
    );
    // Three failures 5 s apart: SIGTERM at 16 s (no drain: it was not serving), gone at once.
    assert_eq!(
        run.signals(),
        [
            (t0 + 16 * S, Sig::Term),
            (t0 + 16 * S, Sig::Kill { alive: false })
        ]
    );
    assert_eq!(
        run.spawns(),
        [t0, t0 + 17 * S],
        "restarted after the 1 s backoff"
    );
    let status = run.shared.snapshot();
    assert_eq!((status.state, status.restarts), (State::Ready, 1));
    assert_eq!(status.last_exit, Some(signal(15)));
}

#[tokio::test(start_paused = true)]
async fn a_stop_drains_then_sigterm_then_sigkill_after_the_grace() {
    let mut fake = Fake::new(|_, _| Ok(()));
    fake.ignores_sigterm = true;
    let mut run = Run::start("escalation", timing(), fake);
    run.until("ready").await;
    let asked = Instant::now();
    let (ack, done) = oneshot::channel();
    run.send(Command::Stop(ack)).await;
    let waiter = tokio::spawn(async move {
        done.await.expect("acknowledged");
        Instant::now()
    });
    // Draining: pushed as DRAINING, the process untouched yet.
    tokio::time::sleep(S).await;
    assert_eq!(run.shared.snapshot().state, State::Stopping);
    assert!(run.signals().is_empty());
    let stopped_at = waiter.await.expect("waiter");
    assert_eq!(
        run.signals(),
        [
            (asked + 2 * S, Sig::Term),
            (asked + 12 * S, Sig::Kill { alive: true }),
            (asked + 12 * S, Sig::Kill { alive: false }),
        ],
        "2 s drain, SIGTERM ignored for the 10 s grace, SIGKILL, then the group's leftovers"
    );
    assert_eq!(
        stopped_at,
        asked + 12 * S,
        "the stop returns once the process is gone"
    );
    let events = run.until("stopped").await;
    assert_eq!(names(&events), ["stopped"]);
    let status = run.shared.snapshot();
    assert_eq!(status.state, State::Stopped);
    assert_eq!(status.last_exit, Some(signal(9)));
    assert!(status.pid.is_none());
}

#[tokio::test(start_paused = true)]
async fn requests_while_restarting_or_stopping_and_delete() {
    let mut fake = Fake::new(|_, _| Ok(()));
    fake.crashes_at_once = true;
    let t = Timing {
        backoff_initial: 30 * S,
        ..timing()
    };
    let mut run = Run::start("requests", t, fake);
    run.until("restarted").await;
    // A stop during the backoff stops at once; a start starts at once.
    let (ack, done) = oneshot::channel();
    run.send(Command::Stop(ack)).await;
    done.await.expect("stopped without waiting for the backoff");
    assert_eq!(run.shared.snapshot().state, State::Stopped);
    let now = Instant::now();
    run.send(Command::Start).await;
    run.until("started").await;
    assert_eq!(*run.spawns().last().expect("spawned"), now);
    run.until("restarted").await;
    // Deleting ends the supervisor; the host forgets the instance.
    let (ack, done) = oneshot::channel();
    run.send(Command::Delete(ack)).await;
    done.await.expect("deleted");
    run.task.await.expect("the driver ends");
    assert!(run.record.lock().unwrap().finished);
    assert_eq!(run.shared.snapshot().state, State::Stopped);
    let notes = run.record.lock().unwrap().notes.clone();
    assert!(
        notes
            .iter()
            .any(|n| n == "process exited with code 2 during startup; restarting in 30s"),
        "{notes:?}"
    );
}
