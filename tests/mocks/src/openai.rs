//! `mock-openai`: an OpenAI-compatible backend with deterministic answers.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with real
//! SSE streaming, built in `openai_stream`), `POST /v1/embeddings`, plus `GET /health`,
//! `GET /mock/stats` and `GET|PUT /mock/ready` (`{"ready": bool}`: a readiness flag a test
//! flips, for custom health probes that check a JSON field), and an engine's load metrics at
//! `GET /metrics` with a fake load set by `POST /_mock/load` ([`crate::engine_load`]). Requests are validated in
//! `openai_request`. Knobs on the command line ([`OpenAiArgs`]) add latency, pacing, injected
//! failures, dying mid-response and API-key checks (every /v1 response names the credential
//! headers it got in `x-mock-credentials`, and with `--echo-headers` the `x-request-id`,
//! `traceparent` and `tracestate` it got as `x-mock-seen-*`). A simulated prefix cache
//! ([`crate::prefix_cache`], `--prefix-cache-entries`) delays the response header by
//! `--ttft-ms` on a miss and `--ttft-hit-ms` on a hit, says which in `x-mock-prefix-cache`, and
//! counts both in `/mock/stats` (`prefix_cache`). `--stall-every N --stall-ms MS` holds every Nth
//! model request; `/mock/stats` counts `stalled` ones and `cancelled` ones (the client went away
//! before the answer). Errors use
//! OpenAI's `{"error": {message, type, code}}` shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::common::{
    self, add_instance_header, instance_header_value, read_body, unix_now, ReadBodyError, Running,
    Shutdown, Stats,
};
use super::engine_load::{EngineLoad, EngineStyle, LoadSettings};
use super::openai_request::{embeddings, ApiError, Generation, Kind};
use super::openai_stream::{self, StreamPlan};
use super::prefix_cache::{prefix_key, PrefixCache, PrefixCacheStats};

/// Largest request body accepted (bigger bodies get 413).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Command line of `mock-openai`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-openai",
    version,
    about = "A mock OpenAI-compatible model server with deterministic answers",
    long_about = "A mock OpenAI-compatible model server with deterministic answers, used by \
                  Multiverse's tests, benchmarks and demo. After binding it prints \
                  `LISTENING <ip>:<port>` on stdout; logs go to stderr (RUST_LOG, default info)."
)]
pub struct OpenAiArgs {
    /// Address to listen on, `ip:port`; port 0 picks a free port (the real one is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub listen: String,

    /// A model name to serve; repeat the flag to serve several. Requests for other models get
    /// 404 `model_not_found`.
    #[arg(long = "model", value_name = "NAME", default_value = "demo")]
    pub models: Vec<String>,

    /// Delay, in milliseconds, before the response headers of every model request.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub latency_ms: u64,

    /// Length of every completion, in tokens (`max_tokens` in a request caps it).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub tokens: u64,

    /// Pause, in milliseconds, between two SSE chunks of a streamed completion.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub chunk_interval_ms: u64,

    /// Probability (0.0 to 1.0) that a valid model request fails with `--fail-status`.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,

    /// HTTP status of the failures injected by `--fail-rate`.
    #[arg(long, value_name = "CODE", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub fail_status: u16,

    /// Require `Authorization: Bearer KEY` on /v1 routes; a missing or wrong key gets 401.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Instance name, sent as the `x-mock-instance` header on every response
    /// (default: `mock-openai@<ip>:<port>`, the bound address).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Number of dimensions of the embeddings (`dimensions` in a request overrides it).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub dims: usize,

    /// Prompt prefixes (first chat message, or `prompt`) kept in this instance's simulated
    /// prefix cache, least recently used evicted; 0: no cache (with `--ttft-ms`, every request a
    /// miss). With none of the three cache flags, no cache is simulated and no
    /// `x-mock-prefix-cache` header is sent.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub prefix_cache_entries: usize,

    /// Time to first token, in milliseconds, of a chat / completion request whose prefix
    /// missed the cache (added to `--latency-ms`, before the response header).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ttft_ms: u64,

    /// Time to first token, in milliseconds, of one whose prefix hit the cache.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ttft_hit_ms: u64,

    /// Die mid-response, as a crashing backend does: a streamed completion fails after N SSE
    /// events, a non-streamed one after half its body; the connection is then closed abruptly
    /// (no terminating chunk, no `[DONE]`).
    #[arg(long, value_name = "N")]
    pub die_after_chunks: Option<usize>,

    /// Echo the request's `x-request-id`, `traceparent` and `tracestate` on every /v1 response
    /// as `x-mock-seen-request-id`, `x-mock-seen-traceparent`, `x-mock-seen-tracestate` (off by
    /// default: benchmarks count what a proxy spends on each response header).
    #[arg(long)]
    pub echo_headers: bool,

    /// Hold every Nth model request (the Nth, 2Nth, ...; 0: none) for `--stall-ms` before its
    /// response header, as a backend with a long GC pause or a stuck batch does; counted in
    /// `/mock/stats` `stalled`. A request whose client went away first is counted in
    /// `cancelled`. `--stall-every 20`: 5 % of requests.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub stall_every: u64,

    /// How long a stalled request is held, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub stall_ms: u64,

    /// Whose metric names `GET /metrics` uses ([`crate::engine_load`]: the real count of
    /// requests being answered as running, plus the fake load `POST /_mock/load` sets).
    #[arg(long, value_enum, default_value_t = EngineStyle::Vllm)]
    pub engine: EngineStyle,

    /// Serve HTTPS with this PEM certificate chain (needs `--tls-key`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0.0 and 1.0"))
    }
}

/// Shared state of one `mock-openai` server.
#[derive(Debug)]
struct App {
    args: OpenAiArgs,
    name: String,
    stats: Arc<Stats>,
    /// What `GET /mock/ready` reports (`PUT /mock/ready` sets it); starts true.
    ready: std::sync::atomic::AtomicBool,
    cache: PrefixCache,
    /// `GET /metrics` in an engine's style, `POST /_mock/load`.
    load: EngineLoad,
}

/// `GET /mock/stats` of mock-openai: the shared counters and the prefix cache's.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OpenAiStats {
    #[serde(flatten)]
    pub common: common::StatsSnapshot,
    pub prefix_cache: PrefixCacheStats,
}

/// Binds `args.listen` and returns the listener with its actual address.
pub async fn bind(args: &OpenAiArgs) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(args.listen.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The instance name: `--name`, or `mock-openai@<addr>`.
pub fn instance_name(args: &OpenAiArgs, addr: SocketAddr) -> String {
    args.name
        .clone()
        .unwrap_or_else(|| format!("mock-openai@{addr}"))
}

/// The application for an already bound server at `addr`.
pub fn router(args: OpenAiArgs, addr: SocketAddr) -> anyhow::Result<Router> {
    router_with_stats(args, addr, Arc::new(Stats::default()))
}

/// [`router`], recording into `stats` (shared with the listener, which counts connections).
pub fn router_with_stats(
    args: OpenAiArgs,
    addr: SocketAddr,
    stats_sink: Arc<Stats>,
) -> anyhow::Result<Router> {
    let name = instance_name(&args, addr);
    let header = instance_header_value(&name)?;
    let cache = PrefixCache::new(args.prefix_cache_entries);
    let load = EngineLoad::new(args.engine);
    let app = Arc::new(App {
        args,
        name,
        stats: stats_sink,
        ready: std::sync::atomic::AtomicBool::new(true),
        cache,
        load,
    });
    let model_routes = Router::new()
        .route("/v1/models", get(list_models))
        .route(
            "/v1/chat/completions",
            post(|State(app): State<Arc<App>>, body: Body| model_route(app, Kind::Chat, body)),
        )
        .route(
            "/v1/completions",
            post(|State(app): State<Arc<App>>, body: Body| {
                model_route(app, Kind::Completion, body)
            }),
        )
        .route(
            "/v1/embeddings",
            post(|State(app): State<Arc<App>>, body: Body| {
                model_route(app, Kind::Embeddings, body)
            }),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), require_api_key));
    Ok(model_routes
        .route("/mock/stats", get(stats))
        .route("/mock/ready", get(ready).put(set_ready))
        .route("/metrics", get(metrics))
        .route("/_mock/load", get(load_settings).post(set_load))
        .route("/health", get(|| async { StatusCode::OK }))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "Unknown route".into(),
                kind: "invalid_request_error",
                code: None,
            }
        })
        .layer(middleware::from_fn_with_state(header, add_instance_header))
        .with_state(app))
}

/// Serves on a bound listener until `shutdown` fires.
pub async fn serve(
    args: OpenAiArgs,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let app = router_with_stats(args, addr, stats.clone())?;
    tracing::info!(%addr, tls = tls.is_some(), "mock-openai listening");
    match tls {
        Some(config) => common::serve_https(listener, config, app, stats, shutdown).await,
        None => common::serve_http(listener, app, stats, shutdown).await,
    }
}

/// Binds and serves in a background task of the current runtime (for in-process tests).
pub async fn spawn(args: OpenAiArgs) -> anyhow::Result<Running> {
    let (listener, addr) = bind(&args).await?;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(serve(args, listener, shutdown.clone()));
    Ok(Running::new(addr, shutdown, handle))
}

/// The whole process: bind, announce `LISTENING <addr>`, serve until SIGTERM/SIGINT.
pub async fn run(args: OpenAiArgs) -> anyhow::Result<()> {
    let (listener, addr) = bind(&args).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    common::announce(addr);
    serve(args, listener, shutdown).await
}

/// Request headers echoed on every /v1 response, under these names.
const ECHOED: [(&str, &str); 3] = [
    ("x-request-id", "x-mock-seen-request-id"),
    ("traceparent", "x-mock-seen-traceparent"),
    ("tracestate", "x-mock-seen-tracestate"),
];

async fn require_api_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &app.args.api_key {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(key.as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "Incorrect API key provided.".into(),
                kind: "invalid_request_error",
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    // Which credential headers arrived (names only), so tests can check what a gateway
    // forwards.
    let seen: Vec<&str> = ["authorization", "api-key", "x-api-key"]
        .into_iter()
        .filter(|h| headers.contains_key(*h))
        .collect();
    let seen = if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(",")
    };
    // The tracing headers that arrived, echoed, so tests can check what a gateway sends on.
    let echoed: Vec<(&str, header::HeaderValue)> = ECHOED
        .iter()
        .filter(|_| app.args.echo_headers)
        .filter_map(|(from, to)| headers.get(*from).map(|v| (*to, v.clone())))
        .collect();
    let mut resp = next.run(request).await;
    if let Ok(v) = header::HeaderValue::from_str(&seen) {
        resp.headers_mut().insert("x-mock-credentials", v);
    }
    for (name, value) in echoed {
        resp.headers_mut().insert(name, value);
    }
    resp
}

async fn ready(State(app): State<Arc<App>>) -> Json<Value> {
    let ready = app.ready.load(std::sync::atomic::Ordering::SeqCst);
    Json(json!({"ready": ready, "name": app.name}))
}

/// `PUT /mock/ready {"ready": bool}`.
async fn set_ready(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let Some(ready) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["ready"].as_bool())
    else {
        return (StatusCode::BAD_REQUEST, "expected {\"ready\": true|false}").into_response();
    };
    app.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    Json(json!({"ready": ready})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let model = app.args.models.first().map_or("demo", String::as_str);
    app.load.respond(model)
}

async fn load_settings(State(app): State<Arc<App>>) -> Json<LoadSettings> {
    Json(app.load.settings())
}

async fn set_load(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<LoadSettings>(&body) {
        Ok(s) => {
            app.load.set(&s);
            Json(app.load.settings()).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{waiting, running, kv_cache_usage, metrics}}: {e}"),
        )
            .into_response(),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Json<OpenAiStats> {
    Json(OpenAiStats {
        common: app.stats.snapshot(&app.name),
        prefix_cache: app.cache.stats(),
    })
}

async fn list_models(State(app): State<Arc<App>>) -> Json<Value> {
    let created = unix_now();
    let data: Vec<Value> = app
        .args
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "mock"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model_route(app: Arc<App>, kind: Kind, body: Body) -> Response {
    // Counted as running in /metrics until its response is built (streams until then too).
    let _working = app.load.working();
    let bytes = match read_body(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::TooLarge) => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("Request body is larger than {BODY_LIMIT} bytes"),
                kind: "invalid_request_error",
                code: None,
            }
            .into_response()
        }
        Err(ReadBodyError::Io(e)) => {
            return ApiError::invalid(format!("Cannot read request body: {e}")).into_response()
        }
    };
    let info = app.stats.record_request(&bytes);
    let answering = app.stats.answering();
    if app.stats.stall_turn(app.args.stall_every) {
        common::delay_ms(app.args.stall_ms).await;
    }
    let cached = app.prefix_cache(kind, &bytes);
    let ttft = match cached {
        Some(true) => app.args.ttft_hit_ms,
        Some(false) => app.args.ttft_ms,
        None => 0,
    };
    common::delay_ms(app.args.latency_ms + ttft).await;
    let mut response = app
        .handle(kind, &bytes)
        .unwrap_or_else(IntoResponse::into_response);
    info.apply(response.headers_mut());
    if let Some(hit) = cached {
        let v = header::HeaderValue::from_static(if hit { "hit" } else { "miss" });
        response.headers_mut().insert("x-mock-prefix-cache", v);
    }
    answering.answered();
    response
}

impl App {
    /// For a chat / completion body with a prefix: whether it hit this instance's cache
    /// (`None`: not a generation, no prefix, or not JSON, which `handle` answers).
    fn prefix_cache(&self, kind: Kind, body: &[u8]) -> Option<bool> {
        let a = &self.args;
        // Off unless asked for: no parse, no header (a header more costs a proxy allocations,
        // which the per-request budget test counts).
        let simulated = a.prefix_cache_entries > 0 || a.ttft_ms > 0 || a.ttft_hit_ms > 0;
        if !simulated || matches!(kind, Kind::Embeddings) {
            return None;
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        Some(self.cache.touch(prefix_key(&value)?))
    }

    fn handle(&self, kind: Kind, body: &[u8]) -> Result<Response, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid(format!(
                "We could not parse the JSON body of your request: {e}"
            ))
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::invalid("The request body must be a JSON object"))?;
        let model = match obj.get("model") {
            Some(Value::String(model)) => model.clone(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid("You must provide a model parameter"))
            }
            Some(_) => return Err(ApiError::invalid("'model' must be a string")),
        };
        if !self.args.models.contains(&model) {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("The model `{model}` does not exist"),
                kind: "invalid_request_error",
                code: Some("model_not_found"),
            });
        }
        let request = match kind {
            Kind::Chat | Kind::Completion => Some(Generation::parse(kind, obj)?),
            Kind::Embeddings => None,
        };
        let embeddings = match kind {
            Kind::Embeddings => Some(embeddings(obj, &model, self.args.dims)?),
            _ => None,
        };
        if self.args.fail_rate > 0.0 && rand::random::<f64>() < self.args.fail_rate {
            return Err(ApiError {
                status: StatusCode::from_u16(self.args.fail_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                message: "Injected failure (mock-openai --fail-rate)".into(),
                kind: "server_error",
                code: None,
            });
        }
        if let Some(body) = embeddings {
            return Ok(Json(body).into_response());
        }
        let Some(generation) = request else {
            return Err(ApiError::invalid("unsupported request"));
        };
        Ok(self.generate(kind, &model, generation))
    }

    fn generate(&self, kind: Kind, model: &str, generation: Generation) -> Response {
        let completion_tokens = generation
            .max_tokens
            .map_or(self.args.tokens, |max| max.min(self.args.tokens));
        let plan = StreamPlan {
            chat: matches!(kind, Kind::Chat),
            id: new_id(matches!(kind, Kind::Chat)),
            created: unix_now(),
            model: model.to_string(),
            completion_tokens,
            prompt_tokens: generation.prompt_tokens,
            include_usage: generation.include_usage,
        };
        if generation.stream {
            let guard = self.stats.start_stream();
            let interval = Duration::from_millis(self.args.chunk_interval_ms);
            openai_stream::sse_response(&plan, interval, guard, self.args.die_after_chunks)
        } else if self.args.die_after_chunks.is_some() {
            let body = openai_stream::full_response(&plan).to_string();
            let interval = Duration::from_millis(self.args.chunk_interval_ms);
            openai_stream::dying_response(body.into(), interval)
        } else {
            Json(openai_stream::full_response(&plan)).into_response()
        }
    }
}

fn new_id(chat: bool) -> String {
    let prefix = if chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}
