//! What one request reports while it runs: its count against the endpoint it is sent to (the
//! load that least-request balancing reads) and the proxy-wide in-flight gauge.
//!
//! Cost per attempt: two relaxed atomic adds and an `Arc` clone each way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::IntGauge;

use crate::ops::metrics::Metrics;
use crate::routing::endpoint::EndpointState;
use crate::routing::table::Endpoint;

/// Counts a request against an endpoint while it is in flight (dropped at the end, or replaced
/// when a retry moves to another endpoint).
pub struct InFlight {
    state: Arc<EndpointState>,
    gauge: IntGauge,
}

impl InFlight {
    pub fn start(endpoint: &Endpoint, metrics: &Metrics) -> Self {
        endpoint.state.in_flight.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics.in_flight().clone();
        gauge.inc();
        Self {
            state: endpoint.state.clone(),
            gauge,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}
