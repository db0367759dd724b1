//! The per-request budgets of issue 18: heap allocations and syscalls one proxied request of
//! each family may cost `multiverse-proxy` (one worker thread, one keep-alive connection, the
//! requests of [`super::scenario`]). Both are counts, not timings, so they are the same on a
//! loaded machine and a quiet one:
//!
//! - allocations are read from the proxy's own counter (debug builds and `--features
//!   alloc-count`; `multiverse-alloc-count`) by `benches/tests/request_budget.rs`, in the test
//!   suite, and by `request-cost` on any build (callgrind's allocator call counts);
//! - syscalls are counted by `request-cost` with `strace -c -f` on a release build (too slow
//!   and too dependent on strace being installed for the test suite).
//!
//! A change that needs more raises the number here, with the reason in its commit message.
//! The debug numbers were raised by ~2 when inference keys landed (issue 13): the test's count
//! (all threads, real concurrency) read chat 91.55 on main before keys and 93.3–93.4 after, in
//! open mode (+1.2 KB/request), while callgrind's serialised count of the same two debug builds
//! read 96.40 and 95.96. Where the concurrent +2 comes from is not found yet (issue 18 phase 2
//! should find it); these counts also move by 1–2 with the timing of timers and frames.
//! The numbers are what the proxy measured when they were set (docs/per-request-cost.md),
//! rounded up: allocations by about one (a family varies by a fraction between runs, gRPC by
//! up to 2.5 with the timing of h2's frames), syscalls by the `epoll_wait`s and the pingora
//! clock thread's `clock_nanosleep`s whose counts depend on timing. Debug builds allocate more
//! than release builds (no inlining, no elided allocations), hence two numbers.

use super::scenario::Latency;

/// What one request of a family may cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub family: Latency,
    /// `alloc` + `realloc` calls per request, debug build (the test suite's binaries).
    pub allocations_debug: f64,
    /// The same on a release build (request-cost's callgrind counts of the allocator shims;
    /// complete since the proxy is a library: docs/per-request-cost.md).
    pub allocations_release: f64,
    /// Syscalls per request, release build, all threads (`strace -c -f`).
    pub syscalls: f64,
}

/// The budgets, per family.
pub const BUDGETS: [Budget; 5] = [
    Budget {
        family: Latency::Chat,
        allocations_debug: 95.0,
        allocations_release: 96.0,
        syscalls: 6.5,
    },
    Budget {
        family: Latency::ChatH2c,
        allocations_debug: 85.0,
        allocations_release: 86.0,
        syscalls: 6.5,
    },
    Budget {
        family: Latency::Sse,
        allocations_debug: 120.0,
        allocations_release: 121.0,
        syscalls: 9.5,
    },
    Budget {
        family: Latency::EmbedHttp,
        allocations_debug: 114.0,
        allocations_release: 115.0,
        syscalls: 7.5,
    },
    Budget {
        family: Latency::GrpcUnary,
        allocations_debug: 72.0,
        allocations_release: 72.0,
        syscalls: 9.0,
    },
];

/// The budget of `family`, if it has one.
pub fn of(family: Latency) -> Option<&'static Budget> {
    BUDGETS.iter().find(|b| b.family == family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measured_family_has_one_budget() {
        for family in [
            Latency::Chat,
            Latency::ChatH2c,
            Latency::Sse,
            Latency::EmbedHttp,
            Latency::GrpcUnary,
        ] {
            assert_eq!(BUDGETS.iter().filter(|b| b.family == family).count(), 1);
        }
        assert!(of(Latency::GrpcBidi).is_none());
        assert!(BUDGETS
            .iter()
            .all(|b| b.allocations_debug > 0.0 && b.syscalls > 0.0));
    }
}
