//! What `mock-tei` tells a supervisor about its load and limits, as TEI does: `/info` and gRPC
//! `Info` with the configured limits, TEI's Prometheus metrics on `--prometheus-port`
//! (`--serve-prometheus`) and `/metrics`, and a simulated batching queue
//! (`--simulate-batching`: `te_queue_size`, TEI's 429 `overloaded`). Servers run in-process on
//! 127.0.0.1:0, or as real processes where the process's own ports are the point.

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use multiverse_mocks::common::{Running, Shutdown};
use multiverse_mocks::tei::{self, TeiArgs};
use multiverse_proto::tei::v1 as pb;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_mock-tei");

fn argv<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["mock-tei", "--hostname", "127.0.0.1", "--port", "0"];
    argv.extend_from_slice(extra);
    argv
}

/// An in-process server whose metrics are also served on a port of its own.
async fn start_with_prometheus(extra: &[&str]) -> (Running, String) {
    let args = TeiArgs::parse_from(argv(extra));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let prometheus = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics_url = format!("http://{}/metrics", prometheus.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(tei::serve(
        args,
        listener,
        Some(prometheus),
        shutdown.clone(),
    ));
    (Running::new(addr, shutdown, handle), metrics_url)
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text")
}

/// The value of an unlabelled sample (`name value`) in a Prometheus exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `url` until `name` has `value`, or panics after 10 s.
async fn wait_for_sample(client: &reqwest::Client, url: &str, name: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = text(client, url).await;
        if sample(&exposition, name) == Some(value) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {value}:\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn grpc_channel(server: &Running) -> Channel {
    Channel::from_shared(server.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

const LIMITS: [&str; 12] = [
    "--max-client-batch-size",
    "7",
    "--max-batch-tokens",
    "2048",
    "--max-concurrent-requests",
    "64",
    "--max-batch-requests",
    "5",
    "--served-model-name",
    "served",
    "--tokenization-workers",
    "3",
];

#[tokio::test]
async fn info_reports_the_configured_limits_over_http_and_grpc() {
    let server = tei::spawn(TeiArgs::parse_from(argv(&LIMITS)))
        .await
        .expect("start");
    let client = support::client(Duration::from_secs(5));
    let info: Value = client
        .get(format!("{}/info", server.url()))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    for (field, value) in [
        ("max_client_batch_size", json!(7)),
        ("max_batch_tokens", json!(2048)),
        ("max_concurrent_requests", json!(64)),
        ("max_batch_requests", json!(5)),
        ("max_input_length", json!(512)),
        ("served_model_name", json!("served")),
        ("tokenization_workers", json!(3)),
        ("model_id", json!("BAAI/bge-small-en-v1.5")),
    ] {
        assert_eq!(info[field], value, "{field}: {info}");
    }
    server.stop().await.expect("stop");

    let mut grpc_args = LIMITS.to_vec();
    grpc_args.push("--grpc");
    let server = tei::spawn(TeiArgs::parse_from(argv(&grpc_args)))
        .await
        .expect("start");
    let info = pb::info_client::InfoClient::new(grpc_channel(&server).await)
        .info(pb::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        (
            info.max_client_batch_size,
            info.max_batch_tokens,
            info.max_concurrent_requests,
            info.max_batch_requests,
            info.tokenization_workers,
        ),
        (7, 2048, 64, Some(5), 3)
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn the_prometheus_port_serves_teis_metrics_in_grpc_mode() {
    let mut process = support::MockProcess::start(
        BIN,
        &[
            "--grpc",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--serve-prometheus",
            "--prometheus-port",
            "0",
        ],
    );
    let line = process.next_line();
    let prometheus = line
        .strip_prefix("PROMETHEUS ")
        .unwrap_or_else(|| panic!("second line {line:?}"))
        .to_string();
    assert_ne!(prometheus, process.addr.to_string());
    let channel = Channel::from_shared(format!("http://{}", process.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut embed = pb::embed_client::EmbedClient::new(channel);
    for text in ["one two three", "four"] {
        embed
            .embed(pb::EmbedRequest {
                inputs: text.into(),
                ..Default::default()
            })
            .await
            .expect("embed");
    }
    let client = support::client(Duration::from_secs(5));
    // Any path, as TEI's exporter answers.
    for path in ["/metrics", "/"] {
        let exposition = text(&client, &format!("http://{prometheus}{path}")).await;
        for (name, value) in [
            ("te_request_count", 2.0),
            ("te_request_success", 2.0),
            ("te_request_failure", 0.0),
            ("te_queue_size", 0.0),
            ("te_batch_next_size_count", 2.0),
            ("te_batch_next_size_sum", 2.0),
            // "one two three" is 5 tokens with [CLS] and [SEP], "four" 3.
            ("te_batch_next_tokens_sum", 8.0),
            ("te_request_duration_count", 2.0),
            ("te_request_queue_duration_count", 2.0),
            ("te_request_inference_duration_count", 2.0),
            ("te_request_tokenization_duration_count", 2.0),
        ] {
            assert_eq!(
                sample(&exposition, name),
                Some(value),
                "{name}:\n{exposition}"
            );
        }
        assert!(exposition.contains("# TYPE te_batch_next_size histogram"));
        assert!(exposition.contains("te_batch_next_size_bucket{le=\"4096\"} 2"));
    }
}

#[tokio::test]
async fn without_the_flag_the_prometheus_port_stays_free() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let process = support::MockProcess::start(
        BIN,
        &[
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--prometheus-port",
            &port,
        ],
    );
    std::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .expect("mock-tei did not bind --prometheus-port");
    // The HTTP build's metrics stay on the main port.
    let client = support::client(Duration::from_secs(5));
    let exposition = text(&client, &format!("http://{}/metrics", process.addr)).await;
    assert_eq!(
        sample(&exposition, "te_queue_size"),
        Some(0.0),
        "{exposition}"
    );
}

#[tokio::test]
async fn simulated_batching_queues_beyond_capacity_and_refuses_beyond_max_concurrent() {
    let (server, metrics) = start_with_prometheus(&[
        "--simulate-batching",
        "--max-batch-requests",
        "1",
        "--max-concurrent-requests",
        "3",
        "--latency-ms",
        "30000",
    ])
    .await;
    let client = support::client(Duration::from_secs(60));
    let url = format!("{}/embed", server.url());
    // One is inferred (for 30 s), two wait behind it.
    let pending: Vec<_> = (0..3)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"inputs": format!("text {i}")}))
                    .send()
                    .await
            })
        })
        .collect();
    let exposition = wait_for_sample(&client, &metrics, "te_queue_size", 2.0).await;
    assert_eq!(
        sample(&exposition, "te_batch_next_size_count"),
        Some(1.0),
        "{exposition}"
    );
    // The main port's /metrics is the same registry.
    let main = text(&client, &format!("{}/metrics", server.url())).await;
    assert_eq!(sample(&main, "te_queue_size"), Some(2.0));

    // A fourth input is over --max-concurrent-requests: TEI's 429 at once.
    let refused = client
        .post(&url)
        .json(&json!({"inputs": "one too many"}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": "Model is overloaded", "error_type": "overloaded"})
    );
    let exposition = text(&client, &metrics).await;
    assert_eq!(sample(&exposition, "te_request_failure"), Some(1.0));
    assert_eq!(sample(&exposition, "te_queue_size"), Some(2.0));

    // Stopping drops the waiting requests (after the 2 s grace) without hanging.
    server.stop().await.expect("stop");
    for request in pending {
        request.abort();
    }
}

#[tokio::test]
async fn simulated_batching_over_grpc_is_resource_exhausted_beyond_max_concurrent() {
    let (server, metrics) = start_with_prometheus(&[
        "--grpc",
        "--simulate-batching",
        "--max-concurrent-requests",
        "1",
        "--latency-ms",
        "30000",
    ])
    .await;
    let mut embed = pb::embed_client::EmbedClient::new(grpc_channel(&server).await);
    let mut first = embed.clone();
    let running = tokio::spawn(async move {
        first
            .embed(pb::EmbedRequest {
                inputs: "running".into(),
                ..Default::default()
            })
            .await
    });
    let client = support::client(Duration::from_secs(5));
    wait_for_sample(&client, &metrics, "te_batch_next_size_count", 1.0).await;
    let refused = embed
        .embed(pb::EmbedRequest {
            inputs: "refused".into(),
            ..Default::default()
        })
        .await
        .expect_err("overloaded");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(refused.message(), "Model is overloaded");
    server.stop().await.expect("stop");
    running.abort();
}
