//! Plumbing shared by both mock servers: deterministic hashing and embeddings, the request
//! statistics behind `GET /mock/stats`, the `x-mock-instance` header, size-limited body reading,
//! shutdown handling (SIGTERM/SIGINT) and the `LISTENING <addr>` readiness line.

use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::deterministic::{fnv1a64, hex16};

/// Header naming the mock instance that produced a response.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-mock-instance");
/// Header carrying the length of the raw request body (POST model routes).
pub const BODY_LEN_HEADER: HeaderName = HeaderName::from_static("x-mock-body-len");
/// Header carrying the FNV-1a 64 of the raw request body, 16 lowercase hex digits.
pub const BODY_FNV_HEADER: HeaderName = HeaderName::from_static("x-mock-body-fnv1a64");

/// How long a server keeps draining in-flight requests after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counters behind `GET /mock/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
    streams_active: AtomicU64,
    streams_completed: AtomicU64,
    last_body_len: AtomicU64,
    last_body_fnv: AtomicU64,
    /// Model requests seen by the stall pattern (`--stall-every`).
    stall_seq: AtomicU64,
    stalled: AtomicU64,
    cancelled: AtomicU64,
}

/// The JSON document served at `GET /mock/stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The instance name (`--name`).
    pub name: String,
    /// TCP connections accepted so far (to see connection reuse by clients and proxies).
    pub connections: u64,
    /// Requests handled on model routes.
    pub requests: u64,
    /// SSE streams currently being written.
    pub streams_active: u64,
    /// SSE streams whose last event was handed to the connection.
    pub streams_completed: u64,
    /// Length of the last model request body.
    pub last_body_len: u64,
    /// FNV-1a 64 of the last model request body, 16 lowercase hex digits.
    pub last_body_fnv1a64: String,
    /// Model requests held for `--stall-ms` by `--stall-every`.
    #[serde(default)]
    pub stalled: u64,
    /// Model requests whose client went away before the answer was ready (a hedging proxy's
    /// cancelled loser, a client's timeout).
    #[serde(default)]
    pub cancelled: u64,
}

impl Stats {
    /// Counts one model request and remembers its body; returns the body's size and hash.
    pub fn record_request(&self, body: &[u8]) -> BodyInfo {
        let info = BodyInfo {
            len: body.len(),
            fnv: fnv1a64(body),
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.last_body_len.store(info.len as u64, Ordering::SeqCst);
        self.last_body_fnv.store(info.fnv, Ordering::SeqCst);
        info
    }

    /// Model requests handled so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The current values, for `GET /mock/stats`.
    pub fn snapshot(&self, name: &str) -> StatsSnapshot {
        StatsSnapshot {
            name: name.to_string(),
            connections: self.connections.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            streams_active: self.streams_active.load(Ordering::SeqCst),
            streams_completed: self.streams_completed.load(Ordering::SeqCst),
            last_body_len: self.last_body_len.load(Ordering::SeqCst),
            last_body_fnv1a64: hex16(self.last_body_fnv.load(Ordering::SeqCst)),
            stalled: self.stalled.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
        }
    }

    /// Whether this model request is one `--stall-every N` holds: every Nth (0: none);
    /// counted in `stalled`.
    pub fn stall_turn(&self, every: u64) -> bool {
        if every == 0 {
            return false;
        }
        let n = self.stall_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let stall = n % every == 0;
        if stall {
            self.stalled.fetch_add(1, Ordering::SeqCst);
        }
        stall
    }

    /// Marks a model request as being answered; dropped before [`AnswerGuard::answered`] (the
    /// server dropped the handler: its client went away), it counts in `cancelled`.
    pub fn answering(self: &Arc<Self>) -> AnswerGuard {
        AnswerGuard {
            stats: Arc::clone(self),
            answered: false,
        }
    }

    /// Counts an accepted connection.
    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks an SSE stream as started; the guard ends it when finished or dropped.
    pub fn start_stream(self: &Arc<Self>) -> StreamGuard {
        self.streams_active.fetch_add(1, Ordering::SeqCst);
        StreamGuard {
            stats: Arc::clone(self),
            completed: false,
        }
    }
}

/// Keeps `streams_active` incremented while an SSE stream is being written.
///
/// Dropping it (the client went away) only decrements `streams_active`; [`StreamGuard::finish`]
/// also counts the stream in `streams_completed`.
#[derive(Debug)]
pub struct StreamGuard {
    stats: Arc<Stats>,
    completed: bool,
}

impl StreamGuard {
    /// The last event has been handed to the connection.
    pub fn finish(mut self) {
        self.completed = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.completed {
            self.stats.streams_completed.fetch_add(1, Ordering::SeqCst);
        }
        self.stats.streams_active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A model request being answered (see [`Stats::answering`]).
#[derive(Debug)]
pub struct AnswerGuard {
    stats: Arc<Stats>,
    answered: bool,
}

impl AnswerGuard {
    /// The answer is ready and handed to the server.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        if !self.answered {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Size and FNV-1a 64 of a request body, echoed as `x-mock-body-*` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInfo {
    /// Body length in bytes.
    pub len: usize,
    /// FNV-1a 64 of the body.
    pub fnv: u64,
}

impl BodyInfo {
    /// Adds `x-mock-body-len` and `x-mock-body-fnv1a64` to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(BODY_LEN_HEADER, HeaderValue::from(self.len));
        if let Ok(value) = HeaderValue::from_str(&hex16(self.fnv)) {
            headers.insert(BODY_FNV_HEADER, value);
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadBodyError {
    /// The body is longer than the limit.
    TooLarge,
    /// The connection failed while reading.
    Io(String),
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ReadBodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReadBodyError::Io(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(ReadBodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The instance name as a header value (an error for names a header cannot carry).
pub fn instance_header_value(name: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(name)
        .map_err(|_| anyhow::anyhow!("instance name {name:?} is not a valid HTTP header value"))
}

/// Axum middleware adding `x-mock-instance` to every response.
pub async fn add_instance_header(
    State(name): State<HeaderValue>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(INSTANCE_HEADER, name);
    response
}

/// A one-shot, cloneable shutdown trigger.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A trigger that has not fired yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Fires the trigger (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the trigger has fired.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the trigger has fired.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Fires the trigger on SIGTERM or SIGINT. The handlers are installed before this returns,
    /// so a signal sent right after (e.g. once `LISTENING` is printed) is never lost.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        let signal = termination_signal();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("termination signal received, shutting down");
            this.trigger();
        });
    }
}

/// Installs SIGTERM and SIGINT handlers now; the returned future resolves on either.
pub use multiverse_common::signals::termination as termination_signal;

/// Sleeps `ms` milliseconds (nothing for 0).
pub async fn delay_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Prints the readiness line `LISTENING <addr>` to stdout and flushes it.
pub fn announce(addr: SocketAddr) {
    announce_as("LISTENING", addr);
}

/// Prints `<what> <addr>` to stdout and flushes it (after `LISTENING`, further listeners).
pub fn announce_as(what: &str, addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout must not kill the server; the line is only a convenience for callers.
    let _ = writeln!(stdout, "{what} {addr}");
    let _ = stdout.flush();
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON when `json`.
pub fn init_tracing(json: bool) {
    // Fails only if a subscriber is already installed, which is fine.
    let _ = multiverse_common::telemetry::init(json);
}

/// Serves `router` on `listener` until `shutdown` fires, then drains in-flight requests for a
/// short grace period.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    serve_on(
        listener.tap_io(move |tcp| accepted(&stats, tcp)),
        router,
        shutdown,
    )
    .await
}

/// [`serve_http`] over TLS with `config`.
pub async fn serve_https(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = crate::tls::TlsListener::new(listener, config);
    serve_on(
        listener.tap_io(move |tls| accepted(&stats, tls.get_ref().0)),
        router,
        shutdown,
    )
    .await
}

fn accepted(stats: &Stats, tcp: &tokio::net::TcpStream) {
    stats.connection_accepted();
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {err}");
    }
}

async fn serve_on<L>(listener: L, router: Router, shutdown: Shutdown) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let signal = {
        let shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = grace_expired(shutdown) => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}

/// Resolves a short grace period (`SHUTDOWN_GRACE`, 2 s) after `shutdown` fires.
pub async fn grace_expired(shutdown: Shutdown) {
    shutdown.wait().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// A server running in a background task (see `openai::spawn` and `tei::spawn`).
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Wraps a spawned server task.
    pub fn new(
        addr: SocketAddr,
        shutdown: Shutdown,
        handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server (as SIGTERM would) and waits for it to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.handle
            .await
            .map_err(|e| anyhow::anyhow!("server task failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_guard_counts() {
        let stats = Arc::new(Stats::default());
        let a = stats.start_stream();
        let b = stats.start_stream();
        assert_eq!(stats.snapshot("n").streams_active, 2);
        a.finish();
        drop(b);
        let snap = stats.snapshot("n");
        assert_eq!((snap.streams_active, snap.streams_completed), (0, 1));
    }
}
