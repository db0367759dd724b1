//! Passive outlier detection, as in Envoy: consecutive gateway failures (connect errors, resets,
//! timeouts, 502/503/504) eject an endpoint for `base × times ejected` (capped); it returns by
//! itself when that time is up. Never more than `max_percent` of a model's endpoints are ejected
//! at once (but at least one may be). State is per endpoint and survives table swaps.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::routing::table::Route;

/// Outlier detection settings.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive gateway failures that eject an endpoint (0 disables detection).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Per-endpoint outlier state.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since process start until which the endpoint is ejected (0: not ejected).
    ejected_until: AtomicU64,
}

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl OutlierState {
    #[inline]
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// A response that is not a gateway failure.
    pub fn success(&self, cfg: &OutlierConfig) {
        self.consecutive.store(0, Ordering::Relaxed);
        // Healthy for a full max-ejection period since returning: forget past ejections.
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now_ms() > until + cfg.max_ejection.as_millis() as u64 {
            self.times_ejected.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
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

/// Records a gateway failure of `route.endpoints[index]`.
pub fn failure(route: &Route, index: usize, cfg: &OutlierConfig) -> Verdict {
    if cfg.consecutive_failures == 0 {
        return Verdict::Counted;
    }
    let Some(endpoint) = route.endpoints.get(index) else {
        return Verdict::Counted;
    };
    let state = &endpoint.load.outlier;
    let n = state.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
    let now = now_ms();
    if n < cfg.consecutive_failures || state.is_ejected(now) {
        return Verdict::Counted;
    }
    let total = route.endpoints.len();
    let ejected = route
        .endpoints
        .iter()
        .filter(|e| e.load.outlier.is_ejected(now))
        .count();
    let allowed = (total * cfg.max_ejection_percent as usize / 100).max(1);
    if ejected >= allowed {
        return Verdict::CappedByMaxPercent;
    }
    let times = state.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let duration = cfg
        .base_ejection
        .saturating_mul(times)
        .min(cfg.max_ejection);
    state
        .ejected_until
        .store(now + duration.as_millis() as u64, Ordering::Relaxed);
    state.consecutive.store(0, Ordering::Relaxed);
    Verdict::Ejected(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::route_with;
    use multiverse_proto::discovery::v1::HealthStatus as H;

    fn cfg(percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(250),
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_with_growing_time() {
        let r = route_with(&[H::Healthy; 4]);
        let c = cfg(50);
        assert_eq!(failure(&r, 0, &c), Verdict::Counted);
        assert_eq!(failure(&r, 0, &c), Verdict::Counted);
        assert_eq!(
            failure(&r, 0, &c),
            Verdict::Ejected(Duration::from_millis(100))
        );
        assert!(r.endpoints[0].load.outlier.is_ejected(now_ms()));
        // A success in between resets the count.
        failure(&r, 1, &c);
        r.endpoints[1].load.outlier.success(&c);
        assert_eq!(failure(&r, 1, &c), Verdict::Counted);
        // Ejected again later (the last ejection over): base × 2, then capped.
        for expected_ms in [200, 250] {
            r.endpoints[0]
                .load
                .outlier
                .ejected_until
                .store(1, Ordering::Relaxed);
            for _ in 0..2 {
                failure(&r, 0, &c);
            }
            assert_eq!(
                failure(&r, 0, &c),
                Verdict::Ejected(Duration::from_millis(expected_ms))
            );
        }
    }

    #[test]
    fn max_percent_caps_ejections_but_allows_one() {
        let r = route_with(&[H::Healthy; 3]);
        let c = cfg(10); // 10% of 3 rounds to 0: one may still be ejected
        for _ in 0..3 {
            failure(&r, 0, &c);
        }
        assert!(r.endpoints[0].load.outlier.is_ejected(now_ms()));
        for _ in 0..2 {
            failure(&r, 1, &c);
        }
        assert_eq!(failure(&r, 1, &c), Verdict::CappedByMaxPercent);
        assert!(!r.endpoints[1].load.outlier.is_ejected(now_ms()));
    }
}
