//! What operators see and do around the request path: the admin listener, the Prometheus
//! metrics, and draining on shutdown.

pub mod admin;
pub mod drain;
pub mod metrics;
