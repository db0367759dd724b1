//! The first request end to end: mock-openai ×2, the control plane and the proxy as real
//! processes on loopback; chat completions (stream and non-stream) through the proxy.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiverse_tests::*;
use serde_json::{json, Value};

struct Slice {
    _dir: std::path::PathBuf,
    mocks: Vec<MockOpenAi>,
    _control: Control,
    proxy: Proxy,
    client: reqwest::Client,
}

async fn slice(mock_args: &[&str]) -> Slice {
    let dir = temp_dir("slice");
    let a = MockOpenAi::start(&dir, "mock-a", mock_args);
    let b = MockOpenAi::start(&dir, "mock-b", mock_args);
    let control = Control::start(&dir, "cp-test", &backends_toml(&[&a, &b], "demo")).await;
    let proxy = Proxy::start(&dir, "proxy-test", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();
    proxy.wait_ready(&client).await;
    Slice {
        _dir: dir,
        mocks: vec![a, b],
        _control: control,
        proxy,
        client,
    }
}

fn chat(stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Say hello"}],
        "model": "demo",
        "stream": stream,
    })
}

#[tokio::test]
async fn chat_completions_reach_both_backends() {
    let s = slice(&["--tokens", "5"]).await;
    let mut served = HashSet::new();
    for _ in 0..20 {
        let resp = s
            .client
            .post(format!("{}/v1/chat/completions", s.proxy.url()))
            .json(&chat(false))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let endpoint = resp.headers()["x-multiverse-endpoint"]
            .to_str()
            .expect("ascii")
            .to_string();
        let instance = resp.headers()["x-mock-instance"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(
            endpoint, instance,
            "the endpoint header names the backend that answered"
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "demo");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        let content = body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(content.split_whitespace().count(), 5, "{content}");
        assert!(body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);
        served.insert(endpoint);
    }
    let expected: HashSet<String> = s.mocks.iter().map(|m| m.name.clone()).collect();
    assert_eq!(served, expected, "both backends served requests");
}

#[tokio::test]
async fn sse_chunks_stream_through_before_the_backend_finishes() {
    // 12 tokens, 60 ms apart: the backend needs ~0.8 s to finish the stream.
    let s = slice(&["--tokens", "12", "--chunk-interval-ms", "60"]).await;
    let mut resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.proxy.url()))
        .json(&chat(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let endpoint = resp.headers()["x-multiverse-endpoint"]
        .to_str()
        .expect("ascii")
        .to_string();
    let backend = s
        .mocks
        .iter()
        .find(|m| m.name == endpoint)
        .expect("endpoint is one of the mocks");

    let started = Instant::now();
    let first = resp.chunk().await.expect("read").expect("a first chunk");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // The backend is still writing the stream when the client holds the first chunk.
    let stats = backend.stats(&s.client).await;
    assert_eq!(
        stats["streams_active"], 1,
        "first chunk arrived while the backend was still streaming: {stats}"
    );

    let mut text = String::from_utf8_lossy(&first).into_owned();
    let mut arrivals = 1;
    while let Some(chunk) = resp.chunk().await.expect("read") {
        text.push_str(&String::from_utf8_lossy(&chunk));
        arrivals += 1;
    }
    let last_at = started.elapsed();
    assert!(
        arrivals >= 10,
        "chunks arrived one by one, not batched: {arrivals} reads"
    );
    assert!(
        last_at - first_at >= Duration::from_millis(500),
        "the stream was spread over time ({first_at:?} → {last_at:?})"
    );
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut content = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("each event is JSON");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "demo");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    assert_eq!(content.split_whitespace().count(), 12, "{content}");
    assert!(text
        .split("\n\n")
        .all(|ev| ev.is_empty() || ev.starts_with("data: ")));
}

#[tokio::test]
async fn client_errors_are_openai_errors() {
    let s = slice(&[]).await;
    let url = format!("{}/v1/chat/completions", s.proxy.url());
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            br#"{"model":"nope","messages":[]}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (b"{not json".to_vec(), 400, "invalid_json"),
        (br#"{"messages":[]}"#.to_vec(), 400, "missing_model"),
        (br#"{"model":7}"#.to_vec(), 400, "invalid_model"),
        (b"[1,2,3]".to_vec(), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let resp = s
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), status, "{}", String::from_utf8_lossy(&body));
        let v: Value = resp.json().await.expect("json error body");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(v["error"]["type"].is_string());
    }
    // Unknown route, same format.
    let resp = s
        .client
        .post(format!("{}/v2/whatever", s.proxy.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unknown_route");
}

#[tokio::test]
async fn megabyte_prompt_with_model_last_is_forwarded_byte_for_byte() {
    let s = slice(&["--tokens", "3"]).await;
    // Serialized the way the openai SDK does it: messages first, model last.
    let prompt = "The quick brown fox \u{e9}\\\" jumps. ".repeat(32 * 1024);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":{}}}],"stream":false,"model":"demo"}}"#,
        serde_json::to_string(&prompt).expect("encode")
    );
    assert!(body.len() > 1 << 20, "body is {} bytes", body.len());
    for _ in 0..4 {
        let resp = s
            .client
            .post(format!("{}/v1/chat/completions", s.proxy.url()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(
            h["x-mock-body-len"].to_str().ok(),
            Some(&*body.len().to_string())
        );
        assert_eq!(
            h["x-mock-body-fnv1a64"].to_str().ok(),
            Some(&*fnv1a64_hex(body.as_bytes())),
            "upstream received the body byte for byte"
        );
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["model"], "demo");
    }
}

#[tokio::test]
async fn x_model_header_routes_without_reading_the_body() {
    let s = slice(&[]).await;
    let body = br#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.proxy.url()))
        .header("x-model", "demo")
        .header("content-type", "application/json")
        .body(&body[..])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-mock-body-fnv1a64"].to_str().ok(),
        Some(&*fnv1a64_hex(body))
    );
}

#[tokio::test]
async fn models_list_comes_from_the_table() {
    let s = slice(&[]).await;
    let v: Value = s
        .client
        .get(format!("{}/v1/models", s.proxy.url()))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "demo");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["multiverse"]["healthy_endpoints"], 2);
}

#[tokio::test]
async fn proxy_starts_without_control_plane_and_routes_once_it_appears() {
    let dir = temp_dir("late-cp");
    let mock = MockOpenAi::start(&dir, "mock-late", &[]);
    let api = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let discovery: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Proxy::start(&dir, "proxy-early", &[format!("http://{discovery}")]).await;
    let client = reqwest::Client::new();

    let ready = client
        .get(format!("{}/ready", proxy.admin_url()))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503, "not ready without a routing table");
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&chat(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "not_ready");

    let _control = Control::start_on(
        &dir,
        "cp-late",
        &backends_toml(&[&mock], "demo"),
        api,
        discovery,
    )
    .await;
    proxy.wait_ready(&client).await;
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&chat(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-multiverse-endpoint"].to_str().ok(),
        Some("mock-late")
    );
}

#[tokio::test]
async fn control_plane_reports_the_proxy_ack() {
    let s = slice(&[]).await;
    let v: Value = eventually(
        Duration::from_secs(10),
        "an ACK in GET /proxies",
        || async {
            let v: Value = s
                .client
                .get(format!("{}/proxies", s._control.api_url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["proxies"][0]["acked_version"] == v["current_version"]).then_some(v)
        },
    )
    .await;
    assert_eq!(v["proxies"][0]["node_id"], "proxy-test");
    assert_eq!(v["proxies"][0]["connected"], true);
    assert!(v["proxies"][0]["last_nack"].is_null());
}
