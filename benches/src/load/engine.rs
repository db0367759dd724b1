//! The two ways a benchmark drives its targets, over any protocol:
//!
//! - [`open_loop`]: constant-rate arrivals ([`super::schedule`]) spread round robin over the
//!   targets (each cycle of n arrivals visits every target once, in a shuffled order:
//!   [`schedule::Tick::target`]), so every target sees the same machine noise and follows
//!   every other about equally often;
//!   each request's latency runs from its *intended* send time, so coordinated omission is
//!   corrected. For latency percentiles at a given load.
//! - [`closed_loop`]: `concurrency` workers per target, each sending its next request as soon
//!   as the previous one finished, for a time slice; targets take turns slice by slice for a
//!   number of rounds, so they share the noise too. For maximum throughput.
//!
//! A target is a name and a [`Caller`]: a function that starts one request and resolves with
//! its [`Timing`] (or a failure, as text). Callers for HTTP/1.1, h2c, SSE and gRPC are built in
//! `super::scenario`. Results land in hdrhistograms (µs): whole-request latency, and for
//! streams the time to the first event and the gaps between events.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::report::{self, latency_histogram};
use super::schedule::{self, PacerStats, Phase, Plan};

/// What one successful request measured beyond its end: stream event timings.
#[derive(Debug, Default, Clone)]
pub struct Timing {
    /// When the first event (e.g. SSE event) arrived.
    pub first_event: Option<Instant>,
    /// Gaps between consecutive events.
    pub gaps: Vec<Duration>,
}

/// A request in flight.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Timing, String>> + Send>>;

/// Starts one request.
pub type Caller = Arc<dyn Fn() -> CallFuture + Send + Sync>;

/// One target of a run.
#[derive(Clone)]
pub struct Target {
    /// Its name in reports: "direct", "proxy", "nginx", ...
    pub name: String,
    /// How to send it one request.
    pub call: Caller,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// What was recorded for one target.
#[derive(Debug, Clone)]
pub struct TargetStats {
    /// The target's name.
    pub name: String,
    /// Whole-request latency, µs.
    pub latency: Histogram<u64>,
    /// Time to the first event, µs (streams only).
    pub first_event: Histogram<u64>,
    /// Gaps between events, µs (streams only).
    pub gaps: Histogram<u64>,
    /// Failed requests in the measured window.
    pub errors: u64,
    /// Failed requests in the warm-up.
    pub warmup_errors: u64,
    /// Successful requests in the warm-up (not in the histograms).
    pub warmup_ok: u64,
    /// The first failure seen.
    pub first_error: Option<String>,
    /// The measured time (open loop: the window; closed loop: the sum of the slices).
    pub window: Duration,
}

impl TargetStats {
    fn new(name: &str, window: Duration) -> Self {
        Self {
            name: name.to_string(),
            latency: latency_histogram(),
            first_event: latency_histogram(),
            gaps: latency_histogram(),
            errors: 0,
            warmup_errors: 0,
            warmup_ok: 0,
            first_error: None,
            window,
        }
    }

    fn record(&mut self, start: Instant, end: Instant, timing: &Timing) {
        report::record(&mut self.latency, end.saturating_duration_since(start));
        if let Some(first) = timing.first_event {
            report::record(
                &mut self.first_event,
                first.saturating_duration_since(start),
            );
        }
        for gap in &timing.gaps {
            report::record(&mut self.gaps, *gap);
        }
    }

    fn fail(&mut self, phase: Phase, error: String) {
        match phase {
            Phase::Measure => self.errors += 1,
            Phase::Warmup => self.warmup_errors += 1,
        }
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: &TargetStats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.first_event.add(&other.first_event);
        let _ = self.gaps.add(&other.gaps);
        self.errors += other.errors;
        self.warmup_errors += other.warmup_errors;
        self.warmup_ok += other.warmup_ok;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Every request sent, warm-up included.
    pub fn requests(&self) -> u64 {
        self.latency.len() + self.errors + self.warmup_errors + self.warmup_ok
    }

    /// Every request succeeded and some were measured.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.warmup_errors == 0 && !self.latency.is_empty()
    }

    /// A one-line description of the failures, if any.
    pub fn failure(&self) -> Option<String> {
        if self.ok() {
            return None;
        }
        Some(match &self.first_error {
            Some(e) => format!(
                "{}: {} failed request(s) ({} in warm-up); first: {e}",
                self.name,
                self.errors + self.warmup_errors,
                self.warmup_errors
            ),
            None => format!("{}: no successful request was measured", self.name),
        })
    }
}

/// An open-loop run's results.
#[derive(Debug)]
pub struct OpenLoopResult {
    /// Per target, in the order given.
    pub targets: Vec<TargetStats>,
    /// How well the pacer kept to its schedule.
    pub pacer: PacerStats,
}

struct Outcome {
    target: usize,
    phase: Phase,
    intended: Instant,
    end: Instant,
    result: Result<Timing, String>,
}

/// Runs `plan` (its rate is all targets together) on the calling thread's pacer, spawning each
/// request on `runtime`; arrival `i` goes to `targets[tick.target(n)]` (every target once per
/// cycle of n, shuffled). A request not done `timeout`
/// after its intended time fails. Stops early when `stop` is set (see
/// [`schedule::run_until`]); waits for every request to finish.
pub fn open_loop(
    runtime: &Runtime,
    plan: &Plan,
    targets: &[Target],
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<OpenLoopResult> {
    plan.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!targets.is_empty(), "no targets");
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let collector = runtime.spawn(async move {
        let mut stats: Vec<TargetStats> = names
            .iter()
            .map(|n| TargetStats::new(n, Duration::ZERO))
            .collect();
        while let Some(o) = rx.recv().await {
            let s = &mut stats[o.target];
            match (o.result, o.phase) {
                (Ok(timing), Phase::Measure) => s.record(o.intended, o.end, &timing),
                (Ok(_), Phase::Warmup) => s.warmup_ok += 1,
                (Err(e), phase) => s.fail(phase, e),
            }
        }
        stats
    });
    let never = AtomicBool::new(false);
    let started = Instant::now();
    let pacer = schedule::run_until(plan, stop.unwrap_or(&never), |tick| {
        let index = tick.target(targets.len());
        let call = (targets[index].call)();
        let tx = tx.clone();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::from_std(tick.intended + timeout);
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Err(format!("no response within {timeout:?} of the send time")),
            };
            let _ = tx.send(Outcome {
                target: index,
                phase: tick.phase,
                intended: tick.intended,
                end: Instant::now(),
                result,
            });
        });
    });
    let elapsed = started.elapsed();
    drop(tx);
    let mut stats = runtime
        .block_on(async { tokio::time::timeout(timeout + Duration::from_secs(5), collector).await })
        .context("requests still running long after their timeout")?
        .context("the result collector failed")?;
    // The measured window: the plan's, or up to the early stop.
    let window = if pacer.ticks < plan.total_ticks() {
        elapsed.saturating_sub(plan.warmup)
    } else {
        plan.duration
    };
    for s in &mut stats {
        s.window = window;
    }
    Ok(OpenLoopResult {
        targets: stats,
        pacer,
    })
}

/// A closed-loop run: how many workers, for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedPlan {
    /// Workers per target, each with one request in flight.
    pub concurrency: usize,
    /// Each target's turn (measured).
    pub slice: Duration,
    /// Turns per target.
    pub rounds: u32,
    /// A first, unmeasured turn per target (warms connections and caches).
    pub warmup: Duration,
}

/// Runs `plan`: each target in turn gets `concurrency` workers for a slice, `rounds` times
/// (after one warm-up slice each). Latency runs from each request's actual send.
pub fn closed_loop(
    runtime: &Runtime,
    plan: &ClosedPlan,
    targets: &[Target],
    timeout: Duration,
) -> Vec<TargetStats> {
    let mut stats: Vec<TargetStats> = targets
        .iter()
        .map(|t| TargetStats::new(&t.name, Duration::ZERO))
        .collect();
    let turns = std::iter::once((Phase::Warmup, plan.warmup))
        .chain((0..plan.rounds).map(|_| (Phase::Measure, plan.slice)));
    for (phase, slice) in turns {
        if slice.is_zero() {
            continue;
        }
        for (target, s) in targets.iter().zip(stats.iter_mut()) {
            let turn =
                runtime.block_on(closed_turn(target, plan.concurrency, slice, phase, timeout));
            s.merge(&turn);
            if phase == Phase::Measure {
                s.window += turn.window;
            }
        }
    }
    stats
}

async fn closed_turn(
    target: &Target,
    concurrency: usize,
    slice: Duration,
    phase: Phase,
    timeout: Duration,
) -> TargetStats {
    let started = Instant::now();
    let end = started + slice;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let call = Arc::clone(&target.call);
            let name = target.name.clone();
            tokio::spawn(async move {
                let mut s = TargetStats::new(&name, Duration::ZERO);
                while Instant::now() < end {
                    let start = Instant::now();
                    match tokio::time::timeout(timeout, call()).await {
                        Ok(Ok(timing)) => match phase {
                            Phase::Measure => s.record(start, Instant::now(), &timing),
                            Phase::Warmup => s.warmup_ok += 1,
                        },
                        Ok(Err(e)) => s.fail(phase, e),
                        Err(_) => s.fail(phase, format!("no response within {timeout:?}")),
                    }
                }
                s
            })
        })
        .collect();
    let mut total = TargetStats::new(&target.name, Duration::ZERO);
    for worker in workers {
        match worker.await {
            Ok(s) => total.merge(&s),
            Err(e) => total.fail(phase, format!("worker failed: {e}")),
        }
    }
    // Requests in flight at the slice's end finish after it; count the time they took.
    total.window = started.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn sleeper(ms: u64, fail_every: u64, counter: Arc<AtomicU64>) -> Caller {
        Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if fail_every > 0 && n % fail_every == fail_every - 1 {
                    Err("injected".into())
                } else {
                    Ok(Timing {
                        first_event: Some(Instant::now()),
                        gaps: vec![Duration::from_micros(100)],
                    })
                }
            })
        })
    }

    #[test]
    fn open_loop_interleaves_and_counts() {
        let rt = runtime();
        let a = Arc::new(AtomicU64::new(0));
        let b = Arc::new(AtomicU64::new(0));
        let targets = vec![
            Target {
                name: "a".into(),
                call: sleeper(1, 0, a.clone()),
            },
            Target {
                name: "b".into(),
                call: sleeper(1, 10, b.clone()),
            },
        ];
        let plan = Plan {
            rate: 400.0,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
        };
        let r = open_loop(&rt, &plan, &targets, Duration::from_secs(5), None).unwrap();
        assert_eq!(a.load(Ordering::SeqCst) + b.load(Ordering::SeqCst), 200);
        assert_eq!(r.targets[0].requests() + r.targets[1].requests(), 200);
        assert_eq!(r.targets[0].latency.len(), 80);
        assert!(r.targets[0].ok());
        assert_eq!(r.targets[0].first_event.len(), 80);
        assert_eq!(r.targets[0].gaps.len(), 80);
        assert_eq!(r.targets[0].window, Duration::from_millis(400));
        let failed = &r.targets[1];
        assert_eq!(failed.errors + failed.warmup_errors, 10);
        assert!(!failed.ok());
        assert!(failed.failure().unwrap().contains("injected"));
        // Latency is at least the call's own time.
        assert!(r.targets[0].latency.min() >= 1000);
    }

    #[test]
    fn closed_loop_takes_turns() {
        let rt = runtime();
        let counter = Arc::new(AtomicU64::new(0));
        let targets = vec![
            Target {
                name: "a".into(),
                call: sleeper(2, 0, counter.clone()),
            },
            Target {
                name: "b".into(),
                call: sleeper(2, 0, counter.clone()),
            },
        ];
        let plan = ClosedPlan {
            concurrency: 4,
            slice: Duration::from_millis(100),
            rounds: 2,
            warmup: Duration::from_millis(50),
        };
        let stats = closed_loop(&rt, &plan, &targets, Duration::from_secs(5));
        for s in &stats {
            assert!(s.ok(), "{s:?}");
            // 4 workers × ~2 ms per call × 200 ms: on the order of 400 calls.
            assert!(s.latency.len() > 40, "{}", s.latency.len());
            assert!(s.window >= Duration::from_millis(200));
        }
    }
}
