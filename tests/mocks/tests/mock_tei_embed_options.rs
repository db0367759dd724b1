//! `mock-tei` honours TEI's `normalize` and `dimensions` embedding options over HTTP (`/embed`,
//! `/v1/embeddings`) and gRPC (`Embed`, `EmbedStream`) as TEI does: `normalize` absent means
//! normalised; `dimensions` keeps the first N components and normalises *after* truncating
//! (Matryoshka); 0 or more than the model's size is TEI's validation error (HTTP 422
//! `validation`, gRPC INVALID_ARGUMENT). Servers run in-process on 127.0.0.1:0.

mod support;

use std::time::Duration;

use clap::Parser;
use multiverse_mocks::common::Running;
use multiverse_mocks::embedding;
use multiverse_mocks::tei::{self, TeiArgs};
use multiverse_proto::tei::v1 as pb;
use pb::embed_client::EmbedClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

const DIMS: usize = 16;
const TEXT: &str = "hello world";

async fn start(grpc: bool) -> Running {
    let dims = DIMS.to_string();
    let mut argv = vec![
        "mock-tei",
        "--hostname",
        "127.0.0.1",
        "--port",
        "0",
        "--dims",
        &dims,
    ];
    if grpc {
        argv.push("--grpc");
    }
    tei::spawn(TeiArgs::parse_from(argv))
        .await
        .expect("start mock-tei")
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// The first `n` raw components scaled to unit length: TEI's truncate-then-normalise.
fn truncated_then_normalised(text: &str, n: usize) -> Vec<f32> {
    let raw = embedding(text, DIMS, false);
    let norm = norm(&raw[..n]);
    raw[..n]
        .iter()
        .map(|x| (f64::from(*x) / norm) as f32)
        .collect()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn http_embed_honours_normalize_and_dimensions() {
    let server = start(false).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/embed", server.url());

    // `normalize` absent → normalised, full size.
    let (status, body) = post(&client, url.clone(), json!({"inputs": TEXT})).await;
    assert_eq!(status, 200, "{body}");
    let full: Vec<Vec<f32>> = serde_json::from_value(body).expect("floats");
    assert_eq!(full, vec![embedding(TEXT, DIMS, true)]);

    // `dimensions` cuts first, then normalises: unit length again, not the full vector's head.
    let (status, body) = post(
        &client,
        url.clone(),
        json!({"inputs": [TEXT, "second"], "dimensions": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cut: Vec<Vec<f32>> = serde_json::from_value(body).expect("floats");
    assert_eq!(cut[0], truncated_then_normalised(TEXT, 4));
    assert_eq!(cut[1], truncated_then_normalised("second", 4));
    assert!((norm(&cut[0]) - 1.0).abs() < 1e-6, "{}", norm(&cut[0]));
    assert_ne!(cut[0][..], full[0][..4]);

    // Without normalising, the head of the raw vector as it is.
    let (status, body) = post(
        &client,
        url.clone(),
        json!({"inputs": TEXT, "dimensions": 4, "normalize": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let raw: Vec<Vec<f32>> = serde_json::from_value(body).expect("floats");
    assert_eq!(raw[0][..], embedding(TEXT, DIMS, false)[..4]);

    // The model's own size is allowed.
    let (status, body) = post(
        &client,
        url.clone(),
        json!({"inputs": TEXT, "dimensions": DIMS}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let all: Vec<Vec<f32>> = serde_json::from_value(body).expect("floats");
    assert_eq!(all, vec![embedding(TEXT, DIMS, true)]);

    for (dimensions, message) in [
        (0, "Input validation error: `dimensions` should be positive"),
        (
            DIMS + 1,
            "Input validation error: `dimensions` should be smaller than the maximum embedding \
             dimension.",
        ),
    ] {
        let (status, body) = post(
            &client,
            url.clone(),
            json!({"inputs": TEXT, "dimensions": dimensions}),
        )
        .await;
        assert_eq!(status, 422, "{dimensions}: {body}");
        assert_eq!(
            body,
            json!({"error": message, "error_type": "validation"}),
            "{dimensions}"
        );
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn http_openai_embeddings_honour_dimensions() {
    let server = start(false).await;
    let client = support::client(Duration::from_secs(5));
    let url = format!("{}/v1/embeddings", server.url());
    let (status, body) = post(
        &client,
        url.clone(),
        json!({"input": [TEXT], "model": "m", "dimensions": 6}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).expect("v");
    assert_eq!(v, truncated_then_normalised(TEXT, 6));

    let (status, body) = post(&client, url, json!({"input": TEXT, "dimensions": DIMS + 1})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], 422);
    assert_eq!(body["type"], "validation");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("`dimensions`")),
        "{body}"
    );
    server.stop().await.expect("stop");
}

async fn channel(server: &Running) -> Channel {
    Channel::from_shared(server.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn request(normalize: Option<bool>, dimensions: Option<u32>) -> pb::EmbedRequest {
    pb::EmbedRequest {
        inputs: TEXT.into(),
        normalize,
        dimensions,
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_embed_honours_optional_normalize_and_dimensions() {
    let server = start(true).await;
    let mut client = EmbedClient::new(channel(&server).await);
    let embed = |req: pb::EmbedRequest| {
        let mut client = client.clone();
        async move { client.embed(req).await.map(|r| r.into_inner()) }
    };

    // Absent → TEI's default, normalised; explicit values are honoured.
    for (normalize, expected) in [
        (None, embedding(TEXT, DIMS, true)),
        (Some(true), embedding(TEXT, DIMS, true)),
        (Some(false), embedding(TEXT, DIMS, false)),
    ] {
        let reply = embed(request(normalize, None)).await.expect("embed");
        assert_eq!(reply.embeddings, expected, "normalize {normalize:?}");
        let metadata = reply.metadata.expect("metadata");
        assert_eq!(metadata.compute_tokens, 4);
    }

    let cut = embed(request(None, Some(4))).await.expect("embed");
    assert_eq!(cut.embeddings, truncated_then_normalised(TEXT, 4));
    assert!((norm(&cut.embeddings) - 1.0).abs() < 1e-6);
    let raw = embed(request(Some(false), Some(4))).await.expect("embed");
    assert_eq!(raw.embeddings[..], embedding(TEXT, DIMS, false)[..4]);
    let all = embed(request(None, Some(DIMS as u32)))
        .await
        .expect("embed");
    assert_eq!(all.embeddings, embedding(TEXT, DIMS, true));

    for (dimensions, message) in [
        (0, "Input validation error: `dimensions` should be positive"),
        (
            DIMS as u32 + 1,
            "Input validation error: `dimensions` should be smaller than the maximum embedding \
             dimension.",
        ),
    ] {
        let status = embed(request(None, Some(dimensions)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{dimensions}");
        assert_eq!(status.message(), message);
    }

    // Each message of a stream carries its own options.
    let messages = [request(None, Some(2)), request(Some(false), None)];
    let mut replies = client
        .embed_stream(tokio_stream::iter(messages))
        .await
        .expect("embed_stream")
        .into_inner();
    let first = replies.message().await.expect("ok").expect("first");
    assert_eq!(first.embeddings, truncated_then_normalised(TEXT, 2));
    let second = replies.message().await.expect("ok").expect("second");
    assert_eq!(second.embeddings, embedding(TEXT, DIMS, false));
    assert!(replies.message().await.expect("ok").is_none());
    server.stop().await.expect("stop");
}
