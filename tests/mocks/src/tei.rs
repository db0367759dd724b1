//! `mock-tei`: a stand-in for Hugging Face TEI's `text-embeddings-router`.
//!
//! It accepts TEI's command line ([`TeiArgs`], in [`super::tei_args`]), so a supervisor can
//! launch it exactly as it would launch TEI, plus test knobs (failure injection, latency,
//! simulated batching, RSS ballast, simulated VRAM, a Prometheus listener). This module holds
//! the state shared by both front ends ([`TeiCore`]: admission, failure/hang injection,
//! metrics, health) and the process entry point; the HTTP API lives in [`super::tei_http`], the
//! gRPC API in [`super::tei_grpc`], the deterministic model in [`super::tei_model`], the
//! inference step in [`super::tei_batching`], the metrics in [`super::tei_metrics`], the
//! process resources in [`super::tei_resources`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::common::{self, Running, Shutdown, Stats};
use super::tei_batching::{Batching, Load, Timing};
use super::tei_metrics::{self, TeiMetrics};
use super::tei_model::{TeiError, Vocab};
use super::{tei_grpc, tei_http, tei_resources};

pub use super::tei_args::{DType, Pooling, TeiArgs};

/// Largest input, in tokens, as `/info` reports it.
pub const MAX_INPUT_LENGTH: usize = 512;

/// Why a model request was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--fail-after` has triggered.
    Failed,
    /// The server is shutting down (a hung request is released).
    ShuttingDown,
}

/// State shared by the HTTP and gRPC front ends of one server.
#[derive(Debug)]
pub struct TeiCore {
    /// The command line.
    pub args: TeiArgs,
    /// The instance name.
    pub name: String,
    /// `/mock/stats` counters.
    pub stats: Arc<Stats>,
    /// TEI's Prometheus metrics (`/metrics`, `--serve-prometheus`).
    pub metrics: Arc<TeiMetrics>,
    /// Batch capacity (`--simulate-batching`).
    pub batching: Batching,
    /// Token ids seen by `tokenize`, for `decode`.
    pub vocab: Vocab,
    /// grpc.health.v1 statuses.
    pub health: HealthReporter,
    /// Inputs of each `/embed` request, in arrival order (`GET /mock/embed_batches`).
    embed_batches: std::sync::Mutex<Vec<u32>>,
    shutdown: Shutdown,
    admitted: AtomicU64,
    successes: AtomicU64,
}

impl TeiCore {
    /// State for a server bound at `addr`.
    pub fn new(args: TeiArgs, addr: SocketAddr, shutdown: Shutdown) -> Self {
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| format!("mock-tei@{addr}"));
        let batching = Batching::new(&args);
        Self {
            args,
            name,
            stats: Arc::new(Stats::default()),
            metrics: Arc::new(TeiMetrics::new()),
            batching,
            vocab: Vocab::default(),
            health: HealthReporter::new(),
            embed_batches: std::sync::Mutex::new(Vec::new()),
            shutdown,
            admitted: AtomicU64::new(0),
            successes: AtomicU64::new(0),
        }
    }

    /// Counts one `/embed` request of `inputs` inputs (before it is validated).
    pub fn record_embed_batch(&self, inputs: usize) {
        self.embed_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(u32::try_from(inputs).unwrap_or(u32::MAX));
    }

    /// The input counts of the `/embed` requests so far, in arrival order.
    pub fn embed_batches(&self) -> Vec<u32> {
        self.embed_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The OpenAI-route model name.
    pub fn served_model_name(&self) -> &str {
        self.args
            .served_model_name
            .as_deref()
            .unwrap_or(&self.args.model_id)
    }

    /// Whether `--hang-after` has triggered (nothing answers any more).
    pub fn is_hung(&self) -> bool {
        self.args
            .hang_after
            .is_some_and(|n| self.admitted.load(Ordering::SeqCst) >= n)
    }

    /// Whether `--fail-after` has triggered.
    pub fn is_failed(&self) -> bool {
        self.args
            .fail_after
            .is_some_and(|n| self.successes.load(Ordering::SeqCst) >= n)
    }

    /// Holds this model request for `--stall-ms` when it is one `--stall-every` picks.
    pub async fn stall(&self) {
        if self.stats.stall_turn(self.args.stall_every) {
            common::delay_ms(self.args.stall_ms).await;
        }
    }

    /// Never answers: resolves only when the server shuts down.
    pub async fn hang(&self) {
        self.shutdown.wait().await;
    }

    /// Admits one model request: counts it, applies hang/fail injection and (unless batching
    /// is simulated, which spends it in [`TeiCore::infer`]) `--latency-ms`.
    pub async fn admit(&self) -> Result<(), Refusal> {
        self.metrics.request_count.inc();
        let n = self.admitted.fetch_add(1, Ordering::SeqCst);
        if self.args.hang_after.is_some_and(|limit| n >= limit) {
            tracing::debug!(request = n + 1, "hang-after reached; not answering");
            self.hang().await;
            self.record_failure();
            return Err(Refusal::ShuttingDown);
        }
        if self.is_failed() {
            self.record_failure();
            return Err(Refusal::Failed);
        }
        if !self.batching.simulated() {
            common::delay_ms(self.args.latency_ms).await;
        }
        Ok(())
    }

    /// The inference step of an answered request: TEI's `--max-concurrent-requests` check,
    /// then the batch queue and `--latency-ms` when batching is simulated (see
    /// [`super::tei_batching`]). `load` is `None` for requests that are no model call.
    pub async fn infer(&self, load: Option<Load>) -> Result<Option<Timing>, TeiError> {
        let _permit = self.batching.permit(load)?;
        self.batching.infer(load, &self.metrics).await
    }

    /// Counts a successful model request started at `started` and records its durations; the
    /// one reaching `--fail-after` turns the server unhealthy.
    pub async fn record_success(&self, started: Instant, timing: Option<Timing>) {
        self.metrics.request_success.inc();
        let (queue, inference) = timing.map_or(
            (Duration::ZERO, Duration::from_millis(self.args.latency_ms)),
            |t| (t.queue, t.inference),
        );
        self.metrics
            .observe_success(started.elapsed(), queue, inference);
        let done = self.successes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.args.fail_after == Some(done) {
            tracing::info!(successes = done, "fail-after reached; failing from now on");
            self.set_health(ServingStatus::NotServing).await;
        }
    }

    /// Counts a failed model request.
    pub fn record_failure(&self) {
        self.metrics.request_failure.inc();
    }

    /// Sets the gRPC health of "" and every tei.v1 service.
    pub async fn set_health(&self, status: ServingStatus) {
        for service in std::iter::once("").chain(tei_grpc::SERVICE_NAMES) {
            self.health.set_service_status(service, status).await;
        }
    }

    /// The error a refused request gets.
    pub fn refusal_error(&self, refusal: Refusal) -> TeiError {
        match refusal {
            Refusal::Failed => TeiError::failed(format!(
                "mock backend failure (--fail-after {} reached)",
                self.args.fail_after.unwrap_or(0)
            )),
            Refusal::ShuttingDown => TeiError::unhealthy("server is shutting down"),
        }
    }
}

/// Binds `--hostname`:`--port` and returns the listener with its actual address.
pub async fn bind(args: &TeiArgs) -> anyhow::Result<(TcpListener, SocketAddr)> {
    bind_port(args, args.port).await
}

/// Binds `--hostname`:`--prometheus-port` when `--serve-prometheus` is given.
pub async fn bind_prometheus(args: &TeiArgs) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    if !args.serve_prometheus {
        return Ok(None);
    }
    bind_port(args, args.prometheus_port).await.map(Some)
}

async fn bind_port(args: &TeiArgs, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((args.hostname.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{port}: {e}", args.hostname))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves HTTP or gRPC (per `--grpc`) on a bound listener, and the metrics on `prometheus`
/// when given, until `shutdown` fires.
pub async fn serve(
    args: TeiArgs,
    listener: TcpListener,
    prometheus: Option<TcpListener>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let grpc = args.grpc;
    let core = Arc::new(TeiCore::new(args, addr, shutdown.clone()));
    let metrics_server = prometheus.map(|listener| {
        tokio::spawn(tei_metrics::serve(
            core.metrics.clone(),
            listener,
            shutdown.clone(),
        ))
    });
    let served = if grpc {
        tracing::info!(%addr, model_id = %core.args.model_id, "mock-tei serving gRPC");
        tei_grpc::serve(core, listener, shutdown).await
    } else {
        tracing::info!(%addr, model_id = %core.args.model_id, "mock-tei serving HTTP");
        let stats = core.stats.clone();
        let router = tei_http::router(core)?;
        common::serve_http(listener, router, stats, shutdown).await
    };
    if let Some(task) = metrics_server {
        match task.await {
            Ok(Err(e)) => tracing::warn!("prometheus listener failed: {e}"),
            Err(e) => tracing::warn!("prometheus listener task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    served
}

/// Binds and serves in a background task of the current runtime (for in-process tests; the
/// process resources of [`run`] — ballast, simulated VRAM — are not acquired).
pub async fn spawn(args: TeiArgs) -> anyhow::Result<Running> {
    let (listener, addr) = bind(&args).await?;
    let prometheus = bind_prometheus(&args).await?.map(|(l, _)| l);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(serve(args, listener, prometheus, shutdown.clone()));
    Ok(Running::new(addr, shutdown, handle))
}

/// The whole process: take the process resources (RSS ballast, simulated VRAM record), wait
/// `--startup-delay-ms`, bind, announce `LISTENING <addr>` (and `PROMETHEUS <addr>`), serve
/// until SIGTERM/SIGINT, then give the resources back (the VRAM record is removed).
pub async fn run(args: TeiArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    if let Some(endpoint) = &args.otlp_endpoint {
        // Tests see the flags reach the process here (the mock exports no spans).
        tracing::info!(otlp_endpoint = %endpoint, otlp_service_name = %args.otlp_service_name, "OTLP export configured (not exported by the mock)");
    }
    let resources = tei_resources::Resources::acquire(&args)?;
    resources.grow_in_background(&args, shutdown.clone());
    if args.startup_delay_ms > 0 {
        tracing::info!(ms = args.startup_delay_ms, "simulating model loading");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.startup_delay_ms)) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
    let (listener, addr) = bind(&args).await?;
    let prometheus = bind_prometheus(&args).await?;
    common::announce(addr);
    let prometheus = prometheus.map(|(listener, addr)| {
        common::announce_as("PROMETHEUS", addr);
        listener
    });
    let result = serve(args, listener, prometheus, shutdown).await;
    drop(resources);
    result
}
