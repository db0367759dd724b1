//! The operator REST API: one axum router per resource, merged here. `/admin/*`,
//! `/instances*`, `/templates` and `/events` need an API key ([`auth`]); so do the reads that
//! show host detail (`/gpus`, `/snapshot`, `/proxies`) unless `[admin] public_read`; the rest
//! is open (health, metrics, OpenAPI, stats — counts without names —, the web UI).
//!
//! With `[admin.tls]` the API is served over TLS ([`tls_listener`]) and, with a client CA,
//! needs an operator's certificate ([`client_cert`]) before any of that.
//!
//! Errors are JSON `{"error", "code", "timestamp"}` with a stable `code` ([`error`]). Every
//! response carries the request's `x-request-id` ([`request_id`]), and so do the log lines
//! written while it runs; with `[tracing] otlp_endpoint` each request is an OTLP span
//! ([`spans`]).

pub mod auth;
pub mod backends;
pub mod client_cert;
pub mod client_limit;
pub mod conn_limit;
pub mod error;
pub mod events;
pub mod extract;
pub mod gpus;
pub mod http_server;
pub mod instances;
pub mod keys;
pub mod listing;
pub mod logs;
pub mod models;
pub mod openapi;
pub mod proxies;
pub mod request_id;
pub mod spans;
pub mod sse;
pub mod stats;
pub mod system;
pub mod tls_listener;
pub mod ui;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub use error::{ApiError, ErrorCode};
pub(crate) use extract::{body, query};

use crate::backends::admission::Admission;
use crate::backends::checker::Checker;
use crate::backends::registry::Registry;
use crate::discovery::nodes::Nodes;
use crate::discovery::publisher::Publisher;
use crate::metrics::ControlMetrics;

/// Everything handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub control_plane_id: String,
    pub publisher: Publisher,
    pub nodes: Arc<Nodes>,
    pub registry: Arc<Registry>,
    /// Registrations and updates of backends.
    pub admission: Arc<Admission>,
    /// Forced health checks.
    pub checker: Arc<Checker>,
    pub metrics: Arc<ControlMetrics>,
    pub keys: Arc<auth::Keys>,
    /// Inference API keys (`/admin/keys`).
    pub inference_keys: Arc<crate::keys::Keys>,
    /// Models' routing policies (`/admin/models/{name}/policy`).
    pub policies: Arc<crate::models::Policies>,
    /// `[admin] per_ip_rpm`, when on.
    pub client_limit: Option<Arc<client_limit::ClientLimit>>,
    pub instances: Arc<crate::instances::Manager>,
    pub gpus: Arc<dyn crate::gpu::GpuProbe>,
    pub events: Arc<crate::events::EventBus>,
    /// `/gpus`, `/snapshot`, `/proxies` without a key.
    pub public_read: bool,
    /// Largest request body read (`[admin] max_body_bytes`).
    pub max_body_bytes: usize,
    /// `[ui]`: what `GET /ui/config` tells the web UI.
    pub ui: Arc<crate::config::UiConfig>,
    /// `[admin] max_connections`, `max_connections_per_ip` (the listener's).
    pub conn_limit: Arc<multiverse_common::conn_limit::ConnLimit>,
    /// `[admin] max_header_bytes`, `max_headers`.
    pub header_limits: http_server::HeaderLimits,
    /// `[admin.tls]`: the listener's TLS, and client certificates when it has a client CA.
    pub tls: Option<Arc<client_cert::ClientCerts>>,
    /// `[tracing]`: the API requests' spans.
    pub spans: spans::ApiSpans,
}

/// Serves the API on `listener` (over TLS with `[admin.tls]`) until `shutdown` resolves;
/// requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (limit, metrics, headers) = (
        state.conn_limit.clone(),
        state.metrics.clone(),
        state.header_limits,
    );
    let tls = state.tls.as_ref().map(|c| c.tls.clone());
    let app = router(state);
    // Connection limits first; TLS wraps `Limited` (no handshake is spent on a shed one).
    let listener = conn_limit::Limited::new(listener, limit, metrics);
    match tls {
        Some(tls) => {
            let listener = tls_listener::TlsListener::new(listener, tls)?;
            http_server::serve(listener, app, headers, shutdown).await
        }
        None => http_server::serve(listener, app, headers, shutdown).await,
    }
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let admin = backends::router()
        .merge(instances::router())
        .merge(keys::router())
        .merge(models::router())
        .merge(events::router())
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            auth::require_key,
        ));
    let reads = proxies::router().merge(gpus::router());
    let reads = if state.public_read {
        reads
    } else {
        reads.layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            auth::require_key,
        ))
    };
    let tls = state.tls.clone();
    let api_spans = state.spans.clone();
    let api = Router::new()
        .merge(system::router())
        .route("/openapi.json", get(openapi::document))
        .merge(reads)
        .merge(stats::router())
        .merge(admin)
        .merge(ui::router())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn(extract::linger))
        .layer(axum::middleware::from_fn_with_state(
            state.client_limit.clone(),
            client_limit::limit,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(ui::browser_pages));
    // With a client CA, nothing (not even the UI's pages) answers without a certificate.
    let api = match tls {
        Some(certs) => api.layer(axum::middleware::from_fn_with_state(
            certs,
            client_cert::require,
        )),
        None => api,
    };
    // Outermost: every response, a refusal for want of a certificate too, carries the
    // request's x-request-id, and its span (when exported) names it.
    api.layer(axum::middleware::from_fn_with_state(
        api_spans,
        spans::record,
    ))
    .layer(axum::middleware::from_fn(request_id::tag))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
