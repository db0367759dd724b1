//! Hedged TEI gRPC calls (issue 15), as real processes on loopback: two `mock-tei --grpc`
//! endpoints behind a standalone proxy, one of which holds every call for 3 s
//! (`--stall-every 1`). With `hedge_after_ms`, a unary `Embed` the stalling endpoint got first
//! goes to the other after 100 ms and is answered by it long before the stall ends, and the
//! stalled call is cancelled (the mock counts its stream reset). A winner's non-OK status
//! reaches the client as the endpoint sent it; UNAVAILABLE fails the attempt and the call goes
//! on to the next endpoint; a stream (`EmbedStream`) is never hedged.

use std::time::{Duration, Instant};

use multiverse_mocks::embedding;
use multiverse_proto::tei::v1 as tei;
use multiverse_tests::*;
use tei::embed_client::EmbedClient;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request};

const STALL_MS: u64 = 3000;
/// Well before the stall ends: an answer by then came from the other endpoint.
const FAST: Duration = Duration::from_millis(STALL_MS / 2);

/// A model of two gRPC endpoints, `<name>-stall` (`stall`) and `<name>-fast` (`fast`), round
/// robin, with `extra` keys.
fn model(name: &str, extra: &str, stall: &MockTei, fast: &MockTei) -> String {
    let extra = format!("lb = \"round_robin\"\n{extra}");
    model_toml(
        name,
        "embedding",
        &extra,
        &[
            Ep::grpc(&format!("{name}-stall"), stall.addr, "healthy"),
            Ep::grpc(&format!("{name}-fast"), fast.addr, "healthy"),
        ],
    )
}

/// A mock that holds every call for [`STALL_MS`] and one that answers at once.
fn pair(dir: &std::path::Path) -> (MockTei, MockTei) {
    let stall_ms = STALL_MS.to_string();
    let stall = MockTei::start(
        dir,
        "tei-stall",
        &["--grpc", "--stall-every", "1", "--stall-ms", &stall_ms],
    );
    let fast = MockTei::start(dir, "tei-fast", &["--grpc"]);
    (stall, fast)
}

async fn embed_client(proxy: &Proxy) -> EmbedClient<Channel> {
    let channel = Channel::from_shared(proxy.url())
        .expect("url")
        .connect()
        .await
        .expect("connect to the proxy");
    EmbedClient::new(channel)
}

fn with_model<T>(msg: T, model: &str, id: &str) -> Request<T> {
    let mut req = Request::new(msg);
    let meta = req.metadata_mut();
    meta.insert("x-model", model.parse().expect("ascii metadata"));
    meta.insert("x-request-id", id.parse().expect("ascii metadata"));
    req
}

fn embed_req(text: &str) -> tei::EmbedRequest {
    tei::EmbedRequest {
        inputs: text.into(),
        normalize: Some(true),
        ..Default::default()
    }
}

fn meta(m: &MetadataMap, name: &str) -> String {
    m.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A request id of its own for each call.
fn next_id() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("grpc-hedge-{n}")
}

async fn stat(c: &reqwest::Client, mock: &MockTei, name: &str) -> u64 {
    let stats: serde_json::Value = c
        .get(format!("{}/mock/stats", mock.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    stats[name].as_u64().unwrap_or(0)
}

/// The value of the `metric{model="<model>"}` sample in the proxy's `/metrics` (0: none).
async fn metric(c: &reqwest::Client, proxy: &Proxy, metric: &str, model: &str) -> u64 {
    proxy
        .metric(c, &format!("{metric}{{model=\"{model}\"}} "))
        .await as u64
}

/// Waits until every call the stalling mock got was cancelled (the mock sees the reset at
/// once; the deadline only bounds a failure, well before the stalls would end).
async fn all_cancelled(c: &reqwest::Client, stall: &MockTei) {
    let stalled = stat(c, stall, "requests").await;
    let deadline = Instant::now() + FAST;
    loop {
        let cancelled = stat(c, stall, "cancelled").await;
        if cancelled == stalled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cancelled} of {stalled} stalled calls cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stalled_grpc_embed_is_answered_by_the_hedge_and_the_stalled_call_cancelled() {
    let dir = temp_dir("grpc-hedge-on");
    let (stall, fast) = pair(&dir);
    let routes = model(
        "bge",
        "max_retries = 0\nhedge_after_ms = 100",
        &stall,
        &fast,
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-hedge", &routes, "").await;
    let c = reqwest::Client::new();
    let mut embed = embed_client(&proxy).await;

    // Round robin: the stalling endpoint is tried first by about every other call.
    for i in 0..4 {
        let (text, id) = (format!("hedge me {i}"), next_id());
        let started = Instant::now();
        let resp = embed
            .embed(with_model(embed_req(&text), "bge", &id))
            .await
            .expect("Embed answered");
        let took = started.elapsed();
        assert_eq!(meta(resp.metadata(), "x-multiverse-endpoint"), "bge-fast");
        assert_eq!(
            meta(resp.metadata(), "x-request-id"),
            id,
            "the id comes back"
        );
        assert!(
            took < FAST,
            "answered after {took:?}: the hedge did not win"
        );
        // The body and its trailers (grpc-status 0) arrived whole: tonic decoded the message.
        assert_eq!(resp.into_inner().embeddings, embedding(&text, 384, true));
    }
    let stalled = stat(&c, &stall, "requests").await;
    assert!(
        stalled >= 1,
        "round robin sent the stalling endpoint no call"
    );
    assert_eq!(
        stat(&c, &fast, "requests").await,
        4,
        "the fast endpoint got each call once"
    );
    let hedges = metric(&c, &proxy, "multiverse_proxy_hedges_total", "bge").await;
    let wins = metric(&c, &proxy, "multiverse_proxy_hedge_wins_total", "bge").await;
    // The stalling endpoint got each call either first (then hedged to the other, which won)
    // or as the hedge of a first attempt that was slow itself (a loaded machine).
    assert_eq!(
        hedges, stalled,
        "one hedge per call the stalling endpoint got"
    );
    assert!(wins >= 1 && wins <= hedges, "{wins} hedge wins of {hedges}");
    all_cancelled(&c, &stall).await;
}

#[tokio::test]
async fn a_non_ok_status_from_the_winner_reaches_the_client_unchanged() {
    let dir = temp_dir("grpc-hedge-status");
    let (stall, fast) = pair(&dir);
    let routes = model(
        "bge",
        "max_retries = 1\nhedge_after_ms = 100",
        &stall,
        &fast,
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-status", &routes, "").await;
    let c = reqwest::Client::new();
    let mut embed = embed_client(&proxy).await;
    // TEI refuses `dimensions: 0` with INVALID_ARGUMENT: a real answer, not a failed attempt
    // (had it failed, nothing would be left to try and the proxy's UNAVAILABLE would come
    // after the stall).
    let bad = tei::EmbedRequest {
        dimensions: Some(0),
        ..embed_req("zero dimensions")
    };
    for _ in 0..2 {
        let id = next_id();
        let started = Instant::now();
        let err = embed
            .embed(with_model(bad.clone(), "bge", &id))
            .await
            .expect_err("the mock refuses zero dimensions");
        let took = started.elapsed();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(
            err.message(),
            "Input validation error: `dimensions` should be positive",
            "the endpoint's own message"
        );
        assert_eq!(meta(err.metadata(), "x-multiverse-endpoint"), "bge-fast");
        assert_eq!(meta(err.metadata(), "x-request-id"), id);
        assert!(took < FAST, "answered after {took:?}");
    }
    assert_eq!(stat(&c, &fast, "requests").await, 2);
    assert!(stat(&c, &stall, "requests").await >= 1);
    all_cancelled(&c, &stall).await;
}

#[tokio::test]
async fn an_unavailable_answer_fails_the_attempt_and_errors_are_grpc_statuses() {
    let dir = temp_dir("grpc-hedge-unavailable");
    // `--fail-after 0`: every call answered UNAVAILABLE.
    let down = MockTei::start(&dir, "tei-down", &["--grpc", "--fail-after", "0"]);
    let ok = MockTei::start(&dir, "tei-ok", &["--grpc"]);
    // A hedge long after the failure: the second endpoint is tried because the first failed.
    let routes = model("bge", "max_retries = 1\nhedge_after_ms = 2000", &down, &ok)
        + &model_toml(
            "lone",
            "embedding",
            "max_retries = 1\nhedge_after_ms = 100",
            &[Ep::grpc("lone-down", down.addr, "healthy")],
        );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-unavail", &routes, "").await;
    let c = reqwest::Client::new();
    let mut embed = embed_client(&proxy).await;
    for i in 0..2 {
        let text = format!("retry me {i}");
        let started = Instant::now();
        let resp = embed
            .embed(with_model(embed_req(&text), "bge", &next_id()))
            .await
            .expect("answered by the healthy endpoint");
        let took = started.elapsed();
        assert_eq!(meta(resp.metadata(), "x-multiverse-endpoint"), "bge-fast");
        assert!(
            took < Duration::from_millis(1500),
            "took {took:?}: waited for the hedge"
        );
        assert_eq!(resp.into_inner().embeddings, embedding(&text, 384, true));
    }
    // Round robin's cursor moves on each pick (a retry's too): the failing endpoint was
    // tried first by one call or both.
    let failed = stat(&c, &down, "requests").await;
    assert!(
        (1..=2).contains(&failed),
        "{failed} calls to the failing endpoint"
    );
    assert_eq!(
        stat(&c, &ok, "requests").await,
        2,
        "each call answered once"
    );
    let hedges = metric(&c, &proxy, "multiverse_proxy_hedges_total", "bge").await;
    assert_eq!(hedges, 0, "a retry after a failure is no hedge");

    // Nothing left to try: the proxy's own gRPC status, trailers-only, with the request id.
    let id = next_id();
    let err = embed
        .embed(with_model(embed_req("x"), "lone", &id))
        .await
        .expect_err("the only endpoint is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("lone"), "{}", err.message());
    assert_eq!(meta(err.metadata(), "x-request-id"), id);
}

#[tokio::test]
async fn grpc_streams_are_never_hedged_and_hedging_off_sends_no_second_call() {
    let dir = temp_dir("grpc-hedge-never");
    let (stall, fast) = pair(&dir);
    let routes = model("st", "max_retries = 0\nhedge_after_ms = 100", &stall, &fast)
        + &model("off", "max_retries = 0", &stall, &fast);
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-never", &routes, "").await;
    let c = reqwest::Client::new();
    let embed = embed_client(&proxy).await;
    // Two streams to the hedged model and two unary calls to the unhedged one, at once; round
    // robin sends each model one call per endpoint.
    let stream_call = |mut client: EmbedClient<Channel>| async move {
        let started = Instant::now();
        let text = "a streamed message";
        let messages = tokio_stream::iter([embed_req(text)]);
        let resp = client
            .embed_stream(with_model(messages, "st", &next_id()))
            .await
            .expect("EmbedStream");
        let endpoint = meta(resp.metadata(), "x-multiverse-endpoint");
        let mut replies = resp.into_inner();
        let reply = replies
            .message()
            .await
            .expect("stream ok")
            .expect("a reply");
        assert_eq!(reply.embeddings, embedding(text, 384, true));
        assert!(replies.message().await.expect("clean end").is_none());
        (endpoint, started.elapsed())
    };
    let unary_call = |mut client: EmbedClient<Channel>| async move {
        let started = Instant::now();
        let resp = client
            .embed(with_model(embed_req("not hedged"), "off", &next_id()))
            .await
            .expect("Embed");
        let endpoint = meta(resp.metadata(), "x-multiverse-endpoint");
        (endpoint, started.elapsed())
    };
    let (s1, s2, u1, u2) = tokio::join!(
        stream_call(embed.clone()),
        stream_call(embed.clone()),
        unary_call(embed.clone()),
        unary_call(embed.clone()),
    );
    for (model, calls) in [("st", [s1, s2]), ("off", [u1, u2])] {
        let mut ends: Vec<&str> = calls.iter().map(|(e, _)| e.as_str()).collect();
        ends.sort_unstable();
        let want = [format!("{model}-fast"), format!("{model}-stall")];
        assert_eq!(ends, want, "{model}: one call per endpoint");
        for (endpoint, took) in &calls {
            if endpoint.ends_with("-stall") {
                assert!(
                    *took >= Duration::from_millis(STALL_MS),
                    "{model}: the stalled endpoint answered after {took:?}"
                );
            }
        }
    }
    // Four calls, four upstream calls: no hedge, no cancellation.
    assert_eq!(stat(&c, &stall, "requests").await, 2);
    assert_eq!(stat(&c, &fast, "requests").await, 2);
    assert_eq!(stat(&c, &stall, "cancelled").await, 0);
    for model in ["st", "off"] {
        let hedges = metric(&c, &proxy, "multiverse_proxy_hedges_total", model).await;
        assert_eq!(hedges, 0, "{model}");
    }
}
