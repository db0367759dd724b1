//! The data plane over HTTP, with real processes: TEI HTTP routes, h2c on the client port,
//! failover, outlier ejection and return, DRAINING, every proxy error with its status and
//! format, table swaps under load, SIGHUP reloads and SIGTERM draining. Routes come from
//! standalone routes files so each test controls its table exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use multiverse_mocks::embedding;
use multiverse_tests::*;
use serde_json::{json, Value};

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "model": "demo"})
}

async fn post_chat(client: &reqwest::Client, proxy: &Proxy) -> reqwest::Response {
    client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&chat())
        .send()
        .await
        .expect("request")
}

fn served_by(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn tei_http_routes_by_header_instance_and_sole_model() {
    let dir = temp_dir("tei-http");
    let e1 = MockTei::start(&dir, "tei-embed-1", &["--dims", "32"]);
    let e2 = MockTei::start(&dir, "tei-embed-2", &["--dims", "32"]);
    let rr = MockTei::start(&dir, "tei-rerank", &[]);
    let routes = model_toml(
        "bge",
        "embedding",
        "",
        &[
            Ep::http("tei-embed-1", e1.addr, "healthy"),
            Ep::http("tei-embed-2", e2.addr, "healthy"),
        ],
    ) + &model_toml(
        "reranker",
        "rerank",
        "",
        &[Ep::http("tei-rerank", rr.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-tei", &routes, "").await;
    let client = reqwest::Client::new();

    // x-model routes /embed; the vector is the mock's deterministic embedding.
    let resp = client
        .post(format!("{}/embed", proxy.url()))
        .header("x-model", "bge")
        .json(&json!({"inputs": ["hello world"], "normalize": true}))
        .send()
        .await
        .expect("embed");
    assert_eq!(resp.status(), 200);
    assert!(served_by(&resp).starts_with("tei-embed-"));
    let v: Vec<Vec<f32>> = resp.json().await.expect("json");
    assert_eq!(v[0], embedding("hello world", 32, true));

    // The only embedding model needs no header; the only reranker neither.
    let resp = client
        .post(format!("{}/embed", proxy.url()))
        .json(&json!({"inputs": "no header"}))
        .send()
        .await
        .expect("embed");
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(format!("{}/rerank", proxy.url()))
        .json(&json!({"query": "q", "texts": ["a", "b", "c"]}))
        .send()
        .await
        .expect("rerank");
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), "tei-rerank");
    let ranks: Vec<Value> = resp.json().await.expect("json");
    assert_eq!(ranks.len(), 3);

    // x-instance pins one endpoint.
    for _ in 0..5 {
        let resp = client
            .post(format!("{}/tokenize", proxy.url()))
            .header("x-instance", "tei-embed-2")
            .json(&json!({"inputs": "a b c"}))
            .send()
            .await
            .expect("tokenize");
        assert_eq!(resp.status(), 200);
        assert_eq!(served_by(&resp), "tei-embed-2");
    }
    let info: Value = client
        .get(format!("{}/info", proxy.url()))
        .header("x-model", "reranker")
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert!(info["model_id"].is_string());

    // TEI-format errors: unknown model, unknown instance, ambiguous kind.
    for (headers, path, status, code) in [
        (vec![("x-model", "nope")], "/embed", 404, "model_not_found"),
        (
            vec![("x-instance", "nope")],
            "/embed",
            404,
            "instance_not_found",
        ),
        (vec![], "/tokenize", 400, "model_required"),
    ] {
        let mut req = client
            .post(format!("{}{path}", proxy.url()))
            .json(&json!({"inputs": "x"}));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), status, "{path}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error_type"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn h2c_and_http1_share_the_client_port() {
    let dir = temp_dir("h2c");
    let mock = MockOpenAi::start(&dir, "mock-h2c", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-h2c", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-h2c", &routes, "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = post_chat(&h2, &proxy).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), "mock-h2c");
    let h1 = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let resp = post_chat(&h1, &proxy).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn upstream_http1_connections_are_kept_alive_and_reused() {
    let dir = temp_dir("keepalive");
    let mock = MockOpenAi::start(&dir, "mock-ka", &["--tokens", "2"]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-ka", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-ka", &routes, "").await;
    // A fresh client connection per request: reuse can only come from the proxy's pool.
    for _ in 0..30 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        assert_eq!(post_chat(&client, &proxy).await.status(), 200);
    }
    let stats = mock.stats(&reqwest::Client::new()).await;
    assert_eq!(stats["requests"], 30);
    let connections = stats["connections"].as_u64().expect("connections");
    // One for /mock/stats itself, a few for the proxy's pool at most.
    assert!(
        connections <= 4,
        "30 requests used {connections} upstream connections"
    );
}

#[tokio::test]
async fn failover_when_a_backend_dies_mid_run() {
    let dir = temp_dir("failover");
    let a = MockOpenAi::start(&dir, "mock-a", &[]);
    let mut b = MockOpenAi::start(&dir, "mock-b", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "lb = \"round_robin\"",
        &[
            Ep::http("mock-a", a.addr, "healthy"),
            Ep::http("mock-b", b.addr, "healthy"),
        ],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-failover", &routes, "").await;
    let client = reqwest::Client::new();
    let mut served = HashMap::<String, usize>::new();
    for i in 0..60 {
        if i == 20 {
            b.proc.kill();
        }
        let resp = post_chat(&client, &proxy).await;
        assert_eq!(resp.status(), 200, "request {i} failed after mock-b died");
        *served.entry(served_by(&resp)).or_default() += 1;
    }
    assert!(
        served.get("mock-b").copied().unwrap_or(0) >= 5,
        "{served:?}"
    );
    assert!(served["mock-a"] >= 40, "{served:?}");
}

#[tokio::test]
async fn reset_before_the_first_response_byte_is_retried_elsewhere() {
    let dir = temp_dir("reset");
    // An "upstream" that reads the request, then closes without answering.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rude_addr = rude.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let rude_task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = rude.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            drop(sock);
        }
    });
    let good = MockOpenAi::start(&dir, "mock-good", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "lb = \"round_robin\"",
        &[
            Ep::http("rude", rude_addr, "healthy"),
            Ep::http("mock-good", good.addr, "healthy"),
        ],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-reset", &routes, "").await;
    let client = reqwest::Client::new();
    for i in 0..6 {
        let resp = post_chat(&client, &proxy).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(served_by(&resp), "mock-good");
    }
    assert!(
        accepted.load(Ordering::Relaxed) >= 3,
        "the rude upstream was tried"
    );
    rude_task.abort();
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_returns() {
    let dir = temp_dir("outlier");
    let bad = MockOpenAi::start(
        &dir,
        "mock-bad",
        &["--fail-rate", "1.0", "--fail-status", "503"],
    );
    let good = MockOpenAi::start(&dir, "mock-good", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "lb = \"round_robin\"",
        &[
            Ep::http("mock-bad", bad.addr, "healthy"),
            Ep::http("mock-good", good.addr, "healthy"),
        ],
    );
    let outlier = "[outlier]\nconsecutive_gateway_failures = 2\nbase_ejection_ms = 4000\n\
                   max_ejection_ms = 8000\nmax_ejection_percent = 50\n";
    let proxy = Proxy::start_standalone(&dir, "proxy-outlier", &routes, outlier).await;
    let client = reqwest::Client::new();

    // 503s from mock-bad are retried on mock-good: the client never sees them.
    for i in 0..10 {
        let resp = post_chat(&client, &proxy).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(served_by(&resp), "mock-good");
    }
    let metrics = client
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("multiverse_proxy_outlier_ejections_total{endpoint=\"mock-bad\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("multiverse_proxy_retries_total{model=\"demo\"}"));
    // Ejected: mock-bad gets nothing while the ejection lasts.
    let before = bad.stats(&client).await["requests"].as_u64().unwrap_or(0);
    assert_eq!(before, 2, "exactly the two failures that ejected it");
    for _ in 0..10 {
        assert_eq!(post_chat(&client, &proxy).await.status(), 200);
    }
    assert_eq!(bad.stats(&client).await["requests"].as_u64(), Some(before));
    // After the ejection time it takes requests again.
    let returned = eventually(Duration::from_secs(20), "mock-bad to return", || async {
        assert_eq!(post_chat(&client, &proxy).await.status(), 200);
        let n = bad.stats(&client).await["requests"].as_u64().unwrap_or(0);
        (n > before).then_some(n)
    })
    .await;
    assert!(returned > before);
}

#[tokio::test]
async fn draining_endpoints_get_no_new_requests_but_finish_open_ones() {
    let dir = temp_dir("draining");
    let a = MockOpenAi::start(
        &dir,
        "mock-a",
        &["--tokens", "15", "--chunk-interval-ms", "60"],
    );
    let b = MockOpenAi::start(&dir, "mock-b", &[]);
    let both_healthy = model_toml(
        "demo",
        "chat",
        "",
        &[
            Ep::http("mock-a", a.addr, "healthy"),
            Ep::http("mock-b", b.addr, "healthy"),
        ],
    );
    let a_draining = model_toml(
        "demo",
        "chat",
        "",
        &[
            Ep::http("mock-a", a.addr, "draining"),
            Ep::http("mock-b", b.addr, "healthy"),
        ],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-drain", &both_healthy, "").await;
    let client = reqwest::Client::new();

    // Open a stream on mock-a (pinned by asking until it lands there).
    let mut stream = loop {
        let resp = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request");
        if served_by(&resp) == "mock-a" {
            break resp;
        }
        resp.bytes().await.expect("drain other stream");
    };
    let v1 = proxy.version(&client).await;
    std::fs::write(Proxy::routes_file(&dir, "proxy-drain"), a_draining).expect("write");
    proxy.reload();
    eventually(Duration::from_secs(10), "the reload", || async {
        (proxy.version(&client).await != v1).then_some(())
    })
    .await;
    for _ in 0..20 {
        let resp = post_chat(&client, &proxy).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            served_by(&resp),
            "mock-b",
            "a DRAINING endpoint got a new request"
        );
    }
    let mut text = String::new();
    while let Some(chunk) = stream.chunk().await.expect("stream continues") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the open stream finished: {text}"
    );
}

#[tokio::test]
async fn proxy_errors_have_their_status_and_format() {
    let dir = temp_dir("errors");
    let slow = MockOpenAi::start(&dir, "mock-slow", &["--latency-ms", "3000"]);
    let dead = free_port();
    let routes = model_toml(
        "timeout",
        "chat",
        "first_byte_timeout_ms = 300\nidle_timeout_ms = 300",
        &[Ep::http("mock-slow", slow.addr, "healthy")],
    ) + &model_toml(
        "broken",
        "chat",
        "",
        &[Ep::http(
            "dead-1",
            format!("127.0.0.1:{dead}").parse().expect("addr"),
            "healthy",
        )],
    ) + &model_toml(
        "down",
        "chat",
        "",
        &[Ep::http("mock-slow", slow.addr, "unhealthy")],
    );
    let proxy = Proxy::start_standalone(
        &dir,
        "proxy-errors",
        &routes,
        "[limits]\nmax_body_bytes = 4096\n",
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", proxy.url());
    let big = format!(r#"{{"model":"broken","x":"{}"}}"#, "y".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "timeout → 504",
            r#"{"model":"timeout"}"#.into(),
            504,
            "upstream_timeout",
        ),
        (
            "connection refused → 502",
            r#"{"model":"broken"}"#.into(),
            502,
            "upstream_error",
        ),
        (
            "no healthy endpoint → 503",
            r#"{"model":"down"}"#.into(),
            503,
            "no_healthy_endpoint",
        ),
        (
            "unknown model → 404",
            r#"{"model":"nope"}"#.into(),
            404,
            "model_not_found",
        ),
        ("oversize → 413", big, 413, "request_too_large"),
    ];
    for (what, body, status, code) in cases {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect(what);
        assert_eq!(resp.status(), status, "{what}");
        let v: Value = resp.json().await.expect(what);
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(v["error"]["type"].is_string(), "{what}");
    }
    // A streamed (chunked) body routed by header is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let resp = client
        .post(&url)
        .header("x-model", "timeout")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
}

#[tokio::test]
async fn first_byte_and_idle_timeouts_are_separate() {
    let dir = temp_dir("timeouts");
    // Answers after 700 ms, then at once: within the first-byte bound, over the idle one.
    let slow_start = MockOpenAi::start(
        &dir,
        "mock-slow-start",
        &["--latency-ms", "700", "--model", "slow-start"],
    );
    // Starts at once, then 1.5 s between SSE chunks: over the idle bound.
    let stalling = MockOpenAi::start(
        &dir,
        "mock-stalling",
        &[
            "--tokens",
            "5",
            "--chunk-interval-ms",
            "1500",
            "--model",
            "stalling",
        ],
    );
    let policy = "first_byte_timeout_ms = 3000\nidle_timeout_ms = 400";
    let routes = model_toml(
        "slow-start",
        "chat",
        policy,
        &[Ep::http("mock-slow-start", slow_start.addr, "healthy")],
    ) + &model_toml(
        "stalling",
        "chat",
        policy,
        &[Ep::http("mock-stalling", stalling.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-timeouts", &routes, "").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", proxy.url());

    let resp = client
        .post(&url)
        .json(&json!({"model": "slow-start", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "700 ms to the first byte is within 3 s");

    let started = std::time::Instant::now();
    let mut stream = client
        .post(&url)
        .json(&json!({"model": "stalling", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    let cut = loop {
        match stream.chunk().await {
            Ok(Some(c)) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        cut || !text.contains("[DONE]"),
        "the stalled stream was cut, not completed: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "cut by the 400 ms idle bound, not after the 1.5 s gap ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn table_swaps_under_load_fail_no_request() {
    let dir = temp_dir("swap");
    let a = MockOpenAi::start(&dir, "mock-a", &["--tokens", "2"]);
    let b = MockOpenAi::start(&dir, "mock-b", &["--tokens", "2"]);
    let tables = [
        model_toml("demo", "chat", "", &[Ep::http("mock-a", a.addr, "healthy")]),
        model_toml("demo", "chat", "", &[Ep::http("mock-b", b.addr, "healthy")]),
        model_toml(
            "demo",
            "chat",
            "lb = \"round_robin\"",
            &[
                Ep::http("mock-a", a.addr, "healthy"),
                Ep::http("mock-b", b.addr, "healthy"),
            ],
        ),
    ];
    let proxy = Proxy::start_standalone(&dir, "proxy-swap", &tables[2], "").await;
    let client = reqwest::Client::new();
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, ok, stop) = (client.clone(), proxy.url(), ok.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&chat())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    let file = Proxy::routes_file(&dir, "proxy-swap");
    let mut versions = std::collections::HashSet::new();
    let mut applied: Vec<String> = Vec::new();
    let mut current = proxy.version(&client).await;
    for i in 0..30 {
        std::fs::write(&file, &tables[i % 3]).expect("write");
        proxy.reload();
        // Consecutive files differ, so every reload shows as a new version (waiting for one
        // not seen yet raced with a slow first reload).
        let before = current.clone();
        current = eventually(Duration::from_secs(10), "reload", || async {
            let v = proxy.version(&client).await;
            (!v.is_empty() && v != before).then_some(v)
        })
        .await;
        if i >= 3 {
            assert_eq!(
                current,
                applied[i - 3],
                "the same file gives the same version"
            );
        }
        applied.push(current.clone());
        versions.insert(current.clone());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    assert!(
        failures.is_empty(),
        "failed requests during swaps: {failures:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(versions.len(), 3, "all three tables were applied");
}

#[tokio::test]
async fn bad_routes_file_is_rejected_and_the_table_keeps_serving() {
    let dir = temp_dir("bad-reload");
    let mock = MockOpenAi::start(&dir, "mock-a", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-a", mock.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-badfile", &routes, "").await;
    let client = reqwest::Client::new();
    let v1 = proxy.version(&client).await;
    let file = Proxy::routes_file(&dir, "proxy-badfile");
    for bad in [
        "[[models]\nname = ",
        "[[models]]\nname = \"demo\"\n[[models.endpoints]]\nid = \"x\"\naddress = \"nowhere\"\n",
    ] {
        std::fs::write(&file, bad).expect("write");
        proxy.reload();
        // The rejection is logged; the old table still answers.
        eventually(
            Duration::from_secs(10),
            "the rejection in the log",
            || async {
                proxy
                    .proc
                    .tail_log()
                    .contains("reload rejected")
                    .then_some(())
            },
        )
        .await;
        assert_eq!(proxy.version(&client).await, v1);
        let resp = post_chat(&client, &proxy).await;
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn sigterm_drains_open_streams_then_exits() {
    let dir = temp_dir("sigterm");
    let mock = MockOpenAi::start(
        &dir,
        "mock-a",
        &["--tokens", "12", "--chunk-interval-ms", "80"],
    );
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-a", mock.addr, "healthy")],
    );
    let mut proxy = Proxy::start_standalone(&dir, "proxy-term", &routes, "").await;
    let client = reqwest::Client::new();
    let mut stream = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    let first = stream.chunk().await.expect("read").expect("first chunk");
    proxy.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.chunk().await.expect("stream survives SIGTERM") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // With nothing left in flight it exits well before the grace period's end.
    let code = proxy.proc.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "log: {}", proxy.proc.tail_log());
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&chat())
        .send()
        .await;
    assert!(refused.is_err(), "no new connections after exit");
}
