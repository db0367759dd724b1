//! Exponential backoff with jitter as a plain value: the n-th delay is `base × factorⁿ`, capped
//! at `max`, then shortened by up to `jitter` (a fraction) at random so that many clients that
//! failed together do not retry together. No timers here: callers sleep on what it returns.

use std::time::Duration;

/// Retry delays: `base`, `base × factor`, `base × factor²`, ... up to `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: u32,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// Doubling from `base` up to `max`, without jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            factor: 2,
            max,
            jitter: 0.0,
            attempt: 0,
        }
    }

    /// Multiplies the delay by `factor` per attempt (1: constant; 0 is taken as 1).
    pub const fn with_factor(mut self, factor: u32) -> Self {
        self.factor = if factor == 0 { 1 } else { factor };
        self
    }

    /// Each delay is drawn uniformly from `[d × (1 - fraction), d)`; `fraction` is clamped to
    /// 0..=1 (0: exact delays).
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before retry `attempt` (0-based), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.factor
            .checked_pow(attempt)
            .and_then(|m| self.base.checked_mul(m))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The un-jittered delay [`next_delay`](Self::next_delay) will start from.
    pub fn current(&self) -> Duration {
        self.delay(self.attempt)
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay (jittered at random), advancing to the one after.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// [`next_delay`](Self::next_delay) with the random draw given: `sample` in `[0, 1)`.
    pub fn next_delay_with(&mut self, sample: f64) -> Duration {
        let d = self.current();
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter == 0.0 {
            return d;
        }
        let sample = if sample.is_nan() {
            0.0
        } else {
            sample.clamp(0.0, 1.0)
        };
        d.mul_f64(1.0 - self.jitter + self.jitter * sample)
    }

    /// Back to `base` (after a success, or a connection that lived long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_and_is_capped() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let got: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        b.next_delay();
        b.next_delay();
        assert_eq!(b.current(), 400 * MS);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn other_factors_and_huge_attempts_saturate_at_max() {
        let b = Backoff::new(MS, Duration::from_secs(30)).with_factor(10);
        assert_eq!(b.delay(0), MS);
        assert_eq!(b.delay(3), Duration::from_secs(1));
        assert_eq!(b.delay(5), Duration::from_secs(30));
        let b = Backoff::new(200 * MS, Duration::from_secs(30));
        for n in [20, 31, 32, 40, u32::MAX] {
            assert_eq!(b.delay(n), Duration::from_secs(30), "attempt {n}");
        }
        let constant = Backoff::new(5 * MS, Duration::from_secs(1)).with_factor(0);
        assert_eq!(constant.delay(7), 5 * MS);
        // A base above the cap is capped too.
        assert_eq!(Backoff::new(2 * MS, MS).delay(0), MS);
    }

    #[test]
    fn jitter_shortens_by_at_most_its_fraction() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(0.5);
        assert_eq!(b.next_delay_with(0.0), 50 * MS);
        assert_eq!(b.next_delay_with(0.5), 150 * MS);
        assert_eq!(
            b.next_delay_with(0.999_999),
            Duration::from_nanos(399_999_800)
        );
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(0.5);
        for _ in 0..200 {
            let base = b.current();
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
            b.reset();
        }
    }

    #[test]
    fn jitter_fraction_is_clamped() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(7.0);
        assert_eq!(b.next_delay_with(0.0), Duration::ZERO);
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(-1.0);
        assert_eq!(b.next_delay_with(0.0), 100 * MS);
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(f64::NAN);
        assert_eq!(b.next_delay_with(0.0), 100 * MS);
    }
}
