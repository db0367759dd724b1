//! Passive outlier detection, as in Envoy: consecutive gateway failures (connect errors, resets,
//! timeouts, 502/503/504) eject an endpoint for `base × times ejected` (capped at `max`); it
//! returns by itself when that time is up. Never more than `max_percent` of a model's endpoints
//! are ejected at once (but at least one may be). An endpoint healthy for a whole `max` period
//! after its last ejection starts over at `base`.
//!
//! [`OutlierState`] is a small state machine kept in atomics (the request path feeds it without
//! a lock). Time is an input: every transition takes `now` in milliseconds from the caller's
//! clock ([`multiverse_common::Millis`]), so the machine is unit-tested with a manual clock and
//! never reads a global one. Cost on the request path: one relaxed store per success, an atomic
//! add per failure, and a scan of the model's endpoints only when a failure reaches the
//! threshold.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Outlier detection settings.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive gateway failures that eject an endpoint (0 disables detection).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// What a failure led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Counted,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
    /// It would have been ejected, but too many of the model's endpoints already are.
    CappedByMaxPercent,
}

/// Per-endpoint outlier state; times are milliseconds of one clock (never 0, so 0 is "none").
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Until when the endpoint is ejected (0: never ejected since the last reset).
    ejected_until: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now`.
    #[inline]
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// A response that is not a gateway failure: the failure count starts over, and an endpoint
    /// healthy for a full max-ejection period since it returned forgets its past ejections.
    pub fn success(&self, cfg: &OutlierConfig, now: u64) {
        self.consecutive.store(0, Ordering::Relaxed);
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now > until.saturating_add(millis(cfg.max_ejection)) {
            self.times_ejected.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// A gateway failure at `now`. `peers` is asked, only when this failure reaches the
    /// threshold, for (endpoints of the model ejected now, endpoints of the model).
    pub fn failure(
        &self,
        cfg: &OutlierConfig,
        now: u64,
        peers: impl FnOnce() -> (usize, usize),
    ) -> Verdict {
        if cfg.consecutive_failures == 0 {
            return Verdict::Counted;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.consecutive_failures || self.is_ejected(now) {
            return Verdict::Counted;
        }
        let (ejected, total) = peers();
        let allowed = (total * cfg.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return Verdict::CappedByMaxPercent;
        }
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = cfg
            .base_ejection
            .saturating_mul(times)
            .min(cfg.max_ejection);
        self.ejected_until
            .store(now.saturating_add(millis(duration)), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        Verdict::Ejected(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multiverse_common::{ManualClock, Millis};

    const MS: Duration = Duration::from_millis(1);

    fn cfg(failures: u32, percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            base_ejection: 100 * MS,
            max_ejection: 250 * MS,
            max_ejection_percent: percent,
        }
    }

    /// One endpoint among `total`, none of the others ejected.
    fn alone(total: usize) -> impl FnOnce() -> (usize, usize) {
        move || (0, total)
    }

    /// Fails `n` times at the clock's now; the last verdict.
    fn fail(s: &OutlierState, c: &OutlierConfig, clock: &Millis<ManualClock>, n: u32) -> Verdict {
        let mut last = Verdict::Counted;
        for _ in 0..n {
            last = s.failure(c, clock.now_ms(), alone(4));
        }
        last
    }

    fn clock() -> Millis<ManualClock> {
        Millis::new(ManualClock::new())
    }

    #[test]
    fn ejected_after_n_consecutive_failures_not_before() {
        let (s, c, t) = (OutlierState::default(), cfg(3, 100), clock());
        assert_eq!(fail(&s, &c, &t, 2), Verdict::Counted);
        assert!(
            !s.is_ejected(t.now_ms()),
            "two failures of three eject nothing"
        );
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(100 * MS));
        assert!(s.is_ejected(t.now_ms()));
    }

    #[test]
    fn a_success_in_between_starts_the_count_over() {
        let (s, c, t) = (OutlierState::default(), cfg(3, 100), clock());
        fail(&s, &c, &t, 2);
        s.success(&c, t.now_ms());
        assert_eq!(fail(&s, &c, &t, 2), Verdict::Counted);
        assert!(!s.is_ejected(t.now_ms()));
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(100 * MS));
    }

    #[test]
    fn zero_failures_disables_detection() {
        let (s, c, t) = (OutlierState::default(), cfg(0, 100), clock());
        assert_eq!(fail(&s, &c, &t, 50), Verdict::Counted);
        assert!(!s.is_ejected(t.now_ms()));
    }

    #[test]
    fn returns_when_the_ejection_time_is_up() {
        let (s, c, t) = (OutlierState::default(), cfg(1, 100), clock());
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(100 * MS));
        t.clock().advance(99 * MS);
        assert!(s.is_ejected(t.now_ms()), "still out 1 ms before the end");
        // Failures while ejected (requests already under way) do not extend the ejection.
        assert_eq!(fail(&s, &c, &t, 3), Verdict::Counted);
        t.clock().advance(MS);
        assert!(!s.is_ejected(t.now_ms()), "back once the time is up");
    }

    #[test]
    fn ejection_time_grows_with_times_ejected_and_is_capped() {
        let (s, c, t) = (OutlierState::default(), cfg(2, 100), clock());
        // base × 1, × 2, then capped at max (250 ms, not 300).
        for expected in [100 * MS, 200 * MS, 250 * MS, 250 * MS] {
            assert_eq!(fail(&s, &c, &t, 2), Verdict::Ejected(expected));
            t.clock().advance(expected);
            assert!(!s.is_ejected(t.now_ms()));
        }
    }

    #[test]
    fn healthy_for_a_max_period_after_returning_starts_over_at_base() {
        let (s, c, t) = (OutlierState::default(), cfg(1, 100), clock());
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(100 * MS));
        t.clock().advance(100 * MS);
        // Back, and healthy for less than max_ejection (250 ms): the history stays.
        t.clock().advance(250 * MS);
        s.success(&c, t.now_ms());
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(200 * MS));
        // Back, then successes for longer than max_ejection: the next ejection is base again.
        t.clock().advance(200 * MS);
        s.success(&c, t.now_ms());
        t.clock().advance(251 * MS);
        s.success(&c, t.now_ms());
        assert_eq!(fail(&s, &c, &t, 1), Verdict::Ejected(100 * MS));
    }

    #[test]
    fn max_percent_caps_ejections_but_always_allows_one() {
        let (s, t) = (OutlierState::default(), clock());
        let now = t.now_ms();
        // 50% of 4: a third ejection is refused, a second is not.
        let half = cfg(1, 50);
        assert_eq!(
            s.failure(&half, now, || (2, 4)),
            Verdict::CappedByMaxPercent
        );
        assert!(!s.is_ejected(now));
        assert_eq!(s.failure(&half, now, || (1, 4)), Verdict::Ejected(100 * MS));
        // 10% of 3 rounds to 0, yet one endpoint may still go.
        let (s, tenth) = (OutlierState::default(), cfg(1, 10));
        assert_eq!(
            s.failure(&tenth, now, || (0, 3)),
            Verdict::Ejected(100 * MS)
        );
        let other = OutlierState::default();
        assert_eq!(
            other.failure(&tenth, now, || (1, 3)),
            Verdict::CappedByMaxPercent
        );
    }

    #[test]
    fn peers_are_counted_only_when_the_threshold_is_reached() {
        let (s, c, t) = (OutlierState::default(), cfg(3, 100), clock());
        let asked = std::cell::Cell::new(0);
        for _ in 0..2 {
            s.failure(&c, t.now_ms(), || {
                asked.set(asked.get() + 1);
                (0, 1)
            });
        }
        assert_eq!(
            asked.get(),
            0,
            "below the threshold the model is not scanned"
        );
        s.failure(&c, t.now_ms(), || {
            asked.set(asked.get() + 1);
            (0, 1)
        });
        assert_eq!(asked.get(), 1);
    }

    /// The same machine on tokio's paused time, read through the system clock.
    #[tokio::test(start_paused = true)]
    async fn follows_tokio_paused_time() {
        let t = Millis::default();
        let (s, c) = (OutlierState::default(), cfg(1, 100));
        assert_eq!(
            s.failure(&c, t.now_ms(), alone(2)),
            Verdict::Ejected(100 * MS)
        );
        tokio::time::advance(60 * MS).await;
        assert!(s.is_ejected(t.now_ms()));
        tokio::time::sleep(40 * MS).await;
        assert!(!s.is_ejected(t.now_ms()));
    }
}
