//! The latency scenarios and the request each sends, as [`Caller`]s for the load engine:
//!
//! | scenario | protocol | request |
//! |---|---|---|
//! | `chat` | HTTP/1.1 | `POST /v1/chat/completions`, non-streaming, 4 tokens |
//! | `chat-h2c` | h2c | the same over HTTP/2 cleartext (prior knowledge) |
//! | `sse` | HTTP/1.1 | the same with `"stream": true`, 8 tokens: time to first event, gaps |
//! | `embed-http` | HTTP/1.1 | TEI `POST /embed` (`x-model: bge`) |
//! | `grpc-unary` | gRPC | `tei.v1.Embed/Embed` (`x-model: bge-grpc`) |
//! | `grpc-bidi` | gRPC | one message round trip on a long-lived `tei.v1.Embed/EmbedStream` |
//!
//! Every caller checks its answer (HTTP 200, a complete SSE stream ending in `[DONE]`, an
//! embedding) and reports anything else as a failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::engine::{Caller, Timing};
use super::grpc::{BidiPool, UnaryClient};
use super::h2::H2Client;
use super::http::snippet;
use super::http::Http1Pool;
use super::sse::{ends_with_done, SseTimer};
use super::stack::{Addrs, EMBED_MODEL, GRPC_MODEL};

/// `POST /v1/chat/completions`.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// The non-streaming chat request (as `latency-check` sends).
pub const CHAT_BODY: &str =
    r#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
/// The streaming chat request: 8 tokens, so 11 events (role, 8 tokens, stop, `[DONE]`).
pub const SSE_BODY: &str =
    r#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}"#;
/// Events in an answer to [`SSE_BODY`].
pub const SSE_EVENTS: usize = 11;
/// TEI `POST /embed`.
pub const EMBED_PATH: &str = "/embed";
/// The TEI HTTP request.
pub const EMBED_BODY: &str = r#"{"inputs":"What is Deep Learning?","normalize":true}"#;
/// The gRPC input text.
pub const GRPC_TEXT: &str = "What is Deep Learning?";

/// The latency scenarios, in the order a run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Latency {
    /// OpenAI chat, non-streaming, HTTP/1.1.
    Chat,
    /// OpenAI chat, non-streaming, h2c.
    ChatH2c,
    /// OpenAI chat, SSE stream.
    Sse,
    /// TEI HTTP `/embed`.
    EmbedHttp,
    /// TEI gRPC unary `Embed`.
    GrpcUnary,
    /// TEI gRPC bidi `EmbedStream`, per-message round trip.
    GrpcBidi,
}

impl Latency {
    /// All of them.
    pub const ALL: [Latency; 6] = [
        Latency::Chat,
        Latency::ChatH2c,
        Latency::Sse,
        Latency::EmbedHttp,
        Latency::GrpcUnary,
        Latency::GrpcBidi,
    ];

    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Latency::Chat => "chat",
            Latency::ChatH2c => "chat-h2c",
            Latency::Sse => "sse",
            Latency::EmbedHttp => "embed-http",
            Latency::GrpcUnary => "grpc-unary",
            Latency::GrpcBidi => "grpc-bidi",
        }
    }

    /// What is sent, for reports.
    pub fn describe(self) -> String {
        match self {
            Latency::Chat => format!("HTTP/1.1 POST {CHAT_PATH} {CHAT_BODY}"),
            Latency::ChatH2c => format!("h2c POST {CHAT_PATH} {CHAT_BODY}"),
            Latency::Sse => format!("HTTP/1.1 POST {CHAT_PATH} {SSE_BODY} ({SSE_EVENTS} events)"),
            Latency::EmbedHttp => {
                format!("HTTP/1.1 POST {EMBED_PATH} x-model: {EMBED_MODEL} {EMBED_BODY}")
            }
            Latency::GrpcUnary => {
                format!("gRPC tei.v1.Embed/Embed x-model: {GRPC_MODEL} {GRPC_TEXT:?}")
            }
            Latency::GrpcBidi => format!(
                "gRPC tei.v1.Embed/EmbedStream x-model: {GRPC_MODEL}, one message round trip per \
                 request on long-lived streams"
            ),
        }
    }

    /// Whether it is a stream whose first event and gaps are measured.
    pub fn is_sse(self) -> bool {
        self == Latency::Sse
    }
}

/// How many connections (or streams) a caller may use: the most requests it has in flight.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Concurrency {
    /// HTTP/1.1 keep-alive connections per target (non-streaming scenarios).
    pub http1_connections: usize,
    /// HTTP/1.1 connections per target for SSE (each stream holds one for its whole length).
    pub sse_connections: usize,
    /// Requests in flight per target on the one h2c / gRPC connection.
    pub h2_in_flight: usize,
    /// Long-lived bidi streams per target.
    pub bidi_streams: usize,
}

/// Builds the caller of `scenario` for a target at `addrs`, opening its connections now and
/// sending one request to check that it works (the error names the target).
pub async fn caller(
    scenario: Latency,
    target: &str,
    addrs: &Addrs,
    c: &Concurrency,
) -> anyhow::Result<Caller> {
    let call = match scenario {
        Latency::Chat => chat_h1(addrs.openai_h1, c.http1_connections).await,
        Latency::ChatH2c => chat_h2c(addrs.openai_h2c, c.h2_in_flight).await,
        Latency::Sse => sse(addrs.openai_h1, c.sse_connections).await,
        Latency::EmbedHttp => embed_http(addrs.tei_http, c.http1_connections).await,
        Latency::GrpcUnary => grpc_unary(addrs.grpc, c.h2_in_flight).await,
        Latency::GrpcBidi => grpc_bidi(addrs.grpc, c.bidi_streams).await,
    }
    .with_context(|| format!("{}: cannot connect to {target}", scenario.name()))?;
    call().await.map_err(|e| {
        anyhow::anyhow!(
            "{}: the first request to {target} failed: {e}",
            scenario.name()
        )
    })?;
    Ok(call)
}

/// The inference key chat and embedding requests carry while [`send_bench_key`] is on (the
/// `keys` scenario, whose keyed proxy accepts it; the open proxy, the mocks and nginx ignore
/// it). Off otherwise, so the other scenarios' requests (and the allocation budget) are as
/// before.
pub const BENCH_KEY: &str = "mv-bench-0123456789abcdef0123456789abcdef";

static SEND_BENCH_KEY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether requests built from now on carry [`BENCH_KEY`].
pub fn send_bench_key(on: bool) {
    SEND_BENCH_KEY.store(on, std::sync::atomic::Ordering::Relaxed);
}
/// `Bearer` + [`BENCH_KEY`], the header value (a literal: no formatting per request).
const BENCH_BEARER: &str = "Bearer mv-bench-0123456789abcdef0123456789abcdef";

fn post(path: &str, body: &'static str, model_header: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::post(path).header(CONTENT_TYPE, "application/json");
    if SEND_BENCH_KEY.load(std::sync::atomic::Ordering::Relaxed) {
        builder = builder.header(http::header::AUTHORIZATION, BENCH_BEARER);
    }
    if let Some(model) = model_header {
        builder = builder.header("x-model", model);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid request")
}

fn expect_ok(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", snippet(body)))
    }
}

/// Non-streaming chat over HTTP/1.1, model `demo` in the body.
pub async fn chat_h1(addr: SocketAddr, connections: usize) -> anyhow::Result<Caller> {
    let pool = Arc::new(Http1Pool::new(addr, connections));
    pool.warm().await?;
    Ok(Arc::new(move || {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            let r = pool
                .send(post(CHAT_PATH, CHAT_BODY, None))
                .await
                .map_err(|e| format!("{e:#}"))?;
            expect_ok(r.status(), r.body())?;
            Ok(Timing::default())
        })
    }))
}

/// Non-streaming chat over h2c.
pub async fn chat_h2c(addr: SocketAddr, in_flight: usize) -> anyhow::Result<Caller> {
    let client = Arc::new(H2Client::connect(addr, 1, in_flight).await?);
    Ok(Arc::new(move || {
        let client = Arc::clone(&client);
        Box::pin(async move {
            let r = client
                .send(post(CHAT_PATH, CHAT_BODY, None))
                .await
                .map_err(|e| format!("{e:#}"))?;
            expect_ok(r.status(), r.body())?;
            Ok(Timing::default())
        })
    }))
}

/// Streaming chat over HTTP/1.1: the whole stream, its first event and the gaps between events.
pub async fn sse(addr: SocketAddr, connections: usize) -> anyhow::Result<Caller> {
    let pool = Arc::new(Http1Pool::new(addr, connections));
    pool.warm().await?;
    Ok(Arc::new(move || {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            let mut timer = SseTimer::new();
            let r = pool
                .send_observed(post(CHAT_PATH, SSE_BODY, None), |data| {
                    timer.feed(data, Instant::now())
                })
                .await
                .map_err(|e| format!("{e:#}"))?;
            expect_ok(r.status(), r.body())?;
            if !ends_with_done(r.body()) || timer.events.len() != SSE_EVENTS {
                return Err(format!(
                    "an incomplete stream: {} events (expected {SSE_EVENTS}), ends: {:?}",
                    timer.events.len(),
                    snippet(&r.body()[r.body().len().saturating_sub(60)..])
                ));
            }
            Ok(Timing {
                first_event: timer.first(),
                gaps: timer.gaps(),
            })
        })
    }))
}

/// TEI `POST /embed` over HTTP/1.1, `x-model: bge`.
pub async fn embed_http(addr: SocketAddr, connections: usize) -> anyhow::Result<Caller> {
    let pool = Arc::new(Http1Pool::new(addr, connections));
    pool.warm().await?;
    Ok(Arc::new(move || {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            let r = pool
                .send(post(EMBED_PATH, EMBED_BODY, Some(EMBED_MODEL)))
                .await
                .map_err(|e| format!("{e:#}"))?;
            expect_ok(r.status(), r.body())?;
            Ok(Timing::default())
        })
    }))
}

/// TEI gRPC unary `Embed`, `x-model: bge-grpc`.
pub async fn grpc_unary(addr: SocketAddr, in_flight: usize) -> anyhow::Result<Caller> {
    let client = Arc::new(UnaryClient::connect(addr, Some(GRPC_MODEL), in_flight).await?);
    Ok(Arc::new(move || {
        let client = Arc::clone(&client);
        Box::pin(async move {
            client.embed(GRPC_TEXT).await?;
            Ok(Timing::default())
        })
    }))
}

/// TEI gRPC bidi `EmbedStream`: one message round trip on one of `streams` long-lived streams.
pub async fn grpc_bidi(addr: SocketAddr, streams: usize) -> anyhow::Result<Caller> {
    let pool = Arc::new(BidiPool::open(addr, Some(GRPC_MODEL), streams).await?);
    Ok(Arc::new(move || {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            pool.round_trip(GRPC_TEXT).await?;
            Ok(Timing::default())
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_carries_the_bench_key() {
        assert_eq!(BENCH_BEARER.strip_prefix("Bearer "), Some(BENCH_KEY));
    }
    use clap::Parser;
    use multiverse_mocks::openai::OpenAiArgs;
    use multiverse_mocks::tei::TeiArgs;

    fn concurrency() -> Concurrency {
        Concurrency {
            http1_connections: 2,
            sse_connections: 2,
            h2_in_flight: 4,
            bidi_streams: 2,
        }
    }

    /// Every scenario against in-process mocks (the "direct" target).
    #[tokio::test]
    async fn every_scenario_works_against_the_mocks() {
        let openai = multiverse_mocks::openai::spawn(OpenAiArgs::parse_from([
            "mock-openai",
            "--listen",
            "127.0.0.1:0",
            "--chunk-interval-ms",
            "1",
        ]))
        .await
        .unwrap();
        let tei_http = multiverse_mocks::tei::spawn(TeiArgs::parse_from([
            "mock-tei",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
        ]))
        .await
        .unwrap();
        let tei_grpc = multiverse_mocks::tei::spawn(TeiArgs::parse_from([
            "mock-tei",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc",
        ]))
        .await
        .unwrap();
        let addrs = Addrs {
            openai_h1: openai.addr,
            openai_h2c: openai.addr,
            tei_http: tei_http.addr,
            grpc: tei_grpc.addr,
        };
        for scenario in Latency::ALL {
            let call = caller(scenario, "direct", &addrs, &concurrency())
                .await
                .unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name()));
            for _ in 0..3 {
                let timing = call()
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", scenario.name()));
                if scenario.is_sse() {
                    assert!(timing.first_event.is_some());
                    assert_eq!(timing.gaps.len(), SSE_EVENTS - 1);
                }
            }
        }
    }
}
