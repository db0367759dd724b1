//! Open-loop arrivals at a constant rate.
//!
//! *Open loop* means the arrival times are fixed in advance — arrival `i` is due at
//! `start + i / rate` — and do not depend on how quickly earlier requests finished. A closed
//! loop (send, wait, send again) slows down exactly when the server does, so it records few
//! samples from the slow periods and understates tail latency ("coordinated omission"). Here a
//! request's latency is measured from its *intended* time ([`Tick::intended`]), so time spent
//! waiting for the generator, for a free connection or for the server all counts.
//!
//! The pacer runs on the calling OS thread rather than on tokio's timer: tokio's timer wheel
//! has millisecond granularity, which would add up to a millisecond of fake latency to
//! requests that take a tenth of that. The thread asks the kernel for fine timer slack
//! (`PR_SET_TIMERSLACK`, restored afterwards), sleeps until each arrival and hands the tick to a
//! callback — typically one that spawns a task on a tokio runtime, so every request runs in its
//! own task. When the pacer falls behind it fires the missed ticks at once (a burst) with their
//! original intended times, so its lateness shows up as latency rather than disappearing. How
//! late it woke is recorded in [`PacerStats`] so a report can show the generator kept up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::latency_histogram;

/// What to run: a constant arrival rate, a warm-up and a measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Arrivals per second (all targets together).
    pub rate: f64,
    /// Arrivals before the measured window (sent, not recorded).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Whether a tick belongs to the warm-up or to the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent to warm connections and caches; not recorded.
    Warmup,
    /// Recorded.
    Measure,
}

/// One arrival.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// 0, 1, 2, ... in arrival order (interleave targets with [`Tick::target`]).
    pub index: u64,
    /// When the request should be sent; measure latency from here.
    pub intended: Instant,
    /// Warm-up or measured.
    pub phase: Phase,
}

impl Tick {
    /// Which of `n` targets this arrival goes to: every cycle of `n` arrivals visits each
    /// target once, in an order shuffled per cycle (seeded, so a run is repeatable).
    ///
    /// A plain `index % n` sends each target's request right after the same other target's, so
    /// a target that follows an expensive one (a proxy after a proxy rather than after the cheap
    /// direct call) arrives while the machine may still be busy with its predecessor, and can
    /// read slower for its position alone. With a shuffled order every target is preceded by
    /// every target about equally often and sits in every position about equally often, so a
    /// difference between targets is theirs.
    pub fn target(&self, n: usize) -> usize {
        debug_assert!(n > 0, "no targets");
        let n = n.max(1) as u64;
        let (cycle, position) = (self.index / n, self.index % n);
        // Fisher-Yates over 0..n with splitmix64 seeded by the cycle; n is a handful of targets.
        let mut order = [0u64; MAX_TARGETS];
        let n = n.min(MAX_TARGETS as u64) as usize;
        for (i, slot) in order.iter_mut().enumerate().take(n) {
            *slot = i as u64;
        }
        let mut state = cycle;
        for i in (1..n).rev() {
            state = splitmix64(state);
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        order[position as usize % n] as usize
    }
}

/// Most targets [`Tick::target`] shuffles among (a run has three to five).
const MAX_TARGETS: usize = 16;

/// One step of splitmix64 (Steele, Lea, Flood 2014): a well-mixed 64-bit value from a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How well the pacer kept to the schedule.
#[derive(Debug, Clone)]
pub struct PacerStats {
    /// Ticks fired.
    pub ticks: u64,
    /// Ticks in the measured window.
    pub measured_ticks: u64,
    /// How late each tick was handed to the callback, in µs.
    pub lag_us: Histogram<u64>,
}

impl Plan {
    /// The schedule's total length (warm-up plus measured window).
    pub fn total(&self) -> Duration {
        self.warmup + self.duration
    }

    /// Number of ticks in the whole schedule: those with `i / rate < warmup + duration`.
    pub fn total_ticks(&self) -> u64 {
        (self.total().as_secs_f64() * self.rate).ceil() as u64
    }

    /// Offset of tick `index` from the start of the schedule.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// The phase of tick `index`.
    pub fn phase(&self, index: u64) -> Phase {
        if self.offset(index) < self.warmup {
            Phase::Warmup
        } else {
            Phase::Measure
        }
    }

    /// Checks the plan makes sense (a positive, finite rate and a non-empty measured window).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("rate must be a positive number, got {}", self.rate));
        }
        if self.duration.is_zero() {
            return Err("the measured duration must be longer than 0".into());
        }
        if self.total_ticks() == 0 {
            return Err("the plan has no arrivals".into());
        }
        Ok(())
    }
}

/// Runs the schedule on the calling thread, calling `on_tick` at each arrival time; returns
/// when the last tick has been handed over (not when the work it started has finished).
///
/// `on_tick` must be quick (spawn a task and return); time it takes delays later ticks.
pub fn run(plan: &Plan, on_tick: impl FnMut(Tick)) -> PacerStats {
    run_until(plan, &AtomicBool::new(false), on_tick)
}

/// Like [`run`], ending early (before the next tick) once `stop` is set. For a load that lasts
/// as long as something else takes: give the plan a generous duration and set `stop` when done.
pub fn run_until(plan: &Plan, stop: &AtomicBool, mut on_tick: impl FnMut(Tick)) -> PacerStats {
    let _slack = FineTimerSlack::set();
    let mut stats = PacerStats {
        ticks: 0,
        measured_ticks: 0,
        lag_us: latency_histogram(),
    };
    let total = plan.total_ticks();
    let start = Instant::now();
    for index in 0..total {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let intended = start + plan.offset(index);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let fired = Instant::now();
        let phase = plan.phase(index);
        on_tick(Tick {
            index,
            intended,
            phase,
        });
        stats.ticks += 1;
        if phase == Phase::Measure {
            stats.measured_ticks += 1;
        }
        stats
            .lag_us
            .saturating_record(fired.saturating_duration_since(intended).as_micros() as u64);
    }
    stats
}

/// Sets this thread's timer slack to 1 ns while alive (Linux's default, 50 µs, would make
/// every sleep up to 50 µs late), restoring the previous value on drop.
struct FineTimerSlack {
    previous: Option<i32>,
}

impl FineTimerSlack {
    fn set() -> Self {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::prctl;
            let previous = prctl::get_timerslack().ok();
            if previous.is_some() && prctl::set_timerslack(1).is_ok() {
                return Self { previous };
            }
        }
        Self { previous: None }
    }
}

impl Drop for FineTimerSlack {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(previous) = self.previous {
            let _ = nix::sys::prctl::set_timerslack(previous as _);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64, warmup_ms: u64, duration_ms: u64) -> Plan {
        Plan {
            rate,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
        }
    }

    #[test]
    fn targets_are_balanced_by_position_and_by_predecessor() {
        let tick = |index| Tick {
            index,
            intended: Instant::now(),
            phase: Phase::Measure,
        };
        for n in [2usize, 3, 4, 5] {
            let cycles = 20_000u64;
            let mut position = vec![vec![0u32; n]; n];
            let mut follows = vec![vec![0u32; n]; n];
            let mut previous: Option<usize> = None;
            for i in 0..cycles * n as u64 {
                let t = tick(i).target(n);
                position[(i % n as u64) as usize][t] += 1;
                if let Some(p) = previous {
                    follows[p][t] += 1;
                }
                previous = Some(t);
            }
            // Each cycle is a permutation: every target exactly once per n arrivals.
            for c in 0..cycles {
                let mut seen: Vec<usize> = (0..n as u64)
                    .map(|p| tick(c * n as u64 + p).target(n))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "cycle {c} of {n}");
            }
            // Every target in every position about equally often (`index % n` would put each
            // in one position only).
            let per_cell = cycles as f64 / n as f64;
            for row in &position {
                for &count in row {
                    assert!(
                        (count as f64 - per_cell).abs() < 0.1 * per_cell,
                        "{n}: {position:?}"
                    );
                }
            }
            // Every other target precedes a target about equally often (`index % n` and a plain
            // rotation both give one predecessor most or all of the time).
            for (t, _) in follows.iter().enumerate() {
                let others: Vec<u32> = (0..n).filter(|&p| p != t).map(|p| follows[p][t]).collect();
                let mean = others.iter().sum::<u32>() as f64 / others.len() as f64;
                for &count in &others {
                    assert!((count as f64 - mean).abs() < 0.1 * mean, "{n}: {follows:?}");
                }
            }
        }
        // One target: always 0; the same index always the same target (repeatable runs).
        assert!((0..10).all(|i| tick(i).target(1) == 0));
        assert!((0..100).all(|i| tick(i).target(3) == tick(i).target(3)));
    }

    #[test]
    fn tick_counts_and_phases() {
        let p = plan(1000.0, 500, 2000);
        assert_eq!(p.total_ticks(), 2500);
        assert_eq!(p.phase(0), Phase::Warmup);
        assert_eq!(p.phase(499), Phase::Warmup);
        assert_eq!(p.phase(500), Phase::Measure);
        assert_eq!(p.offset(1500), Duration::from_millis(1500));
        // A fractional rate still covers the window: ticks at 0 s, 1/3 s, 2/3 s.
        assert_eq!(plan(3.0, 0, 1000).total_ticks(), 3);
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(plan(0.0, 0, 1000).validate().is_err());
        assert!(plan(f64::NAN, 0, 1000).validate().is_err());
        assert!(plan(100.0, 100, 0).validate().is_err());
        assert!(plan(100.0, 0, 1000).validate().is_ok());
    }

    #[test]
    fn run_fires_every_tick_on_schedule() {
        let p = plan(2000.0, 10, 40);
        let mut seen = Vec::new();
        let started = Instant::now();
        let stats = run(&p, |t| seen.push(t));
        assert_eq!(stats.ticks, 100);
        assert_eq!(stats.measured_ticks, 80);
        assert_eq!(seen.len(), 100);
        assert!(seen.windows(2).all(|w| w[0].index + 1 == w[1].index));
        assert!(seen
            .windows(2)
            .all(|w| w[1].intended - w[0].intended == p.offset(w[1].index) - p.offset(w[0].index)));
        // The schedule cannot finish before its last arrival is due.
        assert!(started.elapsed() >= p.offset(99));
        assert_eq!(stats.lag_us.len(), 100);
    }

    #[test]
    fn run_until_stops_early() {
        let p = plan(1000.0, 0, 60_000);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let stats = run_until(&p, &stop, |t| {
            if t.index == 49 {
                stop.store(true, Ordering::Release);
            }
        });
        assert_eq!(stats.ticks, 50);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
