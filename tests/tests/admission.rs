//! Admission control (issue 14, phase 1), as real processes on loopback: a slow mock-openai
//! holds the only slot of an endpoint with `max_concurrent = 1`; requests that find it taken
//! wait in the model's queue in FIFO order and are sent as the slot frees, a full queue answers
//! 429 `queue_full` with `Retry-After`, a low-priority waiter is shed for a high one, and a wait
//! longer than `queue_timeout_ms` is 429 `queue_timeout`. The queue's sequencing is observed
//! through the proxy's own gauges (no sleeps).

use std::time::{Duration, Instant};

use multiverse_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
/// How long the mock holds each request.
const HOLD_MS: u64 = 800;

/// A routes-file model served by one endpoint with `max_concurrent = 1`.
fn limited_model(name: &str, mock: &MockOpenAi, policy: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nkind = \"chat\"\n{policy}\n\
         [[models.endpoints]]\nid = \"{name}-slow\"\naddress = \"{}\"\nmax_concurrent = 1\n",
        mock.addr
    )
}

/// What a chat request through the proxy got, and when it ended.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    done: Instant,
}

async fn chat(c: reqwest::Client, url: String, model: &str, priority: Option<&str>) -> Answer {
    let mut req = c
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(p) = priority {
        req = req.header("x-priority", p);
    }
    let r = req.send().await.expect("the proxy answers");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
        done: Instant::now(),
    }
}

/// A request started in the background.
fn spawn(
    c: &reqwest::Client,
    proxy: &Proxy,
    model: &str,
    priority: Option<&'static str>,
) -> tokio::task::JoinHandle<Answer> {
    let (c, url, model) = (c.clone(), proxy.url(), model.to_string());
    tokio::spawn(async move { chat(c, url, &model, priority).await })
}

/// The value of the proxy metric line starting with `prefix` (0 when absent).
async fn metric(c: &reqwest::Client, proxy: &Proxy, prefix: &str) -> f64 {
    proxy.metric(c, prefix).await
}

async fn wait_metric(c: &reqwest::Client, proxy: &Proxy, prefix: &str, value: f64) {
    eventually(WAIT, &format!("{prefix} = {value}"), || async {
        (metric(c, proxy, prefix).await == value).then_some(())
    })
    .await;
}

fn depth(model: &str) -> String {
    format!("multiverse_proxy_queue_depth{{model=\"{model}\"}}")
}

fn assert_refused(a: &Answer, code: &str) {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.body["error"]["code"], code, "{a:?}");
    assert!(
        a.body["error"]["message"].is_string(),
        "OpenAI format: {a:?}"
    );
    assert_eq!(a.retry_after.as_deref(), Some("1"), "{a:?}");
}

async fn start(tag: &str, model: &str, policy: &str) -> (MockOpenAi, Proxy) {
    let dir = temp_dir(tag);
    let hold = HOLD_MS.to_string();
    let mock = MockOpenAi::start(
        &dir,
        "mock-slow",
        &["--model", model, "--latency-ms", &hold],
    );
    let routes = limited_model(model, &mock, policy);
    let proxy = Proxy::start_standalone(&dir, &format!("proxy-{tag}"), &routes, "").await;
    (mock, proxy)
}

#[tokio::test]
async fn waiters_are_sent_in_fifo_order_as_the_slot_frees_and_a_full_queue_is_429() {
    let (_mock, proxy) = start("admit-fifo", "fifo", "queue_max = 2").await;
    let c = reqwest::Client::new();
    let in_flight = "multiverse_proxy_in_flight_requests";
    let first = spawn(&c, &proxy, "fifo", None);
    wait_metric(&c, &proxy, in_flight, 1.0).await;
    let second = spawn(&c, &proxy, "fifo", None);
    wait_metric(&c, &proxy, &depth("fifo"), 1.0).await;
    let third = spawn(&c, &proxy, "fifo", None);
    wait_metric(&c, &proxy, &depth("fifo"), 2.0).await;
    // The slot is taken and two wait: the queue is full.
    let refused = chat(c.clone(), proxy.url(), "fifo", None).await;
    assert_refused(&refused, "queue_full");

    let (a, b, d) = (
        first.await.expect("first"),
        second.await.expect("second"),
        third.await.expect("third"),
    );
    for x in [&a, &b, &d] {
        assert_eq!(
            x.status, 200,
            "queued requests complete once the slot frees: {x:?}"
        );
    }
    assert!(
        a.done < b.done && b.done < d.done,
        "FIFO: {a:?} {b:?} {d:?}"
    );
    let gap = d.done - b.done;
    assert!(
        gap >= Duration::from_millis(HOLD_MS - 100),
        "one at a time (max_concurrent = 1): the third ended {gap:?} after the second"
    );
    assert_eq!(metric(&c, &proxy, &depth("fifo")).await, 0.0);
    let sheds = "multiverse_proxy_queue_sheds_total{model=\"fifo\",reason=\"full\"}";
    assert_eq!(metric(&c, &proxy, sheds).await, 1.0);
    assert_eq!(
        metric(
            &c,
            &proxy,
            "multiverse_proxy_queue_wait_seconds_count{model=\"fifo\"}"
        )
        .await,
        2.0,
        "two requests were admitted after waiting"
    );
}

#[tokio::test]
async fn a_low_priority_waiter_is_shed_for_a_high_one() {
    let (_mock, proxy) = start("admit-prio", "prio", "queue_max = 1").await;
    let c = reqwest::Client::new();
    let first = spawn(&c, &proxy, "prio", None);
    wait_metric(&c, &proxy, "multiverse_proxy_in_flight_requests", 1.0).await;
    let low = spawn(&c, &proxy, "prio", Some("low"));
    wait_metric(&c, &proxy, &depth("prio"), 1.0).await;
    let high = spawn(&c, &proxy, "prio", Some("high"));
    let low = low.await.expect("low");
    assert_refused(&low, "queue_full");
    // The queue now holds the high one: a low newcomer is refused, not queued.
    let late_low = chat(c.clone(), proxy.url(), "prio", Some("low")).await;
    assert_refused(&late_low, "queue_full");
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(
        high.await.expect("high").status,
        200,
        "the high one is served"
    );
    let displaced = "multiverse_proxy_queue_sheds_total{model=\"prio\",reason=\"displaced\"}";
    assert_eq!(metric(&c, &proxy, displaced).await, 1.0);
}

#[tokio::test]
async fn a_wait_longer_than_the_queue_timeout_is_429() {
    let (_mock, proxy) = start(
        "admit-timeout",
        "wait",
        "queue_max = 4\nqueue_timeout_ms = 300",
    )
    .await;
    let c = reqwest::Client::new();
    let first = spawn(&c, &proxy, "wait", None);
    wait_metric(&c, &proxy, "multiverse_proxy_in_flight_requests", 1.0).await;
    let started = Instant::now();
    let waited = chat(c.clone(), proxy.url(), "wait", None).await;
    let took = waited.done - started;
    assert_refused(&waited, "queue_timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(HOLD_MS),
        "refused at the queue's timeout, before the slot freed: {took:?}"
    );
    assert_eq!(first.await.expect("first").status, 200);
    // The slot is free again: the next request goes straight through.
    let next = chat(c.clone(), proxy.url(), "wait", None).await;
    assert_eq!(next.status, 200, "{next:?}");
    let timeouts = "multiverse_proxy_queue_sheds_total{model=\"wait\",reason=\"timeout\"}";
    assert_eq!(metric(&c, &proxy, timeouts).await, 1.0);
}
