//! What operators see and do around the request path: the admin listener, the Prometheus
//! metrics, the control planes' status, and draining on shutdown.

pub mod admin;
pub mod drain;
pub mod metrics;
pub mod planes;
