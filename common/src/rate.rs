//! Rate limits as GCRA cells (the generic cell rate algorithm): one atomic "theoretical
//! arrival time" per limit and a compare-and-swap per admission, lock-free. Time is an input
//! (nanoseconds on the caller's monotonic clock), so every rule is unit-tested without waiting.
//!
//! A cell for `limit` units a minute releases one unit every `60 s / limit` and allows a burst
//! of the whole minute's worth: a client idle for a minute may send `limit` requests at once,
//! then one per interval. Unlike fixed windows there is no boundary at which twice the limit
//! gets in. The proxy limits inference keys and client addresses with it, the control plane its
//! operator API's clients. The same cell over a one-second window ([`Cell::take_in`] with
//! [`SECOND_NS`]) limits an endpoint's requests per second, a burst of one second's worth.

use std::sync::atomic::{AtomicU64, Ordering};

/// A minute in nanoseconds.
pub const MINUTE_NS: u64 = 60_000_000_000;
/// A second in nanoseconds.
pub const SECOND_NS: u64 = 1_000_000_000;

/// What a cell says about one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Units left in the burst afterwards.
    pub remaining: u64,
    /// Until the cell is full again (OpenAI's `x-ratelimit-reset-*`), nanoseconds.
    pub reset_ns: u64,
    /// Until the refused admission would be allowed (0 when allowed), nanoseconds.
    pub retry_after_ns: u64,
}

/// One GCRA cell.
#[derive(Debug, Default)]
pub struct Cell {
    /// Theoretical arrival time: when the cell would be empty of debt, in clock nanoseconds.
    tat: AtomicU64,
}

impl Cell {
    fn interval(limit: u64) -> u64 {
        Self::interval_in(MINUTE_NS, limit)
    }

    fn interval_in(window: u64, limit: u64) -> u64 {
        (window / limit.max(1)).max(1)
    }

    /// Takes `cost` units of a `limit`-per-minute cell at `now`, if they fit in the burst.
    pub fn take(&self, limit: u64, cost: u64, now: u64) -> Decision {
        self.take_in(MINUTE_NS, limit, cost, now)
    }

    /// Takes `cost` units of a `limit`-per-`window` cell (nanoseconds; its burst is one
    /// window's worth) at `now`, if they fit in the burst.
    pub fn take_in(&self, window: u64, limit: u64, cost: u64, now: u64) -> Decision {
        let t = Self::interval_in(window, limit);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            let next = start.saturating_add(cost.saturating_mul(t));
            let debt = next - now;
            if debt > window {
                let current = start - now;
                return Decision {
                    allowed: false,
                    remaining: window.saturating_sub(current) / t,
                    reset_ns: current,
                    retry_after_ns: debt - window,
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Decision {
                        allowed: true,
                        remaining: (window - debt) / t,
                        reset_ns: debt,
                        retry_after_ns: 0,
                    }
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// Whether at least one unit is left, without taking it (the token limit's admission:
    /// tokens are only known once the response is read).
    pub fn peek(&self, limit: u64, now: u64) -> Decision {
        self.peek_in(MINUTE_NS, limit, now)
    }

    /// [`Cell::peek`] of a `limit`-per-`window` cell.
    pub fn peek_in(&self, window: u64, limit: u64, now: u64) -> Decision {
        let t = Self::interval_in(window, limit);
        let debt = self.tat.load(Ordering::Acquire).saturating_sub(now);
        let allowed = debt.saturating_add(t) <= window;
        Decision {
            allowed,
            remaining: window.saturating_sub(debt) / t,
            reset_ns: debt,
            retry_after_ns: if allowed { 0 } else { debt + t - window },
        }
    }

    /// Whether the cell is full again at `now` (an idle cell is the same as a new one).
    pub fn idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Acquire) <= now
    }

    /// Charges `cost` units after the fact, even beyond the burst (later admissions wait).
    pub fn charge(&self, limit: u64, cost: u64, now: u64) {
        let t = Self::interval(limit);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost.saturating_mul(t)))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_cell_admits_the_burst_then_one_per_interval() {
        let c = Cell::default();
        let now = 5 * S;
        for i in 0..60 {
            let d = c.take(60, 1, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 59 - i);
        }
        let refused = c.take(60, 1, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, S, "one per second at 60 rpm");
        assert_eq!(refused.reset_ns, 60 * S);
        assert!(!c.take(60, 1, now + S - 1).allowed);
        assert!(c.take(60, 1, now + S).allowed);
        assert!(!c.take(60, 1, now + S).allowed);
        // Idle for a minute: the whole burst is back.
        let later = now + 62 * S;
        assert_eq!(c.take(60, 1, later).remaining, 59);
    }

    #[test]
    fn a_per_second_cell_admits_a_second_of_burst_then_one_per_interval() {
        let c = Cell::default();
        let now = 7 * S;
        for i in 0..10 {
            assert!(c.take_in(SECOND_NS, 10, 1, now).allowed, "request {i}");
        }
        let refused = c.take_in(SECOND_NS, 10, 1, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, S / 10, "one per 100 ms at 10/s");
        assert!(!c.peek_in(SECOND_NS, 10, now + S / 10 - 1).allowed);
        assert!(c.peek_in(SECOND_NS, 10, now + S / 10).allowed);
        assert!(c.take_in(SECOND_NS, 10, 1, now + S / 10).allowed);
        assert!(!c.take_in(SECOND_NS, 10, 1, now + S / 10).allowed);
    }

    #[test]
    fn tokens_are_peeked_then_charged_past_the_burst() {
        let c = Cell::default();
        let now = S;
        assert!(c.peek(1000, now).allowed);
        c.charge(1000, 1500, now);
        let d = c.peek(1000, now);
        assert!(!d.allowed, "1500 of 1000 used");
        // 500 over plus one token at 1000/min: 30.06 s.
        assert_eq!(d.retry_after_ns, 30 * S + 60_000_000);
        assert!(c.peek(1000, now + d.retry_after_ns).allowed);
    }

    #[test]
    fn racing_threads_never_admit_more_than_the_burst() {
        let c = std::sync::Arc::new(Cell::default());
        let admitted = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, admitted) = (c.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if c.take(100, 1, S).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
    }
}
