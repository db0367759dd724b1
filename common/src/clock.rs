//! An injectable monotonic time source, so that state machines (outlier ejection, instance
//! supervision, discovery grace periods) take "now" as an input and are unit-tested without
//! waiting. [`SystemClock`] reads `tokio::time::Instant`, which follows tokio's paused and
//! advanced time in tests (`#[tokio::test(start_paused = true)]`, feature `test-util`);
//! [`ManualClock`] is moved by hand and needs no runtime at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use tokio::time::Instant;

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock (tokio's, so paused time in tests applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance)d; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    origin: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// Starts at the current instant.
    pub fn new() -> Self {
        ManualClock {
            origin: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by` (for every clone).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(nanos))
            });
    }

    /// Time advanced so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }
}

/// Milliseconds since an origin, read from a clock: for deadlines kept in atomics
/// (`ejected_until`). Never 0, so 0 can stand for "none".
#[derive(Debug, Clone)]
pub struct Millis<C = SystemClock> {
    clock: C,
    origin: Instant,
}

impl Default for Millis<SystemClock> {
    fn default() -> Self {
        Millis::new(SystemClock)
    }
}

impl<C: Clock> Millis<C> {
    /// Counts from `clock`'s current instant.
    pub fn new(clock: C) -> Self {
        let origin = clock.now();
        Millis { clock, origin }
    }

    /// Milliseconds since the origin, plus one.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        let ms = self.clock.now().duration_since(self.origin).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// The clock it reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let c = ManualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        let other = c.clone();
        other.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, Duration::from_millis(1500));
        assert_eq!(c.elapsed(), Duration::from_millis(1500));
        c.advance(Duration::MAX);
        assert_eq!(c.elapsed(), Duration::from_nanos(u64::MAX), "saturates");
    }

    #[test]
    fn millis_start_at_one_and_follow_the_clock() {
        let c = ManualClock::new();
        let ms = Millis::new(c.clone());
        assert_eq!(ms.now_ms(), 1);
        c.advance(Duration::from_micros(999));
        assert_eq!(ms.now_ms(), 1);
        c.advance(Duration::from_micros(1));
        assert_eq!(ms.now_ms(), 2);
        c.advance(Duration::from_secs(30));
        assert_eq!(ms.now_ms(), 30_002);
    }

    #[test]
    fn a_shared_dyn_clock_is_a_clock() {
        let manual = ManualClock::new();
        let shared: Arc<dyn Clock> = Arc::new(manual.clone());
        let ms = Millis::new(shared);
        manual.advance(Duration::from_millis(7));
        assert_eq!(ms.now_ms(), 8);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let ms = Millis::default();
        let a = SystemClock.now();
        let first = ms.now_ms();
        std::thread::sleep(Duration::from_millis(3));
        assert!(SystemClock.now() > a);
        assert!(ms.now_ms() >= first + 3);
    }
}
