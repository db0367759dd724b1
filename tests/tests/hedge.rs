//! Hedged requests (issue 15), as real processes on loopback: two mock-openai endpoints, one of
//! which holds every request for 3 s (`--stall-every 1`). With `hedge_after_ms`, an embedding
//! request the stalling endpoint got first is sent to the other after 100 ms and answered by it
//! long before the stall ends, and the stalled request is cancelled (the mock counts its client
//! gone). Chat is never hedged, and with hedging off no second request is sent.

use std::time::{Duration, Instant};

use multiverse_tests::*;
use serde_json::{json, Value};

const STALL_MS: u64 = 3000;

fn model(
    name: &str,
    kind: &str,
    hedge: Option<u32>,
    stall: &MockOpenAi,
    fast: &MockOpenAi,
) -> String {
    let hedge = hedge.map_or(String::new(), |ms| format!("hedge_after_ms = {ms}\n"));
    format!(
        "[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\nlb = \"round_robin\"\nmax_retries = 0\n{hedge}\
         [[models.endpoints]]\nid = \"{name}-stall\"\naddress = \"{}\"\n\
         [[models.endpoints]]\nid = \"{name}-fast\"\naddress = \"{}\"\n",
        stall.addr, fast.addr
    )
}

/// A mock that holds every request for [`STALL_MS`] and one that answers at once, both serving
/// `models`.
fn pair(dir: &std::path::Path, models: &[&str]) -> (MockOpenAi, MockOpenAi) {
    let stall_ms = STALL_MS.to_string();
    let mut served: Vec<&str> = models.iter().flat_map(|m| ["--model", m]).collect();
    served.push("--echo-headers");
    let mut stall_args = served.clone();
    stall_args.extend(["--stall-every", "1", "--stall-ms", &stall_ms]);
    let stall = MockOpenAi::start(dir, "mock-stall", &stall_args);
    let fast = MockOpenAi::start(dir, "mock-fast", &served);
    (stall, fast)
}

/// Sends `body` to `path` with a request id of its own; the answering endpoint and how long
/// it took. The id comes back on the response and reached the endpoint that answered, with a
/// traceparent (the mocks echo both).
async fn call(c: &reqwest::Client, proxy: &Proxy, path: &str, body: &Value) -> (String, Duration) {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sent_id = format!("hedge-test-{n}");
    let started = Instant::now();
    let r = c
        .post(format!("{}{path}", proxy.url()))
        .header("x-request-id", &sent_id)
        .json(body)
        .send()
        .await
        .expect("the proxy answers");
    let status = r.status();
    let endpoint = r
        .headers()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (id, seen_id) = (header("x-request-id"), header("x-mock-seen-request-id"));
    let traceparent = header("x-mock-seen-traceparent");
    let text = r.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        id.as_deref(),
        Some(sent_id.as_str()),
        "the response keeps the request id"
    );
    assert_eq!(
        seen_id.as_deref(),
        Some(sent_id.as_str()),
        "and so did the upstream request"
    );
    assert!(traceparent.is_some(), "a traceparent went upstream");
    (endpoint, started.elapsed())
}

/// The value of the `metric{model="<model>"}` sample in the proxy's `/metrics` (0: none).
async fn metric(c: &reqwest::Client, proxy: &Proxy, metric: &str, model: &str) -> u64 {
    let series = format!("{metric}{{model=\"{model}\"}} ");
    proxy.metric(c, &series).await as u64
}

async fn counter(c: &reqwest::Client, mock: &MockOpenAi, name: &str) -> u64 {
    mock.stats(c).await[name].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_stalled_embedding_is_answered_by_the_hedge_and_the_stalled_one_cancelled() {
    let dir = temp_dir("hedge-on");
    let (stall, fast) = pair(&dir, &["emb"]);
    let routes = model("emb", "embedding", Some(100), &stall, &fast);
    let proxy = Proxy::start_standalone(&dir, "proxy-hedge", &routes, "").await;
    let c = reqwest::Client::new();
    let dump = proxy.config_dump(&c).await.expect("config_dump");
    assert_eq!(
        dump["table"]["models"]["emb"]["policy"]["hedge_after"], 100,
        "{dump}"
    );

    let body = json!({"model": "emb", "input": "hedge me"});
    // Round robin: the stalling endpoint is tried first by about every other request.
    for _ in 0..4 {
        let (endpoint, took) = call(&c, &proxy, "/v1/embeddings", &body).await;
        assert_eq!(
            endpoint, "emb-fast",
            "the stalled endpoint never answers in time"
        );
        assert!(
            took < Duration::from_millis(STALL_MS / 2),
            "answered after {took:?}: the hedge did not win"
        );
    }
    let stalled = counter(&c, &stall, "requests").await;
    assert!(
        stalled >= 1,
        "round robin sent the stalling endpoint no request"
    );
    let hedges = metric(&c, &proxy, "multiverse_proxy_hedges_total", "emb").await;
    let wins = metric(&c, &proxy, "multiverse_proxy_hedge_wins_total", "emb").await;
    // The stalling endpoint got each request either first (then hedged to the other, which
    // won) or as the hedge of a first attempt that was slow itself (a loaded machine).
    assert_eq!(
        hedges, stalled,
        "one hedge per request the stalling endpoint got"
    );
    assert!(wins >= 1 && wins <= hedges, "{wins} hedge wins of {hedges}");
    // Every stalled request was cancelled: its connection dropped before the 3 s were up (the
    // mock notices the closed connection at once; the deadline only bounds a failure).
    let deadline = Instant::now() + Duration::from_millis(STALL_MS / 2);
    loop {
        let cancelled = counter(&c, &stall, "cancelled").await;
        if cancelled == stalled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{cancelled} of {stalled} stalled requests cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn chat_is_never_hedged_and_hedging_off_sends_no_second_request() {
    let dir = temp_dir("hedge-never");
    let (stall, fast) = pair(&dir, &["ch", "off"]);
    let routes = model("ch", "chat", Some(100), &stall, &fast)
        + &model("off", "embedding", None, &stall, &fast);
    let proxy = Proxy::start_standalone(&dir, "proxy-never", &routes, "").await;
    let c = reqwest::Client::new();
    let chat = json!({"model": "ch", "messages": [{"role": "user", "content": "hi"}]});
    let emb = json!({"model": "off", "input": "not hedged"});
    let mut slow = 0;
    for (path, body) in [("/v1/chat/completions", &chat), ("/v1/embeddings", &emb)] {
        for _ in 0..2 {
            let (endpoint, took) = call(&c, &proxy, path, body).await;
            if endpoint.ends_with("-stall") {
                slow += 1;
                assert!(
                    took >= Duration::from_millis(STALL_MS),
                    "{path}: the stalled endpoint answered after {took:?}"
                );
            }
        }
    }
    assert_eq!(
        slow, 2,
        "round robin sends each model's two requests to both endpoints"
    );
    // Four requests, four upstream requests: no hedge, no cancellation.
    let sent = counter(&c, &stall, "requests").await + counter(&c, &fast, "requests").await;
    assert_eq!(sent, 4);
    assert_eq!(counter(&c, &stall, "cancelled").await, 0);
    for model in ["ch", "off"] {
        let hedges = metric(&c, &proxy, "multiverse_proxy_hedges_total", model).await;
        assert_eq!(hedges, 0, "{model}");
    }
}
