//! Per-key limit state, lock-free: requests and tokens per minute as GCRA cells
//! ([`multiverse_common::rate`]), requests in flight as an atomic count, this proxy's lease of
//! the key's fleet-wide limits (set by the owning control plane), and the use since the last
//! report to it. Shared by key id across table versions, like an endpoint's state.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub use multiverse_common::rate::{Cell, Decision, MINUTE_NS};

/// No lease received yet: the key's own limit applies.
const NO_LEASE: u32 = u32::MAX;

/// A key's runtime state, shared by key id across table versions (a snapshot never resets a
/// key's limits).
#[derive(Debug)]
pub struct KeyState {
    pub requests: Cell,
    pub tokens: Cell,
    pub in_flight: AtomicU32,
    /// This proxy's share of the key's rpm, tpm and max_concurrent ([`NO_LEASE`]: none yet).
    lease: [AtomicU32; 3],
    /// Requests admitted and refused since the last usage report.
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            requests: Cell::default(),
            tokens: Cell::default(),
            in_flight: AtomicU32::new(0),
            lease: [
                AtomicU32::new(NO_LEASE),
                AtomicU32::new(NO_LEASE),
                AtomicU32::new(NO_LEASE),
            ],
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

/// Which of a key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    Rpm = 0,
    Tpm = 1,
    Concurrent = 2,
}

impl KeyState {
    /// Stores the owning plane's lease of one limit.
    pub fn set_lease(&self, which: Leased, share: u32) {
        self.lease[which as usize].store(share.min(NO_LEASE - 1), Ordering::Release);
    }

    /// The limit this proxy enforces for a key limit of `limit` (0: none): its lease once it
    /// has one, the whole limit before. `None`: unlimited.
    #[inline]
    pub fn effective(&self, which: Leased, limit: u32) -> Option<u32> {
        if limit == 0 {
            return None;
        }
        match self.lease[which as usize].load(Ordering::Acquire) {
            NO_LEASE => Some(limit),
            share => Some(share),
        }
    }

    /// The lease as `/config_dump` shows it: `{rpm, tpm, max_concurrent}` (an unleased limit
    /// is null), or nothing before any lease.
    pub fn lease_view(&self) -> Option<serde_json::Value> {
        let get = |w: Leased| match self.lease[w as usize].load(Ordering::Acquire) {
            NO_LEASE => None,
            v => Some(v),
        };
        let (rpm, tpm, conc) = (get(Leased::Rpm), get(Leased::Tpm), get(Leased::Concurrent));
        (rpm.is_some() || tpm.is_some() || conc.is_some())
            .then(|| serde_json::json!({"rpm": rpm, "tpm": tpm, "max_concurrent": conc}))
    }

    /// Takes the use since the last call: (admitted, refused).
    pub fn take_usage(&self) -> (u64, u64) {
        (
            self.admitted.swap(0, Ordering::AcqRel),
            self.refused.swap(0, Ordering::AcqRel),
        )
    }

    /// Counts a request in flight if fewer than `max` are (`None`: unlimited); false when full.
    pub fn enter(&self, max: Option<u32>) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| before >= max) {
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
        assert!(k.enter(Some(2)) && k.enter(Some(2)));
        assert!(!k.enter(Some(2)));
        k.leave();
        assert!(k.enter(Some(2)));
        assert!(k.enter(None), "None is unlimited");
    }

    #[test]
    fn a_lease_replaces_the_keys_limit_once_it_arrives() {
        let k = KeyState::default();
        assert_eq!(k.effective(Leased::Rpm, 100), Some(100), "no lease yet");
        assert_eq!(k.effective(Leased::Rpm, 0), None, "no limit at all");
        k.set_lease(Leased::Rpm, 40);
        assert_eq!(k.effective(Leased::Rpm, 100), Some(40));
        k.set_lease(Leased::Rpm, 0);
        assert_eq!(
            k.effective(Leased::Rpm, 100),
            Some(0),
            "a zero share admits nothing"
        );
        assert_eq!(
            k.effective(Leased::Concurrent, 5),
            Some(5),
            "leases are per limit"
        );
        k.admitted.fetch_add(3, Ordering::Relaxed);
        assert_eq!(k.take_usage(), (3, 0));
        assert_eq!(k.take_usage(), (0, 0));
    }
}
