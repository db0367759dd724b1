//! Integration tests of `mock-tei` in HTTP mode: servers started in-process on 127.0.0.1:0 (and
//! one real process launched with TEI's flags for the readiness line and SIGTERM handling).

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use multiverse_mocks::common::Running;
use multiverse_mocks::deterministic::hex16;
use multiverse_mocks::tei::{self, TeiArgs};
use multiverse_mocks::{embedding, fnv1a64};
use serde_json::{json, Value};

async fn start(extra: &[&str]) -> Running {
    let mut argv = vec!["mock-tei", "--hostname", "127.0.0.1", "--port", "0"];
    argv.extend_from_slice(extra);
    tei::spawn(TeiArgs::parse_from(argv))
        .await
        .expect("start mock-tei")
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn embed_returns_the_shared_embedding() {
    let server = start(&["--dims", "12", "--name", "tei-a"]).await;
    let client = support::client(Duration::from_secs(5));
    let body = r#"{"inputs":["hello world","second text"]}"#;
    let response = client
        .post(format!("{}/embed", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    assert_eq!(get("x-mock-instance"), "tei-a");
    assert_eq!(get("x-compute-type"), "cpu");
    assert_eq!(get("x-compute-characters"), "22");
    assert_eq!(get("x-compute-tokens"), "8");
    for name in [
        "x-compute-time",
        "x-total-time",
        "x-tokenization-time",
        "x-queue-time",
    ] {
        assert!(get(name).parse::<u64>().is_ok(), "{name}");
    }
    assert_eq!(get("x-mock-body-len"), body.len().to_string());
    assert_eq!(get("x-mock-body-fnv1a64"), hex16(fnv1a64(body.as_bytes())));
    let vectors: Vec<Vec<f32>> = response.json().await.expect("json");
    assert_eq!(
        vectors,
        vec![
            embedding("hello world", 12, true),
            embedding("second text", 12, true)
        ]
    );

    let (status, raw) = post(
        &client,
        format!("{}/embed", server.url()),
        json!({"inputs": "hello world", "normalize": false}),
    )
    .await;
    assert_eq!(status, 200);
    let raw: Vec<Vec<f32>> = serde_json::from_value(raw).expect("floats");
    assert_eq!(raw, vec![embedding("hello world", 12, false)]);

    let (status, openai) = post(
        &client,
        format!("{}/v1/embeddings", server.url()),
        json!({"input": "hello world", "model": "whatever"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(openai["model"], "BAAI/bge-small-en-v1.5");
    let v: Vec<f32> = serde_json::from_value(openai["data"][0]["embedding"].clone()).expect("v");
    assert_eq!(v, embedding("hello world", 12, true));
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn health_info_and_other_routes() {
    let server = start(&[
        "--dims",
        "4",
        "--model-id",
        "org/model",
        "--pooling",
        "mean",
        "--max-client-batch-size",
        "3",
    ])
    .await;
    let client = support::client(Duration::from_secs(5));
    let url = |path: &str| format!("{}{path}", server.url());
    let health = client.get(url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200);
    assert!(health.headers().get("x-mock-instance").is_some());
    let info: Value = client
        .get(url("/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(info["model_id"], "org/model");
    assert_eq!(
        info["model_type"],
        json!({"embedding": {"pooling": "mean"}})
    );
    assert_eq!(info["max_client_batch_size"], 3);
    assert_eq!(info["max_input_length"], 512);
    assert_eq!(info["version"], "mock");

    let (status, sparse) = post(&client, url("/embed_sparse"), json!({"inputs": "b a b"})).await;
    assert_eq!(status, 200);
    assert_eq!(sparse[0].as_array().map(Vec::len), Some(2));
    assert!(sparse[0][0]["index"].is_u64() && sparse[0][0]["value"].is_f64());

    let (status, all) = post(&client, url("/embed_all"), json!({"inputs": ["a b c"]})).await;
    assert_eq!(status, 200);
    let all: Vec<Vec<Vec<f32>>> = serde_json::from_value(all).expect("3d");
    assert_eq!((all.len(), all[0].len(), all[0][0].len()), (1, 3, 4));

    let (status, ranks) = post(
        &client,
        url("/rerank"),
        json!({"query": "deep learning", "texts": ["cooking", "deep learning is fun"], "return_text": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ranks[0]["index"], 1);
    assert_eq!(ranks[0]["text"], "deep learning is fun");
    assert!(ranks[0]["score"].as_f64() > ranks[1]["score"].as_f64());

    let (status, single) = post(&client, url("/predict"), json!({"inputs": "nice"})).await;
    assert_eq!(status, 200);
    assert!(single[0]["label"].is_string() && single[0]["score"].is_f64());
    let (status, batch) = post(
        &client,
        url("/predict"),
        json!({"inputs": [["a", "b"], ["c"]]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(batch.as_array().map(Vec::len), Some(2));
    assert!(batch[0].is_array());

    let (status, sims) = post(
        &client,
        url("/similarity"),
        json!({"inputs": {"source_sentence": "x y", "sentences": ["x y", "z"]}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!((sims[0].as_f64().expect("f") - 1.0).abs() < 1e-5);

    let (status, tokens) = post(&client, url("/tokenize"), json!({"inputs": "hello world"})).await;
    assert_eq!(status, 200);
    let tokens = tokens[0].as_array().expect("tokens").clone();
    assert_eq!(tokens.len(), 4);
    assert_eq!(tokens[1]["text"], "hello");
    assert_eq!(
        (tokens[1]["start"].clone(), tokens[1]["stop"].clone()),
        (json!(0), json!(5))
    );
    let ids: Vec<Value> = tokens.iter().map(|t| t["id"].clone()).collect();
    let (status, text) = post(&client, url("/decode"), json!({"ids": ids})).await;
    assert_eq!(status, 200);
    assert_eq!(text, json!(["hello world"]));

    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("te_request_count 8"), "{metrics}");
    assert!(metrics.contains("te_request_success 8"), "{metrics}");
    assert!(metrics.contains("te_request_failure 0"), "{metrics}");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn tei_errors() {
    let server = start(&["--max-client-batch-size", "2", "--payload-limit", "5000"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/embed", server.url());
    for (body, status, kind) in [
        (json!({"inputs": []}), 400, "empty"),
        (json!({"inputs": ""}), 400, "empty"),
        (json!({"inputs": ["a", "b", "c"]}), 413, "validation"),
        (json!({"inputs": "x".repeat(6000)}), 413, "validation"),
        (json!({"nope": 1}), 422, "validation"),
        (
            json!({"inputs": vec!["w"; 600].join(" ")}),
            413,
            "validation",
        ),
    ] {
        let (got, json) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(json["error_type"], kind, "{body}");
        assert!(json["error"].is_string());
    }
    let malformed = client.post(&url).body("{oops").send().await.expect("send");
    assert_eq!(malformed.status(), 422);
    // Truncation makes the long input acceptable.
    let (status, _) = post(
        &client,
        url.clone(),
        json!({"inputs": vec!["w"; 600].join(" "), "truncate": true}),
    )
    .await;
    assert_eq!(status, 200);
    // The OpenAI route reports errors in its own shape.
    let (status, json) = post(
        &client,
        format!("{}/v1/embeddings", server.url()),
        json!({"input": []}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json["code"], 400);
    assert!(json["message"].is_string() && json["type"].is_string());
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn api_key_is_enforced() {
    let server = start(&["--api-key", "k1"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/embed", server.url());
    let denied = client
        .post(&url)
        .json(&json!({"inputs": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().get("x-mock-instance").is_some());
    let wrong = client
        .post(&url)
        .bearer_auth("k2")
        .json(&json!({"inputs": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 401);
    let ok = client
        .post(&url)
        .bearer_auth("k1")
        .json(&json!({"inputs": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn fail_after_turns_unhealthy() {
    let server = start(&["--fail-after", "2"]).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/embed", server.url());
    for _ in 0..2 {
        let (status, _) = post(&client, url.clone(), json!({"inputs": "x"})).await;
        assert_eq!(status, 200);
    }
    let (status, json) = post(&client, url.clone(), json!({"inputs": "x"})).await;
    assert_eq!(status, 500);
    assert!(json["error"].is_string() && json["error_type"].is_string());
    let health = client
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 503);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn hang_after_stops_answering_but_shuts_down_promptly() {
    let server = start(&["--hang-after", "1"]).await;
    let client = support::client(Duration::from_millis(400));
    let url = format!("{}/embed", server.url());
    let (status, _) = post(&client, url.clone(), json!({"inputs": "x"})).await;
    assert_eq!(status, 200);
    let hung = client.post(&url).json(&json!({"inputs": "x"})).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    let health = client.get(format!("{}/health", server.url())).send().await;
    assert!(health.is_err_and(|e| e.is_timeout()));
    // Stats still answer, so tests can see what happened.
    let stats: Value = client
        .get(format!("{}/mock/stats", server.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["requests"], 2);
    let started = Instant::now();
    server.stop().await.expect("stop");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn process_accepts_tei_flags_and_exits_cleanly_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_mock-tei");
    let mut process = support::MockProcess::start(
        bin,
        &[
            "--model-id",
            "BAAI/bge-small-en-v1.5",
            "--revision",
            "main",
            "--hostname",
            "127.0.0.1",
            "-p",
            "0",
            "--uds-path",
            "/tmp/mock-tei-test-uds",
            "--prometheus-port",
            "0",
            "--max-concurrent-requests",
            "64",
            "--max-batch-tokens",
            "1024",
            "--max-client-batch-size",
            "8",
            "--max-batch-requests",
            "4",
            "--pooling",
            "cls",
            "--dtype",
            "float16",
            "--auto-truncate",
            "--payload-limit",
            "100000",
            "--json-output",
            "--disable-spans",
            "--otlp-service-name",
            "x",
            "--tokenization-workers",
            "2",
            "--served-model-name",
            "m",
            "--hf-token",
            "t",
            "--huggingface-hub-cache",
            "/tmp",
            "--cors-allow-origin",
            "*",
            "--startup-delay-ms",
            "50",
        ],
    );
    assert_ne!(process.addr.port(), 0);
    let status = process.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn stall_every_holds_every_nth_request_and_counts_an_abandoned_one_cancelled() {
    let server = start(&["--stall-every", "2", "--stall-ms", "60000"]).await;
    let client = support::client(Duration::from_millis(300));
    let url = format!("{}/embed", server.url());
    let stats = || async {
        let stats: Value = reqwest::get(format!("{}/mock/stats", server.url()))
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats
    };
    let (status, _) = post(&client, url.clone(), json!({"inputs": "one"})).await;
    assert_eq!(status, 200, "the first request is not a 2nd");
    assert_eq!(stats().await["cancelled"], 0);
    // The second is held; the client times out and closes its connection.
    let held = client
        .post(&url)
        .json(&json!({"inputs": "two"}))
        .send()
        .await;
    assert!(held.is_err_and(|e| e.is_timeout()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = stats().await;
        assert_eq!(now["stalled"], 1, "{now}");
        if now["cancelled"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never cancelled: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.expect("stop");
}
