//! The operator API's HTTP server: hyper over any listener (HTTP/1.1 and h2c, as
//! `axum::serve`), with what `axum::serve` cannot set: the request header limits
//! (`[admin] max_header_bytes`, `max_headers`) and hyper's header read timeout. Graceful
//! shutdown as `axum::serve`'s: stop accepting, then let open connections finish.
//!
//! The header size is hyper's own limit (its read buffer): a larger header gets hyper's bare
//! 431 and the connection is closed, before any route is known. The field count is checked in
//! [`header_count`] (hyper's own cap stays at [`HARD_MAX_HEADERS`]), so a request with too many
//! fields gets 431 `REQUEST_HEADER_TOO_LARGE` in `{error, code, timestamp}`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::Layer;

use super::{ApiError, ErrorCode};

/// hyper's smallest read buffer: `max_header_bytes` below it is raised to it.
pub const MIN_HEADER_BYTES: usize = 8192;
/// The most header fields hyper parses (its array); [`header_count`] applies the configured
/// limit below it.
pub const HARD_MAX_HEADERS: usize = 256;
/// How long a whole HTTP/1.1 request header may take (hyper's timeout; without a timer hyper
/// has none). hyper counts from when it starts waiting for a header, so a kept-alive
/// connection idle this long is closed too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 100;

/// `[admin] max_header_bytes` and `max_headers`.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves; requests in progress finish.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HeaderLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: super::tls_listener::ConnCert,
{
    let router = router.layer(axum::middleware::from_fn_with_state(limits, header_count));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_bytes.max(MIN_HEADER_BYTES))
        .max_headers(HARD_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        // As `axum::serve` (HTTP/2 websockets).
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // The client's address reaches the per-address request limit as `ConnectInfo`; its
        // verified TLS client certificate (if any) the client-certificate check.
        let cert = super::tls_listener::ConnCert::peer_cert(&io);
        let service = TowerToHyperService::new(
            (Extension(ConnectInfo(addr)), Extension(cert)).layer(router.clone()),
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%addr, error = %e, "operator API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Middleware: a request with more than `max_headers` fields gets 431.
async fn header_count(State(limits): State<HeaderLimits>, req: Request, next: Next) -> Response {
    if req.headers().len() > limits.max_headers {
        return ApiError::new(
            ErrorCode::HeaderTooLarge,
            format!(
                "the request carries more than {} header fields",
                limits.max_headers
            ),
        )
        .into_response();
    }
    next.run(req).await
}
