//! Per-key limit state, lock-free: requests and tokens per minute as GCRA cells
//! ([`multiverse_common::rate`]) and requests in flight as an atomic count. Shared by key id
//! across table versions, like an endpoint's state.

use std::sync::atomic::{AtomicU32, Ordering};

pub use multiverse_common::rate::{Cell, Decision, MINUTE_NS};

/// A key's runtime state, shared by key id across table versions (a snapshot never resets a
/// key's limits).
#[derive(Debug, Default)]
pub struct KeyState {
    pub requests: Cell,
    pub tokens: Cell,
    pub in_flight: AtomicU32,
}

impl KeyState {
    /// Counts a request in flight if fewer than `max` are (0: unlimited); false when full.
    pub fn enter(&self, max: u32) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max > 0 && before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Ends a request counted by [`enter`](Self::enter).
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_capped_and_released() {
        let k = KeyState::default();
        assert!(k.enter(2) && k.enter(2));
        assert!(!k.enter(2));
        k.leave();
        assert!(k.enter(2));
        assert!(k.enter(0), "0 is unlimited");
    }
}
