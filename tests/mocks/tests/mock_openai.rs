//! Integration tests of `mock-openai`: servers started in-process on 127.0.0.1:0 (and one real
//! process for the readiness line and SIGTERM handling).

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use multiverse_mocks::common::Running;
use multiverse_mocks::deterministic::hex16;
use multiverse_mocks::openai::{self, OpenAiArgs};
use multiverse_mocks::{embedding, fnv1a64};
use serde_json::{json, Value};

async fn start(extra: &[&str]) -> Running {
    let mut argv = vec!["mock-openai", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(extra);
    openai::spawn(OpenAiArgs::parse_from(argv))
        .await
        .expect("start mock-openai")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

#[tokio::test]
async fn chat_completion_non_stream_shape() {
    let server = start(&["--tokens", "5", "--name", "alpha"]).await;
    let client = support::client(Duration::from_secs(5));
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"say three words"}]}"#;
    let response = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-mock-instance"), "alpha");
    assert!(
        response.headers().get("x-mock-prefix-cache").is_none(),
        "no prefix cache simulated without its flags"
    );
    assert_eq!(header(&response, "x-mock-body-len"), body.len().to_string());
    assert_eq!(
        header(&response, "x-mock-body-fnv1a64"),
        hex16(fnv1a64(body.as_bytes()))
    );
    let length: usize = header(&response, "content-length").parse().expect("length");
    let json: Value = response.json().await.expect("json");
    assert!(length > 0);
    assert!(json["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "demo");
    assert!(json["created"].as_u64().expect("created") > 0);
    let choice = &json["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "tok0 tok1 tok2 tok3 tok4 ");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );

    // max_tokens caps the answer.
    let capped: Value = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(capped["choices"][0]["message"]["content"], "tok0 tok1 ");

    let stats: Value = client
        .get(format!("{}/mock/stats", server.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["name"], "alpha");
    assert_eq!(stats["requests"], 2);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn chat_stream_is_paced_sse_ending_with_done() {
    let interval = 60u64;
    let server = start(&[
        "--tokens",
        "4",
        "--chunk-interval-ms",
        &interval.to_string(),
    ])
    .await;
    let client = support::client(Duration::from_secs(10));
    let response = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({
            "model": "demo",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert!(response.headers().get("x-mock-instance").is_some());

    // While the stream is being written it is counted as active.
    let stats_url = format!("{}/mock/stats", server.url());
    let stats: Value = client
        .get(&stats_url)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["streams_active"], 1);

    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events: Vec<(Instant, String)> = Vec::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf8"));
        while let Some(end) = buffer.find("\n\n") {
            let event = buffer[..end].to_string();
            buffer.drain(..end + 2);
            events.push((Instant::now(), event));
        }
    }
    assert!(buffer.is_empty(), "trailing partial event {buffer:?}");
    // role chunk + 4 tokens + finish chunk + usage chunk + [DONE]
    assert_eq!(events.len(), 8, "{events:#?}");
    assert!(events.iter().all(|(_, e)| e.starts_with("data: ")));
    assert_eq!(events[7].1, "data: [DONE]");
    let chunks: Vec<Value> = events[..7]
        .iter()
        .map(|(_, e)| serde_json::from_str(&e["data: ".len()..]).expect("chunk json"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 ");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);

    // Events arrive spaced by the chunk interval, not in one burst.
    let gaps: Vec<Duration> = events.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let spaced = gaps
        .iter()
        .filter(|g| **g >= Duration::from_millis(interval / 2))
        .count();
    assert!(spaced >= 6, "events were not paced: {gaps:?}");
    let total = events[7].0 - events[0].0;
    assert!(
        total >= Duration::from_millis(interval * 6),
        "stream took {total:?}"
    );

    let stats: Value = client
        .get(&stats_url)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["streams_active"], 0);
    assert_eq!(stats["streams_completed"], 1);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn text_completion_stream_and_non_stream() {
    let server = start(&["--tokens", "3", "--chunk-interval-ms", "0"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/v1/completions", server.url());
    let json: Value = client
        .post(&url)
        .json(&json!({"model": "demo", "prompt": "once upon"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], "tok0 tok1 tok2 ");
    assert_eq!(json["choices"][0]["logprobs"], Value::Null);
    let text = client
        .post(&url)
        .json(&json!({"model": "demo", "prompt": "once upon", "stream": true}))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("\"text_completion\"").count(), 4);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn errors_use_openai_shape() {
    let server = start(&["--model", "a", "--model", "b"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/v1/chat/completions", server.url());
    let models: Value = client
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);

    let unknown = client
        .post(&url)
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers().get("x-mock-instance").is_some());
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    for (payload, status) in [
        ("{not json", 400),
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, 400),
        (r#"{"model":"a"}"#, 400),
        (
            r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            400,
        ),
    ] {
        let response = client.post(&url).body(payload).send().await.expect("send");
        assert_eq!(response.status(), status, "{payload}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{payload}");
        assert!(body["error"]["message"].is_string());
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn api_key_is_enforced() {
    let server = start(&["--api-key", "sekret"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/v1/chat/completions", server.url());
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]});
    for auth in [None, Some("Bearer wrong"), Some("sekret")] {
        let mut request = client.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401, "{auth:?}");
        assert!(response.headers().get("x-mock-instance").is_some());
        let json: Value = response.json().await.expect("json");
        assert_eq!(json["error"]["code"], "invalid_api_key");
    }
    let ok = client
        .post(&url)
        .bearer_auth("sekret")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let models = client
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(models.status(), 401);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn embeddings_are_the_shared_deterministic_vectors() {
    let server = start(&["--dims", "8"]).await;
    let client = support::client(Duration::from_secs(5));
    let json: Value = client
        .post(format!("{}/v1/embeddings", server.url()))
        .json(&json!({"model": "demo", "input": ["hello world", "bye"]}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(json["object"], "list");
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    for (index, text) in ["hello world", "bye"].into_iter().enumerate() {
        let item = &json["data"][index];
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).expect("floats");
        assert_eq!(got, embedding(text, 8, true));
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn injected_failures_and_latency() {
    let server = start(&[
        "--fail-rate",
        "1.0",
        "--fail-status",
        "503",
        "--latency-ms",
        "150",
    ])
    .await;
    let client = support::client(Duration::from_secs(5));
    let started = Instant::now();
    let response = client
        .post(format!("{}/v1/embeddings", server.url()))
        .json(&json!({"model": "demo", "input": "x"}))
        .send()
        .await
        .expect("send");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(response.status(), 503);
    let json: Value = response.json().await.expect("json");
    assert_eq!(json["error"]["type"], "server_error");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn prefix_cache_hits_are_faster_and_counted() {
    let server = start(&[
        "--prefix-cache-entries",
        "1",
        "--ttft-ms",
        "400",
        "--ttft-hit-ms",
        "0",
    ])
    .await;
    let client = support::client(Duration::from_secs(5));
    let chat = |system: &str, user: &str| {
        json!({"model": "demo", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]})
    };
    let mut seen = Vec::new();
    for (body, path) in [
        (chat("S1", "a"), "chat/completions"),
        (chat("S1", "b"), "chat/completions"),
        (chat("S2", "a"), "chat/completions"),
        (chat("S1", "c"), "chat/completions"),
        (json!({"model": "demo", "prompt": "P"}), "completions"),
    ] {
        let started = Instant::now();
        let response = client
            .post(format!("{}/v1/{path}", server.url()))
            .json(&body)
            .send()
            .await
            .expect("send");
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200);
        let state = header(&response, "x-mock-prefix-cache").to_string();
        if state == "miss" {
            assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        } else {
            assert!(elapsed < Duration::from_millis(400), "a hit: {elapsed:?}");
        }
        seen.push(state);
    }
    // One entry: S2 evicted S1.
    assert_eq!(seen, ["miss", "hit", "miss", "miss", "miss"]);
    // Embeddings have no prefix.
    let response = client
        .post(format!("{}/v1/embeddings", server.url()))
        .json(&json!({"model": "demo", "input": "x"}))
        .send()
        .await
        .expect("send");
    assert!(response.headers().get("x-mock-prefix-cache").is_none());
    let stats: openai::OpenAiStats = client
        .get(format!("{}/mock/stats", server.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!((stats.prefix_cache.hits, stats.prefix_cache.misses), (1, 4));
    assert_eq!(
        (stats.prefix_cache.capacity, stats.prefix_cache.entries),
        (1, 1)
    );
    assert_eq!(stats.common.requests, 6);
    server.stop().await.expect("stop");
}

#[test]
fn process_announces_and_exits_cleanly_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_mock-openai");
    let mut process =
        support::MockProcess::start(bin, &["--listen", "127.0.0.1:0", "--name", "proc"]);
    assert_ne!(process.addr.port(), 0);
    assert!(process.addr.ip().is_loopback());
    let status = process.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    let mut process = support::MockProcess::start(bin, &["--listen", "127.0.0.1:0"]);
    let status = process.signal_and_wait("INT", Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}
