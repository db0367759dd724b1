//! What one request reports while it runs: its count against the endpoint it is sent to (the
//! load that least-request balancing reads) and the proxy-wide in-flight gauge.
//!
//! Cost per attempt: two relaxed atomic adds and an `Arc` clone each way; for an endpoint with a
//! `max_concurrent`, one more atomic load at the end (whether its model's queue has waiters to
//! wake).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::IntGauge;

use crate::ops::metrics::Metrics;
use crate::routing::endpoint::EndpointState;
use crate::routing::queue::AdmitQueue;
use crate::routing::table::{Endpoint, Route};

/// Counts a request against an endpoint while it is in flight (dropped at the end, or replaced
/// when a retry moves to another endpoint).
pub struct InFlight {
    state: Arc<EndpointState>,
    gauge: IntGauge,
    /// The queue to wake when the slot is freed (endpoints with a `max_concurrent`).
    wake: Option<Arc<AdmitQueue>>,
}

impl InFlight {
    /// Counts a request against `route.endpoints[index]` whose in-flight count already
    /// includes it ([`crate::routing::pick::pick_reserved`]).
    pub fn reserved(route: &Route, endpoint: &Endpoint, metrics: &Metrics) -> Self {
        let gauge = metrics.in_flight().clone();
        gauge.inc();
        Self {
            state: endpoint.state.clone(),
            gauge,
            wake: (endpoint.max_concurrent > 0).then(|| route.queue.clone()),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        if let Some(queue) = &self.wake {
            if !queue.is_empty() {
                queue.wake_one();
            }
        }
    }
}
