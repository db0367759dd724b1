//! When the proxy tries a lost control plane again, and when it gives up the plane's routes —
//! a pure policy over the times the driver reports (no timers here).
//!
//! - Reconnect delays grow from `backoff_initial` to `backoff_max` (doubling, drawn from
//!   `[d / 2, d)` so proxies that lost a plane together do not return together); a stream that
//!   lived longer than `backoff_max` starts over at `backoff_initial`.
//! - With `withdraw_after`, the plane's routes are withdrawn once it has been unreachable that
//!   long (once per outage); without it they stay for as long as the plane is away.
//! - A long outage stays cheap in the log too: the first failed attempt of an outage is
//!   reported, then one every [`REPORT_EVERY`]; the others are debug lines.

use std::time::Duration;

use multiverse_common::clock::Instant;
use multiverse_common::Backoff;

/// Reconnect delays are drawn from `[d × (1 - JITTER), d)`.
pub const JITTER: f64 = 0.5;

/// How often a continuing outage is reported (at warn level).
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The reconnect policy's settings.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Withdraw a plane's routes after it has been unreachable this long (`None`: keep them).
    pub withdraw_after: Option<Duration>,
}

/// What to do after a stream ended (or never opened).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Next {
    /// Wait this long before the next attempt.
    pub delay: Duration,
    /// Withdraw the plane's routes now.
    pub withdraw: bool,
    /// Report this failure (the outage's first, or the first for a while).
    pub report: bool,
}

/// One plane's reconnect state.
#[derive(Debug, Clone)]
pub struct Reconnect {
    config: ReconnectConfig,
    backoff: Backoff,
    /// Since when the plane has been unreachable (`None` while a stream is open).
    down_since: Option<Instant>,
    /// Its routes were withdrawn during this outage.
    withdrawn: bool,
    /// When this outage was last reported.
    reported: Option<Instant>,
}

impl Reconnect {
    /// A plane not reached yet (unreachable since `now`, as far as withdrawing goes).
    pub fn new(config: ReconnectConfig, now: Instant) -> Self {
        Reconnect {
            config,
            backoff: Backoff::new(config.backoff_initial, config.backoff_max).with_jitter(JITTER),
            down_since: Some(now),
            withdrawn: false,
            reported: None,
        }
    }

    /// A stream opened.
    pub fn connected(&mut self) {
        self.down_since = None;
        self.withdrawn = false;
        self.reported = None;
    }

    /// Whether a stream is open.
    pub fn is_connected(&self) -> bool {
        self.down_since.is_none()
    }

    /// How long the plane has been unreachable at `now` (zero while connected).
    pub fn down_for(&self, now: Instant) -> Duration {
        self.down_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// The attempt that began at `began` ended at `now`; `sample` in `[0, 1)` draws the jitter.
    pub fn ended(&mut self, began: Instant, now: Instant, sample: f64) -> Next {
        let since = *self.down_since.get_or_insert(now);
        let withdraw = !self.withdrawn
            && self
                .config
                .withdraw_after
                .is_some_and(|grace| now.saturating_duration_since(since) >= grace);
        self.withdrawn |= withdraw;
        let report = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        if report {
            self.reported = Some(now);
        }
        // A stream that lived a while starts the backoff over.
        if now.saturating_duration_since(began) > self.config.backoff_max {
            self.backoff.reset();
        }
        Next {
            delay: self.backoff.next_delay_with(sample),
            withdraw,
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multiverse_common::{Clock, ManualClock};

    const MS: Duration = Duration::from_millis(1);

    fn config(withdraw_after: Option<Duration>) -> ReconnectConfig {
        ReconnectConfig {
            backoff_initial: 100 * MS,
            backoff_max: 1000 * MS,
            withdraw_after,
        }
    }

    /// Fails attempts that each end at once; the delays (with the longest jitter draw).
    fn failures(r: &mut Reconnect, clock: &ManualClock, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let now = clock.now();
                let next = r.ended(now, now, 0.999_999);
                clock.advance(next.delay);
                // Whole milliseconds, to compare.
                Duration::from_millis(next.delay.as_millis() as u64)
            })
            .collect()
    }

    #[test]
    fn delays_double_up_to_the_cap_and_are_jittered_below_it() {
        let clock = ManualClock::new();
        let mut r = Reconnect::new(config(None), clock.now());
        let got = failures(&mut r, &clock, 6);
        let ms = |v: u32| v * MS;
        assert_eq!(got, [ms(99), ms(199), ms(399), ms(799), ms(999), ms(999)]);
        // The shortest draw is half the delay.
        let now = clock.now();
        assert_eq!(r.ended(now, now, 0.0).delay, 500 * MS);
    }

    #[test]
    fn a_stream_that_lived_longer_than_the_cap_starts_over() {
        let clock = ManualClock::new();
        let mut r = Reconnect::new(config(None), clock.now());
        failures(&mut r, &clock, 5);
        let began = clock.now();
        r.connected();
        assert!(r.is_connected());
        clock.advance(1001 * MS);
        assert_eq!(r.ended(began, clock.now(), 0.0).delay, 50 * MS);
        // A stream that broke at once keeps climbing: 100, 200, 400, then 800 (drawn as 400).
        failures(&mut r, &clock, 2);
        let began = clock.now();
        r.connected();
        clock.advance(10 * MS);
        assert_eq!(r.ended(began, clock.now(), 0.0).delay, 400 * MS);
    }

    #[test]
    fn routes_are_withdrawn_once_per_outage_after_the_grace() {
        let clock = ManualClock::new();
        let mut r = Reconnect::new(config(Some(600 * MS)), clock.now());
        let began = clock.now();
        r.connected();
        clock.advance(5000 * MS);
        // The stream breaks: the outage starts now, not when the proxy started.
        assert!(!r.ended(began, clock.now(), 0.0).withdraw);
        assert_eq!(r.down_for(clock.now()), Duration::ZERO);
        clock.advance(599 * MS);
        let now = clock.now();
        assert!(!r.ended(now, now, 0.0).withdraw, "599 ms < 600 ms");
        clock.advance(MS);
        let now = clock.now();
        assert!(r.ended(now, now, 0.0).withdraw);
        clock.advance(5000 * MS);
        let now = clock.now();
        assert!(!r.ended(now, now, 0.0).withdraw, "once per outage");
        // Back, then away again: a new outage, a new grace.
        r.connected();
        let now = clock.now();
        assert!(!r.ended(now, now, 0.0).withdraw);
        clock.advance(600 * MS);
        let now = clock.now();
        assert!(r.ended(now, now, 0.0).withdraw);
    }

    #[test]
    fn a_long_outage_is_reported_once_a_minute_not_once_an_attempt() {
        let clock = ManualClock::new();
        let mut r = Reconnect::new(config(None), clock.now());
        let mut reported = Vec::new();
        // Ten minutes of attempts about once a second.
        for _ in 0..600 {
            let now = clock.now();
            let next = r.ended(now, now, 0.999_999);
            if next.report {
                reported.push(r.down_for(now).as_secs());
            }
            clock.advance(next.delay.max(Duration::from_secs(1)));
        }
        assert_eq!(reported.len(), 10, "{reported:?}");
        assert_eq!(reported[0], 0, "the first failure is reported at once");
        // After the plane was back, the next outage's first failure is reported again.
        r.connected();
        let now = clock.now();
        assert!(r.ended(now, now, 0.0).report);
    }

    #[test]
    fn a_plane_never_reached_counts_from_the_start_and_none_keeps_routes() {
        let clock = ManualClock::new();
        let mut r = Reconnect::new(config(Some(600 * MS)), clock.now());
        clock.advance(700 * MS);
        let now = clock.now();
        assert!(r.ended(now, now, 0.0).withdraw);
        let mut keep = Reconnect::new(config(None), clock.now());
        clock.advance(Duration::from_secs(3600));
        let now = clock.now();
        assert!(!keep.ended(now, now, 0.0).withdraw);
    }
}
