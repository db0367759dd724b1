//! `mock-tei`: a stand-in for Hugging Face TEI's `text-embeddings-router`.
//!
//! It accepts TEI's command line ([`TeiArgs`], every flag also readable from its environment
//! variable, as TEI does), so a supervisor can launch it exactly as it would launch TEI, plus a
//! few test knobs (`--grpc`, `--startup-delay-ms`, `--latency-ms`, `--fail-after`,
//! `--hang-after`, `--dims`, `--name`). This module holds the command line, the state shared by
//! both front ends ([`TeiCore`]: admission, failure/hang injection, counters, health) and the
//! process entry point; the HTTP API lives in [`super::tei_http`], the gRPC API in
//! [`super::tei_grpc`], the deterministic model in [`super::tei_model`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::common::{self, Running, Shutdown, Stats};
use super::tei_model::{TeiError, Vocab};
use super::{tei_grpc, tei_http};

/// Pooling methods TEI accepts for `--pooling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pooling {
    /// Select the CLS token as embedding.
    Cls,
    /// Apply mean pooling on the token embeddings.
    Mean,
    /// Apply SPLADE on the token embeddings (sparse models).
    Splade,
    /// Select the last token as embedding.
    LastToken,
}

impl Pooling {
    /// The name TEI reports in `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Mean => "mean",
            Self::Splade => "splade",
            Self::LastToken => "last_token",
        }
    }
}

/// Data types TEI accepts for `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DType {
    /// 16-bit floats.
    Float16,
    /// 32-bit floats.
    Float32,
    /// bfloat16.
    Bfloat16,
}

impl DType {
    /// The name TEI reports in `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Float16 => "float16",
            Self::Float32 => "float32",
            Self::Bfloat16 => "bfloat16",
        }
    }
}

/// Command line of `mock-tei`: TEI's router flags, then the mock's own knobs.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-tei",
    version,
    about = "A mock of TEI's text-embeddings-router with deterministic answers",
    long_about = "A mock of Hugging Face TEI's text-embeddings-router with deterministic \
                  answers. It accepts TEI's flags (and their environment variables) and serves \
                  TEI's HTTP API, or its tei.v1 gRPC API with --grpc. After binding it prints \
                  `LISTENING <ip>:<port>` on stdout; logs go to stderr (RUST_LOG, default info)."
)]
pub struct TeiArgs {
    /// The model id, reported in /info (the mock loads nothing).
    #[arg(long, env, default_value = "BAAI/bge-small-en-v1.5")]
    pub model_id: String,

    /// The model revision (accepted, ignored).
    #[arg(long, env)]
    pub revision: Option<String>,

    /// Number of tokenizer workers, reported in /info [default: number of CPUs].
    #[arg(long, env)]
    pub tokenization_workers: Option<usize>,

    /// The dtype forced upon the model, reported in /info [default: float32].
    #[arg(long, env, value_enum)]
    pub dtype: Option<DType>,

    /// The model name of the OpenAI-compatible route [default: --model-id].
    #[arg(long, env)]
    pub served_model_name: Option<String>,

    /// The pooling method, reported in /info [default: cls].
    #[arg(long, env, value_enum)]
    pub pooling: Option<Pooling>,

    /// Maximum concurrent requests, reported in /info.
    #[arg(long, env, default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Maximum tokens in a batch, reported in /info.
    #[arg(long, env, default_value_t = 16384)]
    pub max_batch_tokens: usize,

    /// Maximum requests in a batch, reported in /info.
    #[arg(long, env)]
    pub max_batch_requests: Option<usize>,

    /// Maximum inputs in one client request; more get 413 (HTTP) / INVALID_ARGUMENT (gRPC).
    #[arg(long, env, default_value_t = 32)]
    pub max_client_batch_size: usize,

    /// Truncate inputs longer than the maximum input length instead of refusing them.
    #[arg(long, env)]
    pub auto_truncate: bool,

    /// Name of the default prompt (accepted, ignored).
    #[arg(long, env, conflicts_with = "default_prompt")]
    pub default_prompt_name: Option<String>,

    /// Default prompt text (accepted, ignored).
    #[arg(long, env, conflicts_with = "default_prompt_name")]
    pub default_prompt: Option<String>,

    /// Path to the Dense module (accepted, ignored).
    #[arg(long, env)]
    pub dense_path: Option<String>,

    /// CUDA device id (accepted, ignored).
    #[arg(long, env, default_value_t = 0)]
    pub device_id: usize,

    /// Deprecated Hugging Face Hub token (accepted, ignored).
    #[arg(long, env)]
    pub hf_api_token: Option<String>,

    /// Hugging Face Hub token (accepted, ignored).
    #[arg(long, env, conflicts_with = "hf_api_token")]
    pub hf_token: Option<String>,

    /// The IP address to listen on.
    #[arg(long, env = "HOSTNAME", default_value = "0.0.0.0")]
    pub hostname: String,

    /// The port to listen on (0 picks a free port; the real one is printed).
    #[arg(long, short, env, default_value_t = 3000)]
    pub port: u16,

    /// TEI's internal router/backend socket (accepted, ignored).
    #[arg(long, env, default_value = "/tmp/text-embeddings-inference-server")]
    pub uds_path: String,

    /// Hugging Face Hub cache location (accepted, ignored).
    #[arg(long, env)]
    pub huggingface_hub_cache: Option<String>,

    /// Largest request body in bytes; bigger bodies get 413.
    #[arg(long, env, default_value_t = 2_000_000)]
    pub payload_limit: usize,

    /// Require `Authorization: Bearer <key>` (HTTP header or gRPC metadata).
    #[arg(long, env)]
    pub api_key: Option<String>,

    /// Write logs as JSON.
    #[arg(long, env)]
    pub json_output: bool,

    /// Leave spans out of the logs (accepted, ignored).
    #[arg(long, env)]
    pub disable_spans: bool,

    /// OTLP endpoint (accepted, ignored).
    #[arg(long, env)]
    pub otlp_endpoint: Option<String>,

    /// OpenTelemetry service name (accepted, ignored).
    #[arg(long, env, default_value = "text-embeddings-inference.server")]
    pub otlp_service_name: String,

    /// TEI's Prometheus port (accepted, not bound; /metrics is on the main port).
    #[arg(long, env, default_value_t = 9000)]
    pub prometheus_port: u16,

    /// CORS allowed origins (accepted, ignored).
    #[arg(long, env)]
    pub cors_allow_origin: Option<Vec<String>>,

    /// Serve TEI's tei.v1 gRPC API and grpc.health.v1 instead of HTTP, on --hostname/--port.
    #[arg(long, help_heading = "Mock knobs")]
    pub grpc: bool,

    /// Wait this many milliseconds before binding, like TEI loading a model.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Mock knobs"
    )]
    pub startup_delay_ms: u64,

    /// Delay every model request by this many milliseconds.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Mock knobs"
    )]
    pub latency_ms: u64,

    /// After N successful model requests, fail every request (HTTP 500 / gRPC UNAVAILABLE) and
    /// report unhealthy (/health 503 / gRPC health NOT_SERVING).
    #[arg(long, value_name = "N", help_heading = "Mock knobs")]
    pub fail_after: Option<u64>,

    /// After N model requests, never answer model requests nor health checks again.
    #[arg(long, value_name = "N", help_heading = "Mock knobs")]
    pub hang_after: Option<u64>,

    /// Number of dimensions of the embeddings.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 384,
        help_heading = "Mock knobs"
    )]
    pub dims: usize,

    /// Instance name, sent as `x-mock-instance` on every response
    /// (default: `mock-tei@<ip>:<port>`, the bound address).
    #[arg(long, value_name = "NAME", help_heading = "Mock knobs")]
    pub name: Option<String>,
}

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

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Model requests received.
    pub count: AtomicU64,
    /// Model requests answered successfully.
    pub success: AtomicU64,
    /// Model requests that failed.
    pub failure: AtomicU64,
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
    /// `/metrics` counters.
    pub counters: Counters,
    /// Token ids seen by `tokenize`, for `decode`.
    pub vocab: Vocab,
    /// grpc.health.v1 statuses.
    pub health: HealthReporter,
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
        Self {
            args,
            name,
            stats: Arc::new(Stats::default()),
            counters: Counters::default(),
            vocab: Vocab::default(),
            health: HealthReporter::new(),
            shutdown,
            admitted: AtomicU64::new(0),
            successes: AtomicU64::new(0),
        }
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

    /// Never answers: resolves only when the server shuts down.
    pub async fn hang(&self) {
        self.shutdown.wait().await;
    }

    /// Admits one model request: counts it, applies hang/fail injection and `--latency-ms`.
    pub async fn admit(&self) -> Result<(), Refusal> {
        self.counters.count.fetch_add(1, Ordering::SeqCst);
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
        common::delay_ms(self.args.latency_ms).await;
        Ok(())
    }

    /// Counts a successful model request; the one reaching `--fail-after` turns the server
    /// unhealthy.
    pub async fn record_success(&self) {
        self.counters.success.fetch_add(1, Ordering::SeqCst);
        let done = self.successes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.args.fail_after == Some(done) {
            tracing::info!(successes = done, "fail-after reached; failing from now on");
            self.set_health(ServingStatus::NotServing).await;
        }
    }

    /// Counts a failed model request.
    pub fn record_failure(&self) {
        self.counters.failure.fetch_add(1, Ordering::SeqCst);
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
    let listener = TcpListener::bind((args.hostname.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.hostname, args.port))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves HTTP or gRPC (per `--grpc`) on a bound listener until `shutdown` fires.
pub async fn serve(args: TeiArgs, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let grpc = args.grpc;
    let core = Arc::new(TeiCore::new(args, addr, shutdown.clone()));
    if grpc {
        tracing::info!(%addr, model_id = %core.args.model_id, "mock-tei serving gRPC");
        tei_grpc::serve(core, listener, shutdown).await
    } else {
        tracing::info!(%addr, model_id = %core.args.model_id, "mock-tei serving HTTP");
        let stats = core.stats.clone();
        let router = tei_http::router(core)?;
        common::serve_http(listener, router, stats, shutdown).await
    }
}

/// Binds and serves in a background task of the current runtime (for in-process tests).
pub async fn spawn(args: TeiArgs) -> anyhow::Result<Running> {
    let (listener, addr) = bind(&args).await?;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(serve(args, listener, shutdown.clone()));
    Ok(Running::new(addr, shutdown, handle))
}

/// The whole process: wait `--startup-delay-ms`, bind, announce `LISTENING <addr>`, serve until
/// SIGTERM/SIGINT.
pub async fn run(args: TeiArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    if args.startup_delay_ms > 0 {
        tracing::info!(ms = args.startup_delay_ms, "simulating model loading");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.startup_delay_ms)) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
    let (listener, addr) = bind(&args).await?;
    common::announce(addr);
    serve(args, listener, shutdown).await
}
