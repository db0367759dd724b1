//! Token usage of streams through real processes (issue 15): the proxy asks the backend for a
//! stream's usage when the client did not (`[usage] request_stream_usage`, on by default),
//! counts it, and hides the usage event from that client; a client's own `stream_options`
//! decide alone; a body routed by `x-model` (never read) goes as sent; with the setting off,
//! such a stream counts no tokens.

use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

/// The value of the Prometheus sample `name{labels}` (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn tokens(m: &str, kind: &str) -> f64 {
    let series = format!(
        "multiverse_proxy_tokens_total{{endpoint=\"mock-su\",key=\"-\",kind=\"{kind}\",model=\"demo\"}}"
    );
    sample(m, &series)
}

/// Prompt and completion tokens counted so far.
async fn counted(client: &reqwest::Client, proxy: &Proxy) -> (f64, f64) {
    let m = client
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    (tokens(&m, "prompt"), tokens(&m, "completion"))
}

/// Waits until the counts are `want` (a request is counted as it ends, just after its client
/// has the whole answer).
async fn wait_counted(client: &reqwest::Client, proxy: &Proxy, want: (f64, f64)) {
    let what = format!("tokens counted = {want:?}");
    eventually(Duration::from_secs(5), &what, || async move {
        (counted(client, proxy).await == want).then_some(())
    })
    .await;
}

/// A chat request's status and body text (the whole stream for `"stream": true`).
async fn chat(client: &reqwest::Client, proxy: &Proxy, body: &Value) -> String {
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "{body}");
    resp.text().await.expect("body")
}

/// The usage counts of a body or of a stream's usage event.
fn usage_of(text: &str) -> Option<(f64, f64)> {
    let from = |v: &Value| {
        let u = &v["usage"];
        Some((
            u["prompt_tokens"].as_f64()?,
            u["completion_tokens"].as_f64()?,
        ))
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return from(&v);
    }
    sse_data(text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| from(&v))
}

/// A stream's JSON events (`[DONE]` checked to be last and left out).
fn events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let data = sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

fn body(stream: bool, options: Option<Value>) -> Value {
    let mut b = json!({"model": "demo", "max_tokens": 3, "stream": stream,
        "messages": [{"role": "user", "content": "one two three four five six seven"}]});
    if let Some(o) = options {
        b["stream_options"] = o;
    }
    b
}

#[tokio::test]
async fn streams_are_asked_for_usage_counted_and_its_event_hidden_from_who_did_not_ask() {
    let dir = temp_dir("stream-usage");
    let mock = MockOpenAi::start(&dir, "mock-su", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-su", mock.addr, "healthy")],
    );
    let on = Proxy::start_standalone(&dir, "proxy-su-on", &routes, "").await;
    let off = Proxy::start_standalone(
        &dir,
        "proxy-su-off",
        &routes,
        "[usage]\nrequest_stream_usage = false\n",
    )
    .await;
    let client = reqwest::Client::new();

    // Non-streamed: the body's usage, counted.
    let text = chat(&client, &on, &body(false, None)).await;
    let per_request = usage_of(&text).unwrap_or_else(|| panic!("no usage in {text}"));
    assert!(per_request.0 > 0.0 && per_request.1 > 0.0, "{text}");
    wait_counted(&client, &on, per_request).await;

    // Streamed, the client asking for usage: its usage event reaches it, and is counted.
    let asked = json!({"include_usage": true});
    let text = chat(&client, &on, &body(true, Some(asked))).await;
    assert_eq!(usage_of(&text), Some(per_request), "{text}");
    let evs = events(&text);
    assert_eq!(evs.last().map(|e| e["choices"].clone()), Some(json!([])));
    let twice = (2.0 * per_request.0, 2.0 * per_request.1);
    wait_counted(&client, &on, twice).await;

    // Streamed without: the backend was asked (every chunk carries `usage: null`), the usage
    // event was counted and not forwarded, `[DONE]` still last.
    let text = chat(&client, &on, &body(true, None)).await;
    assert_eq!(usage_of(&text), None, "{text}");
    let evs = events(&text);
    // role, 3 tokens, stop.
    assert_eq!(evs.len(), 5, "{text}");
    for e in &evs {
        assert!(
            e["choices"].as_array().is_some_and(|c| !c.is_empty()),
            "{e}"
        );
        assert_eq!(e.get("usage"), Some(&Value::Null), "{e}");
    }
    let thrice = (3.0 * per_request.0, 3.0 * per_request.1);
    wait_counted(&client, &on, thrice).await;

    // The client's own stream options, without usage: forwarded as sent (no usage anywhere),
    // nothing counted (checked by the exact total below).
    let declined = json!({"include_usage": false});
    let text = chat(&client, &on, &body(true, Some(declined))).await;
    for e in events(&text) {
        assert_eq!(e.get("usage"), None, "{e}");
    }

    // Routed by `x-model`, the body is never read: it goes as sent, as documented.
    let resp = client
        .post(format!("{}/v1/chat/completions", on.url()))
        .header("x-model", "demo")
        .json(&body(true, None))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    for e in events(&text) {
        assert_eq!(e.get("usage"), None, "{e}");
    }
    // Neither was counted: one more plain request makes exactly four.
    chat(&client, &on, &body(false, None)).await;
    wait_counted(&client, &on, (4.0 * per_request.0, 4.0 * per_request.1)).await;

    // Asking off: the stream goes as the client sent it, and counts no tokens.
    let text = chat(&client, &off, &body(true, None)).await;
    let evs = events(&text);
    assert_eq!(evs.len(), 5, "{text}");
    for e in &evs {
        assert_eq!(e.get("usage"), None, "{e}");
    }
    // ... while a non-streamed answer is still counted: exactly one request's tokens.
    chat(&client, &off, &body(false, None)).await;
    wait_counted(&client, &off, per_request).await;
}

/// The usage event the proxy hides is not a token the client saw: a stream of N visible events
/// (`mock-openai` writes one per chunk, paced) records one time to first token and exactly
/// N − 1 inter-token gaps, with the usage asked for and hidden (the backend sent N + 1).
#[tokio::test]
async fn the_hidden_usage_event_is_not_timed_as_a_token() {
    let dir = temp_dir("stream-usage-pace");
    // 40 ms apart: each event is a chunk of its own at the proxy, even on a busy machine.
    let mock = MockOpenAi::start(&dir, "mock-su", &["--chunk-interval-ms", "40"]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-su", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-su-pace", &routes, "").await;
    let client = reqwest::Client::new();
    let text = chat(&client, &proxy, &body(false, None)).await;
    let per_request = usage_of(&text).unwrap_or_else(|| panic!("no usage in {text}"));

    let text = chat(&client, &proxy, &body(true, None)).await;
    assert_eq!(usage_of(&text), None, "hidden: {text}");
    // role, 3 tokens, stop, [DONE].
    let visible = sse_data(&text).len();
    assert_eq!(visible, 6, "{text}");
    // Counted as it ends: the stream was asked for usage and read to its end.
    wait_counted(&client, &proxy, (2.0 * per_request.0, 2.0 * per_request.1)).await;
    let first = "multiverse_proxy_time_to_first_token_seconds_count{model=\"demo\"}";
    let gaps = "multiverse_proxy_inter_token_gap_seconds_count{model=\"demo\"}";
    assert_eq!(proxy.metric(&client, first).await, 1.0);
    assert_eq!(
        proxy.metric(&client, gaps).await,
        (visible - 1) as f64,
        "gaps between the events the client got, the hidden usage event not among them"
    );
}
