//! What happened to a request, through real processes: its `x-request-id` (kept or made, on
//! the response, sent upstream, in the proxy's log), W3C `traceparent` (passed on or started),
//! and a backend that dies after the response started (SSE ends with an error event, a plain
//! body is cut, a gRPC stream ends UNAVAILABLE), counted in the metrics.

use std::time::Duration;

use multiverse_proto::tei::v1 as tei;
use multiverse_tests::*;
use serde_json::{json, Value};
use tei::embed_client::EmbedClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn chat(stream: bool) -> Value {
    json!({"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(
    client: &reqwest::Client,
    proxy: &Proxy,
    body: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request")
}

async fn metrics(client: &reqwest::Client, proxy: &Proxy) -> String {
    client
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A version-00 traceparent's trace id and flags.
fn trace_parts(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "{tp}");
    assert!(is_hex(parts[1], 32) && is_hex(parts[2], 16), "{tp}");
    (parts[1].to_string(), parts[3].to_string())
}

#[tokio::test]
async fn request_ids_are_kept_or_made_sent_upstream_and_returned() {
    let dir = temp_dir("obs-ids");
    let mock = MockOpenAi::start(
        &dir,
        "mock-ids",
        &["--chunk-interval-ms", "0", "--echo-headers"],
    );
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-ids", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-ids", &routes, "").await;
    let client = reqwest::Client::new();

    // None sent: one is made, returned, and is the one the backend saw.
    let a = post(&client, &proxy, chat(false), &[]).await;
    assert_eq!(a.status(), 200);
    let made = header(&a, "x-request-id");
    assert!(is_hex(&made, 32), "generated id {made:?}");
    assert_eq!(header(&a, "x-mock-seen-request-id"), made);
    let b = post(&client, &proxy, chat(false), &[]).await;
    assert_ne!(header(&b, "x-request-id"), made, "each request its own id");

    // A usable one is kept, upstream and back.
    let mine = "client-req-42:a/b=c";
    let kept = post(&client, &proxy, chat(false), &[("x-request-id", mine)]).await;
    assert_eq!(header(&kept, "x-request-id"), mine);
    assert_eq!(header(&kept, "x-mock-seen-request-id"), mine);

    // Unusable ones (a space, too long) are replaced everywhere.
    let long = "a".repeat(129);
    for bad in ["has a space", long.as_str()] {
        let r = post(&client, &proxy, chat(false), &[("x-request-id", bad)]).await;
        let id = header(&r, "x-request-id");
        assert!(is_hex(&id, 32), "{bad:?} replaced by {id:?}");
        assert_eq!(header(&r, "x-mock-seen-request-id"), id);
    }

    // SSE responses and the proxy's own errors carry it too.
    let sse = post(&client, &proxy, chat(true), &[("x-request-id", "sse-1")]).await;
    assert!(header(&sse, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&sse, "x-request-id"), "sse-1");
    assert!(String::from_utf8_lossy(&sse.bytes().await.expect("stream")).contains("[DONE]"));
    let unknown = json!({"model": "nope", "messages": []});
    let err = post(&client, &proxy, unknown, &[("x-request-id", "err-1")]).await;
    assert_eq!(err.status(), 404);
    assert_eq!(header(&err, "x-request-id"), "err-1");
    let none = post(&client, &proxy, json!({"model": "nope"}), &[]).await;
    assert!(is_hex(&header(&none, "x-request-id"), 32));
}

#[tokio::test]
async fn traceparent_passes_through_or_is_started() {
    let dir = temp_dir("obs-trace");
    let mock = MockOpenAi::start(&dir, "mock-trace", &["--echo-headers"]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-trace", mock.addr, "healthy")],
    );
    let sampled = "[tracing]\nsample = true\n";
    let proxy = Proxy::start_standalone(&dir, "proxy-trace", &routes, sampled).await;
    let client = reqwest::Client::new();

    // A valid one goes upstream unchanged, with its tracestate.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let r = post(
        &client,
        &proxy,
        chat(false),
        &[("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-mock-seen-traceparent"), tp);
    assert_eq!(header(&r, "x-mock-seen-tracestate"), "congo=t61rcWkgMzE");

    // None: a new trace, sampled as configured; each request its own trace id.
    let a = post(&client, &proxy, chat(false), &[]).await;
    let (trace_a, flags) = trace_parts(&header(&a, "x-mock-seen-traceparent"));
    assert_eq!(flags, "01", "[tracing] sample = true");
    let b = post(&client, &proxy, chat(false), &[]).await;
    let (trace_b, _) = trace_parts(&header(&b, "x-mock-seen-traceparent"));
    assert_ne!(trace_a, trace_b);

    // An invalid one (all-zero trace id) is replaced; its tracestate belongs to no trace.
    let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let r = post(
        &client,
        &proxy,
        chat(false),
        &[("traceparent", zero), ("tracestate", "congo=x")],
    )
    .await;
    let seen = header(&r, "x-mock-seen-traceparent");
    assert_ne!(seen, zero);
    let (trace, _) = trace_parts(&seen);
    assert_ne!(trace, "0".repeat(32));
    assert_eq!(header(&r, "x-mock-seen-tracestate"), "");
}

#[tokio::test]
async fn a_backend_dying_mid_sse_ends_the_stream_with_an_error_event() {
    let dir = temp_dir("obs-midstream");
    let args = ["--die-after-chunks", "3", "--chunk-interval-ms", "20"];
    let mock = MockOpenAi::start(&dir, "mock-dying", &args);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-dying", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-midstream", &routes, "").await;
    let client = reqwest::Client::new();

    let resp = post(
        &client,
        &proxy,
        chat(true),
        &[("x-request-id", "cut-sse-7")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-request-id"), "cut-sse-7");
    // The body ends cleanly (a terminating chunk): reading it whole succeeds.
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the stream ends")
        .expect("a clean end, not a cut connection");
    let text = String::from_utf8_lossy(&body).to_string();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e))
        .collect();
    assert_eq!(
        events.len(),
        4,
        "three events from the backend, then the error: {text}"
    );
    assert!(!text.contains("[DONE]"), "[DONE] must not be faked: {text}");
    for e in &events[..3] {
        let v: Value = serde_json::from_str(e).expect("a backend chunk");
        assert_eq!(v["object"], "chat.completion.chunk", "{e}");
    }
    let last: Value = serde_json::from_str(events[3]).expect("the error event is JSON");
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert_eq!(last["error"]["endpoint"], "mock-dying", "{last}");
    assert!(last["error"]["code"].is_string(), "{last}");
    assert!(last["error"]["message"].is_string(), "{last}");

    // A plain body cut mid-way: the client sees a broken body, never a complete-looking one.
    let resp = post(
        &client,
        &proxy,
        chat(false),
        &[("x-request-id", "cut-json-8")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the read ends");
    assert!(read.is_err(), "a cut body read as complete: {read:?}");

    // Counted, and logged with the request's id.
    let m = metrics(&client, &proxy).await;
    for body in ["sse", "http"] {
        let line = format!(
            "multiverse_proxy_upstream_midstream_failures_total{{body=\"{body}\",endpoint=\"mock-dying\",model=\"demo\"}} 1"
        );
        assert!(m.contains(&line), "{line} in:\n{m}");
    }
    let log = eventually(Duration::from_secs(5), "the log lines", || async {
        let log = std::fs::read_to_string(&proxy.proc.log).unwrap_or_default();
        (log.contains("cut-sse-7") && log.contains("cut-json-8")).then_some(log)
    })
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("cut-sse-7") && l.contains("after the response had started"))
        .unwrap_or_else(|| panic!("no mid-stream line with the request id in:\n{log}"));
    assert!(line.contains("mock-dying"), "{line}");
}

#[tokio::test]
async fn a_grpc_backend_dying_mid_stream_ends_it_unavailable() {
    let dir = temp_dir("obs-grpc");
    let mut tei = MockTei::start(&dir, "tei-dying", &["--grpc"]);
    let routes = model_toml(
        "bge",
        "embedding",
        "",
        &[Ep::grpc("tei-dying", tei.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-cut", &routes, "").await;
    let channel = Channel::from_shared(proxy.url())
        .expect("url")
        .connect()
        .await
        .expect("connect to the proxy");
    let mut embed = EmbedClient::new(channel);

    let (tx, rx) = mpsc::channel(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-model", "bge".parse().expect("ascii"));
    let mut replies = embed
        .embed_stream(req)
        .await
        .expect("EmbedStream")
        .into_inner();
    let ask = |text: &str| tei::EmbedRequest {
        inputs: text.into(),
        ..Default::default()
    };
    tx.send(ask("first")).await.expect("send");
    let first = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await
        .expect("a first reply");
    assert!(matches!(first, Ok(Some(_))), "{first:?}");

    // The backend dies with the stream open.
    tei.proc.kill();
    let _ = tx.send(ask("second")).await;
    let end = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await
        .expect("the stream ends");
    let status = end.expect_err("the cut stream ends with an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("tei-dying"), "{status:?}");

    let client = reqwest::Client::new();
    let m = metrics(&client, &proxy).await;
    let line = "multiverse_proxy_upstream_midstream_failures_total{body=\"grpc\",endpoint=\"tei-dying\",model=\"bge\"} 1";
    assert!(m.contains(line), "{line} in:\n{m}");
}

#[tokio::test]
async fn the_control_plane_api_ids_its_requests_and_logs_them() {
    let dir = temp_dir("obs-control");
    let body = "[admin]\napi_keys = [\"adm1n-key\"]\n[inference_auth]\nmode = \"keys\"\n";
    let control = Control::start(&dir, "cp-ids", body).await;
    let client = reqwest::Client::new();
    let get = |path: &str, id: Option<&str>| {
        let mut req = client.get(format!("{}{path}", control.api_url()));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };

    let health = get("/health", None).await.expect("health");
    assert_eq!(health.status(), 200);
    assert!(is_hex(&header(&health, "x-request-id"), 32), "{health:?}");
    let kept = get("/health", Some("op-health-1")).await.expect("health");
    assert_eq!(header(&kept, "x-request-id"), "op-health-1");
    let replaced = get("/health", Some("two words")).await.expect("health");
    assert!(is_hex(&header(&replaced, "x-request-id"), 32));
    // Errors carry it too: an unknown route, a missing key.
    let missing = get("/nope", Some("op-404")).await.expect("404");
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "x-request-id"), "op-404");
    let refused = get("/admin/keys", Some("op-401")).await.expect("401");
    assert_eq!(refused.status(), 401);
    assert_eq!(header(&refused, "x-request-id"), "op-401");

    // A handler's log line names the request's id.
    let created = client
        .post(format!("{}/admin/keys", control.api_url()))
        .header("authorization", "Bearer adm1n-key")
        .header("x-request-id", "op-key-create-9")
        .json(&json!({"name": "team-obs", "models": ["demo"]}))
        .send()
        .await
        .expect("create key");
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "x-request-id"), "op-key-create-9");
    let line = eventually(Duration::from_secs(5), "the key's log line", || async {
        let log = std::fs::read_to_string(&control.proc.log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("inference key created"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("op-key-create-9"), "{line}");
}

/// The value of the Prometheus sample `name{labels}` (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The usage a response reported: its body's `usage`, or the usage chunk of an SSE stream.
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
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|v| from(&v))
}

#[tokio::test]
async fn tokens_are_counted_per_model_endpoint_and_key_and_streams_are_timed() {
    let dir = temp_dir("obs-usage");
    let mock = MockOpenAi::start(&dir, "mock-usage", &["--chunk-interval-ms", "5"]);
    // Keys mode, one key (the secret of config/routes.toml's example hash).
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-usage", mock.addr, "healthy")],
    ) + "[auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"team-obs\"\n\
           sha256 = \"9e00ec08faad6b9d3ea5af938826434067851847bb98707c9e3906cc71bcfe3d\"\n";
    let proxy = Proxy::start_standalone(&dir, "proxy-usage", &routes, "").await;
    let client = reqwest::Client::new();
    let key = [("authorization", "Bearer mv-example-secret")];
    let prompt = |n: usize| json!([{"role": "user", "content": "word ".repeat(n)}]);

    let mut want = (0.0, 0.0);
    // Non-streamed: the body's usage.
    let plain = json!({"model": "demo", "max_tokens": 5, "messages": prompt(7)});
    // Streamed with the client's own include_usage: the final usage chunk.
    let with_usage = json!({"model": "demo", "max_tokens": 3, "stream": true,
        "stream_options": {"include_usage": true}, "messages": prompt(11)});
    for body in [plain, with_usage] {
        let resp = post(&client, &proxy, body.clone(), &key).await;
        assert_eq!(resp.status(), 200, "{body}");
        let text = resp.text().await.expect("body");
        let (p, c) = usage_of(&text).unwrap_or_else(|| panic!("no usage in {text}"));
        assert!(p > 0.0 && c > 0.0, "{text}");
        want = (want.0 + p, want.1 + c);
    }
    let series = |kind: &str| {
        format!(
            "multiverse_proxy_tokens_total{{endpoint=\"mock-usage\",key=\"team-obs\",kind=\"{kind}\",model=\"demo\"}}"
        )
    };
    // A request is counted as it ends, just after its client has the whole answer: wait for
    // the counts (an exact match, so an over-count fails too once the wait ends).
    let counted = |m: &str| {
        (
            sample(m, &series("prompt")),
            sample(m, &series("completion")),
        )
    };
    let m = eventually(Duration::from_secs(5), "tokens counted", || async {
        let m = metrics(&client, &proxy).await;
        (counted(&m) == want).then_some(m)
    })
    .await;
    assert_eq!(counted(&m), want, "{m}");

    // The stream was timed: one first token, a gap per later chunk.
    let first = "multiverse_proxy_time_to_first_token_seconds_count{model=\"demo\"}";
    let gaps = "multiverse_proxy_inter_token_gap_seconds_count{model=\"demo\"}";
    assert_eq!(sample(&m, first), 1.0, "{m}");
    assert!(sample(&m, gaps) >= 3.0, "{m}");
}
