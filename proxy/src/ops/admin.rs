//! The admin listener (its own port, never the client port): liveness, readiness, metrics and
//! a dump of the routing table the proxy runs.
//!
//! - `GET /healthz` — 200 while the process serves.
//! - `GET /ready` — 200 once a routing table has been received and the client listener
//!   accepts, 503 before.
//! - `GET /metrics` — Prometheus text.
//! - `GET /config_dump` — the table (version, source, models, endpoints; never secrets), and
//!   the control planes: each configured URL (a `dns+` name with its resolved addresses), each
//!   discovery stream (up or not, the plane that answered, its version), the planes in the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::ops::metrics::Metrics;
use crate::ops::planes::PlanesStatus;
use crate::routing::TableState;

/// Set once the client listener's accept loops run (its socket, bound before, accepts from the
/// start): the admin `/ready` answers 200 only after it. The admin listener needs no flag of its
/// own, since it is the one answering.
#[derive(Debug, Default)]
pub struct Listening(AtomicBool);

impl Listening {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin HTTP app.
pub struct Admin {
    pub state: Arc<TableState>,
    pub metrics: Arc<Metrics>,
    pub planes: Arc<PlanesStatus>,
    pub node_id: String,
    /// Whether the client listener is bound.
    pub listening: Arc<Listening>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let mut resp = match path.as_str() {
            "/healthz" => json_reply(StatusCode::OK, json!({"status": "ok"})),
            "/ready" => {
                let table = self.state.table();
                if !self.listening.is_set() {
                    json_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "not_ready", "reason": "client listener not bound yet"}),
                    )
                } else if self.state.is_ready() {
                    json_reply(
                        StatusCode::OK,
                        json!({"status": "ready", "version": table.version}),
                    )
                } else {
                    json_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "not_ready", "reason": "no routing table received yet"}),
                    )
                }
            }
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/config_dump" => {
                let table = self.state.table();
                let in_table: serde_json::Map<String, serde_json::Value> = self
                    .state
                    .planes()
                    .into_iter()
                    .map(|(id, (via, version))| (id, json!({"via": via, "version": version})))
                    .collect();
                json_reply(
                    StatusCode::OK,
                    json!({
                        "node_id": self.node_id,
                        "ready": self.state.is_ready(),
                        "control_planes": self.planes.snapshot(),
                        "planes": in_table,
                        "table": &*table,
                    }),
                )
            }
            _ => json_reply(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no admin route {path}"), "code": "not_found"}),
            ),
        };
        let len = resp.body().len();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
        resp
    }
}
