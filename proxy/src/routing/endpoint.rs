//! Runtime state of one endpoint: its requests in flight (what least-request balancing reads)
//! and its outlier-detection state. Shared by endpoint id across table versions, so a table swap
//! never resets load balancing or an ejection.

use std::sync::atomic::AtomicU64;

use crate::routing::outlier::OutlierState;

/// Load and outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests sent to it and not yet finished (moved by the request path's in-flight guard).
    pub in_flight: AtomicU64,
    pub outlier: OutlierState,
}
