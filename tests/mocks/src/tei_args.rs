//! The command line of `mock-tei`: TEI's `text-embeddings-router` flags (each also readable
//! from its environment variable, as TEI's are), then the mock's own knobs (failure injection,
//! simulated batching, RSS ballast, simulated VRAM, a Prometheus listener).

use clap::{Parser, ValueEnum};

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
                  `LISTENING <ip>:<port>` on stdout (then `PROMETHEUS <ip>:<port>` with \
                  --serve-prometheus); logs go to stderr (RUST_LOG, default info)."
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

    /// Maximum concurrent requests, reported in /info and gRPC Info (enforced with
    /// --simulate-batching: more inputs in flight get TEI's 429 `overloaded`).
    #[arg(long, env, default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Maximum tokens in a batch, reported in /info and gRPC Info (the batch capacity of
    /// --simulate-batching).
    #[arg(long, env, default_value_t = 16384)]
    pub max_batch_tokens: usize,

    /// Maximum requests in a batch, reported in /info and gRPC Info (also a batch capacity of
    /// --simulate-batching).
    #[arg(long, env)]
    pub max_batch_requests: Option<usize>,

    /// Maximum inputs in one client request, reported in /info and gRPC Info; more get 413
    /// (HTTP) / INVALID_ARGUMENT (gRPC).
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

    /// OTLP endpoint (accepted and logged at startup; the mock exports no spans).
    #[arg(long, env)]
    pub otlp_endpoint: Option<String>,

    /// OpenTelemetry service name (accepted and logged with --otlp-endpoint).
    #[arg(long, env, default_value = "text-embeddings-inference.server")]
    pub otlp_service_name: String,

    /// TEI's Prometheus port: bound only with --serve-prometheus (in HTTP mode the metrics are
    /// always at /metrics on the main port, as in TEI's HTTP builds).
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

    /// Hold every Nth model request (the Nth, 2Nth, ...; 0: none; each message of a gRPC
    /// stream is one) for --stall-ms before answering it, as a backend with a stuck batch does;
    /// counted in `/mock/stats` `stalled`. One whose client went away first (a hedging proxy's
    /// cancelled loser) is counted in `cancelled`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Mock knobs"
    )]
    pub stall_every: u64,

    /// How long a stalled request is held, in milliseconds.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2000,
        help_heading = "Mock knobs"
    )]
    pub stall_ms: u64,

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

    /// Simulate TEI's batching queue: at most --max-batch-tokens tokens (and
    /// --max-batch-requests inputs, when set) are inferred at once, each request for
    /// --latency-ms; later requests wait in FIFO order (te_queue_size, te_batch_next_size,
    /// te_request_queue_duration, x-queue-time). More than --max-concurrent-requests inputs in
    /// flight get TEI's 429 `overloaded` (gRPC RESOURCE_EXHAUSTED). Without it every request
    /// runs at once and te_queue_size stays 0.
    #[arg(long, help_heading = "Mock knobs")]
    pub simulate_batching: bool,

    /// Also serve the Prometheus metrics on --hostname:--prometheus-port (at any path), as TEI's
    /// gRPC builds do, and print `PROMETHEUS <ip>:<port>` after the LISTENING line (port 0
    /// picks a free one). Without it that port is not bound.
    #[arg(long, help_heading = "Mock knobs")]
    pub serve_prometheus: bool,

    /// Allocate and touch this many MiB at start (before binding), so the process's RSS
    /// includes them, like a loaded model.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 0,
        help_heading = "Mock knobs"
    )]
    pub ballast_mb: u64,

    /// Then grow the ballast by this many MiB per second (in ten steps a second), to exceed a
    /// memory limit on purpose.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 0,
        help_heading = "Mock knobs"
    )]
    pub ballast_grow_mb_per_sec: u64,

    /// Stop growing once the ballast holds this many MiB [default: no limit].
    #[arg(long, value_name = "MIB", help_heading = "Mock knobs")]
    pub ballast_max_mb: Option<u64>,

    /// Report this many MiB of VRAM used by this process to simulated GPUs: write
    /// `<--simulated-gpu-dir>/<pid>.json` = {"pid", "start_time_ticks", "gpu",
    /// "cuda_visible_devices", "device_id", "used_memory_bytes"} at start (atomically), remove
    /// it on exit. `gpu` is the `CUDA_VISIBLE_DEVICES` entry at --device-id (or --device-id
    /// itself when that variable is unset).
    #[arg(
        long,
        value_name = "MIB",
        requires = "simulated_gpu_dir",
        help_heading = "Mock knobs"
    )]
    pub simulated_vram_mb: Option<u64>,

    /// The directory the simulated GPUs read per-process VRAM from (created if missing).
    #[arg(
        long,
        env = "MULTIVERSE_SIMULATED_GPU_DIR",
        value_name = "DIR",
        help_heading = "Mock knobs"
    )]
    pub simulated_gpu_dir: Option<std::path::PathBuf>,
}
