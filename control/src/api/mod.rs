//! The operator REST API: one axum router per resource, merged here. `/admin/*`,
//! `/instances*`, `/templates` and `/events` need an API key ([`auth`]); so do the reads that
//! show host detail (`/gpus`, `/snapshot`, `/proxies`) unless `[admin] public_read`; the rest
//! is open (health, metrics, OpenAPI, stats — counts without names —, the web UI).
//!
//! Errors are JSON `{"error", "code", "timestamp"}` with a stable `code` ([`error`]). Every
//! response carries the request's `x-request-id` ([`request_id`]), and so do the log lines
//! written while it runs.

pub mod auth;
pub mod backends;
pub mod client_limit;
pub mod error;
pub mod events;
pub mod extract;
pub mod gpus;
pub mod instances;
pub mod keys;
pub mod listing;
pub mod logs;
pub mod openapi;
pub mod proxies;
pub mod request_id;
pub mod sse;
pub mod stats;
pub mod system;
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
}

/// Serves the API on `listener` until `shutdown` resolves; requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The client's address reaches the per-address limit as `ConnectInfo`.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let admin = backends::router()
        .merge(instances::router())
        .merge(keys::router())
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
    Router::new()
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
        .layer(axum::middleware::from_fn(ui::browser_pages))
        .layer(axum::middleware::from_fn(request_id::tag))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
