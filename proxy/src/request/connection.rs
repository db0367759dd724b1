//! Before any request: a client connection is admitted or shed (`[clients] max_connections`,
//! `max_connections_per_ip`), as pingora's accept loops hand it over and before a byte is read
//! or a TLS handshake is spent on it. A shed connection is closed at once (the accept loop goes
//! on accepting); an admitted one holds its places, and the `client_connections` gauge, until
//! its task ends.
//!
//! The admin listener has a budget of its own (`[admin] max_connections`,
//! `max_connections_per_ip`, [`admin_admission`]), outside the `client_connections` gauge.
//!
//! Cost: two atomic read-modify-writes on accept and two on close (the total and the
//! address's slot, [`multiverse_common::conn_limit`]), one `Box` for the guard; nothing per
//! request.

use std::any::Any;
use std::sync::Arc;

use multiverse_common::conn_limit::{ConnLimit, Permit, Shed};
use pingora_core::services::listening::Admission;
use prometheus::IntGauge;

use crate::ops::metrics::Metrics;

/// An admitted connection's places and its count in the gauge, given back on drop.
struct Admitted {
    _permit: Permit,
    gauge: IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The admission both client listeners share.
pub fn admission(limit: Arc<ConnLimit>, metrics: Arc<Metrics>) -> Admission {
    Arc::new(move |peer| {
        let ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
        match limit.admit(ip) {
            Ok(permit) => {
                metrics.client_connections.inc();
                Some(Box::new(Admitted {
                    _permit: permit,
                    gauge: metrics.client_connections.clone(),
                }) as Box<dyn Any + Send>)
            }
            Err(shed) => {
                metrics
                    .connections_shed
                    .with_label_values(&[shed.label()])
                    .inc();
                tracing::debug!(?ip, limit = shed.label(), "connection shed");
                None
            }
        }
    })
}

/// The admin listener's admission: its own limits, its sheds counted as `admin_<limit>`.
pub fn admin_admission(limit: Arc<ConnLimit>, metrics: Arc<Metrics>) -> Admission {
    Arc::new(move |peer| {
        let ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
        match limit.admit(ip) {
            Ok(permit) => Some(Box::new(permit) as Box<dyn Any + Send>),
            Err(shed) => {
                let label = match shed {
                    Shed::Total => "admin_max_connections",
                    Shed::PerIp => "admin_max_connections_per_ip",
                };
                metrics.connections_shed.with_label_values(&[label]).inc();
                tracing::debug!(?ip, limit = label, "admin connection shed");
                None
            }
        }
    })
}
