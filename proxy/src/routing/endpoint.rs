//! Runtime state of one endpoint: its requests in flight (what least-request balancing reads),
//! its latency (what peak-EWMA balancing reads), its engine-reported load, its outlier-detection
//! state and its request rate's GCRA cell (`max_requests_per_sec`). Shared by endpoint id across
//! table versions, so a table swap never resets load balancing, an ejection or a rate.

use std::sync::atomic::{AtomicU64, Ordering};

use multiverse_common::rate::Cell;

use crate::routing::load::EngineLoad;
use crate::routing::outlier::OutlierState;

/// Load and outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests sent to it and not yet finished (moved by the request path's in-flight guard).
    pub in_flight: AtomicU64,
    pub outlier: OutlierState,
    /// Peak-sensitive EWMA of its time to the response header (`lb = "peak_ewma"`).
    pub latency: PeakEwma,
    /// Requests per second sent to it (used only when it has a `max_requests_per_sec`).
    pub rate: Cell,
    /// What its engine last reported through the control plane ([`crate::routing::load`]).
    pub engine: EngineLoad,
}

/// Time constant of [`PeakEwma`]: a sample's weight halves in about 0.7 τ.
pub const EWMA_TAU_MS: f64 = 10_000.0;

/// A peak-sensitive moving average of latency, in milliseconds (linkerd's / Finagle's): a
/// sample above the average replaces it at once; one below pulls it down with weight
/// `1 - e^(-Δt/τ)`, Δt the time since the previous sample. Without samples it decays towards 0
/// (τ), so an endpoint that was slow is tried again after a while. Two relaxed atomics; two
/// racing samples may lose one (last writer wins), which only blurs the average.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// The average as `f64` bits; 0: no sample yet.
    value: AtomicU64,
    /// When it was last updated (the gateway's clock, ms).
    at_ms: AtomicU64,
}

impl PeakEwma {
    fn decay(since_ms: u64) -> f64 {
        (-(since_ms as f64) / EWMA_TAU_MS).exp()
    }

    /// Adds a sample of `latency_ms` taken at `now_ms`.
    pub fn observe(&self, latency_ms: u64, now_ms: u64) {
        let at = self.at_ms.load(Ordering::Relaxed);
        let current = f64::from_bits(self.value.load(Ordering::Relaxed));
        let sample = latency_ms as f64;
        let next = if sample >= current {
            sample
        } else {
            let w = Self::decay(now_ms.saturating_sub(at));
            current * w + sample * (1.0 - w)
        };
        self.value.store(next.to_bits(), Ordering::Relaxed);
        self.at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The average at `now_ms` (decayed since its last sample).
    pub fn value(&self, now_ms: u64) -> f64 {
        let at = self.at_ms.load(Ordering::Relaxed);
        f64::from_bits(self.value.load(Ordering::Relaxed)) * Self::decay(now_ms.saturating_sub(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_count_at_once_and_lower_samples_and_time_pull_down() {
        let e = PeakEwma::default();
        assert_eq!(e.value(0), 0.0);
        e.observe(10, 1_000);
        e.observe(200, 1_001);
        assert!(
            (e.value(1_001) - 200.0).abs() < 0.1,
            "a peak replaces the average"
        );
        e.observe(10, 1_101);
        let v = e.value(1_101);
        assert!(
            v < 200.0 && v > 190.0,
            "100 ms later a low sample moves it ~1 %: {v}"
        );
        e.observe(10, 31_101);
        assert!(
            e.value(31_101) < 20.0,
            "30 s later it is mostly the new sample"
        );
        assert!(
            e.value(131_101) < 0.01,
            "without samples it decays towards 0"
        );
    }
}
