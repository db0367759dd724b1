//! Integration tests of `mock-tei --grpc` with tonic clients: servers started in-process on
//! 127.0.0.1:0 (and one real process for the readiness line and SIGTERM handling).

mod support;

use std::time::Duration;

use clap::Parser;
use multiverse_mocks::common::Running;
use multiverse_mocks::embedding;
use multiverse_mocks::tei::{self, TeiArgs};
use multiverse_proto::tei::v1 as pb;
use pb::embed_client::EmbedClient;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const STEP: Duration = Duration::from_secs(5);

async fn start(extra: &[&str]) -> (Running, Channel) {
    let mut argv = vec![
        "mock-tei",
        "--grpc",
        "--hostname",
        "127.0.0.1",
        "--port",
        "0",
    ];
    argv.extend_from_slice(extra);
    let server = tei::spawn(TeiArgs::parse_from(argv))
        .await
        .expect("start mock-tei");
    let channel = Channel::from_shared(server.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (server, channel)
}

fn embed_request(text: &str, normalize: bool) -> pb::EmbedRequest {
    pb::EmbedRequest {
        inputs: text.to_string(),
        normalize: Some(normalize),
        ..Default::default()
    }
}

async fn health(channel: &Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    Ok(client.check(request).await?.into_inner().status)
}

#[tokio::test]
async fn embed_unary_matches_shared_embedding() {
    let (server, channel) = start(&["--dims", "16", "--name", "grpc-a"]).await;
    let mut client = EmbedClient::new(channel);
    let response = client
        .embed(embed_request("hello world", true))
        .await
        .expect("embed");
    assert_eq!(
        response
            .metadata()
            .get("x-mock-instance")
            .and_then(|v| v.to_str().ok()),
        Some("grpc-a")
    );
    let response = response.into_inner();
    assert_eq!(response.embeddings, embedding("hello world", 16, true));
    let metadata = response.metadata.expect("metadata");
    assert_eq!((metadata.compute_chars, metadata.compute_tokens), (11, 4));
    let raw = client
        .embed(embed_request("hello world", false))
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(raw.embeddings, embedding("hello world", 16, false));

    let empty = client
        .embed(embed_request("", true))
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn embed_stream_answers_each_message_as_it_arrives() {
    let (server, channel) = start(&["--dims", "8"]).await;
    let mut client = EmbedClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(embed_request("first", true)).await.expect("send");
    let mut responses = timeout(STEP, client.embed_stream(ReceiverStream::new(rx)))
        .await
        .expect("open in time")
        .expect("embed_stream")
        .into_inner();
    // The first answer arrives while the request stream is still open.
    let first = timeout(STEP, responses.message())
        .await
        .expect("first answer before the client finished")
        .expect("ok")
        .expect("some");
    assert_eq!(first.embeddings, embedding("first", 8, true));
    tx.send(embed_request("second", true)).await.expect("send");
    let second = timeout(STEP, responses.message())
        .await
        .expect("second answer")
        .expect("ok")
        .expect("some");
    assert_eq!(second.embeddings, embedding("second", 8, true));
    drop(tx);
    let end = timeout(STEP, responses.message())
        .await
        .expect("end")
        .expect("ok");
    assert!(end.is_none());
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn other_services_answer() {
    let (server, channel) = start(&["--dims", "8", "--model-id", "org/m"]).await;
    let info = pb::info_client::InfoClient::new(channel.clone())
        .info(pb::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.model_id, "org/m");
    assert_eq!(info.max_input_length, 512);

    let mut rerank = pb::rerank_client::RerankClient::new(channel.clone());
    let ranks = rerank
        .rerank(pb::RerankRequest {
            query: "deep learning".into(),
            texts: vec!["cooking".into(), "deep learning rocks".into()],
            return_text: true,
            ..Default::default()
        })
        .await
        .expect("rerank")
        .into_inner()
        .ranks;
    assert_eq!(ranks[0].index, 1);
    assert_eq!(ranks[0].text.as_deref(), Some("deep learning rocks"));
    let messages = ["cooking", "deep learning rocks"].map(|text| pb::RerankStreamRequest {
        query: "deep learning".into(),
        text: text.into(),
        ..Default::default()
    });
    let streamed = rerank
        .rerank_stream(tokio_stream::iter(messages))
        .await
        .expect("rerank_stream")
        .into_inner()
        .ranks;
    assert_eq!(
        streamed.iter().map(|r| r.index).collect::<Vec<_>>(),
        ranks.iter().map(|r| r.index).collect::<Vec<_>>()
    );

    let mut predict = pb::predict_client::PredictClient::new(channel.clone());
    let predictions = predict
        .predict_pair(pb::PredictPairRequest {
            inputs: vec!["a".into(), "b".into()],
            ..Default::default()
        })
        .await
        .expect("predict_pair")
        .into_inner()
        .predictions;
    assert_eq!(predictions.len(), 2);
    let bad_pair = predict
        .predict_pair(pb::PredictPairRequest {
            inputs: vec!["a".into()],
            ..Default::default()
        })
        .await
        .expect_err("one input is not a pair");
    assert_eq!(bad_pair.code(), tonic::Code::InvalidArgument);

    let mut tokenize = pb::tokenize_client::TokenizeClient::new(channel);
    let tokens = tokenize
        .tokenize(pb::EncodeRequest {
            inputs: "hello world".into(),
            add_special_tokens: true,
            prompt_name: None,
        })
        .await
        .expect("tokenize")
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 4);
    let text = tokenize
        .decode(pb::DecodeRequest {
            ids: tokens.iter().map(|t| t.id).collect(),
            skip_special_tokens: true,
        })
        .await
        .expect("decode")
        .into_inner()
        .text;
    assert_eq!(text, "hello world");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn health_serving_then_not_serving_after_fail_after() {
    let (server, channel) = start(&["--fail-after", "1"]).await;
    for service in ["", "tei.v1.Embed", "tei.v1.Info", "tei.v1.Rerank"] {
        assert_eq!(
            health(&channel, service).await.expect("check"),
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let mut client = EmbedClient::new(channel.clone());
    client
        .embed(embed_request("x", true))
        .await
        .expect("first succeeds");
    let failed = client
        .embed(embed_request("x", true))
        .await
        .expect_err("fails");
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    assert_eq!(
        health(&channel, "").await.expect("check"),
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        health(&channel, "tei.v1.Embed").await.expect("check"),
        ServingStatus::NotServing as i32
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn api_key_via_metadata() {
    let (server, channel) = start(&["--api-key", "k1"]).await;
    let mut client = EmbedClient::new(channel.clone());
    let denied = client
        .embed(embed_request("x", true))
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(embed_request("x", true));
    request
        .metadata_mut()
        .insert("authorization", "Bearer k1".parse().expect("metadata"));
    client.embed(request).await.expect("authorised");
    // Health checks need no key.
    assert_eq!(
        health(&channel, "").await.expect("check"),
        ServingStatus::Serving as i32
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn hang_after_blocks_health_until_shutdown() {
    let (server, channel) = start(&["--hang-after", "0"]).await;
    let hung = timeout(Duration::from_millis(300), health(&channel, "")).await;
    assert!(hung.is_err(), "health answered: {hung:?}");
    let started = std::time::Instant::now();
    server.stop().await.expect("stop");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn grpc_process_announces_and_exits_cleanly_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_mock-tei");
    let mut process =
        support::MockProcess::start(bin, &["--grpc", "--hostname", "127.0.0.1", "--port", "0"]);
    assert_ne!(process.addr.port(), 0);
    let status = process.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}

/// `/mock/stats` of a gRPC mock-tei (served over HTTP/1.1 on the same port).
async fn stats(server: &Running) -> serde_json::Value {
    reqwest::get(format!("{}/mock/stats", server.url()))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

#[tokio::test]
async fn stall_every_holds_every_nth_call_and_counts_a_reset_one_cancelled() {
    let (server, channel) = start(&["--stall-every", "2", "--stall-ms", "60000"]).await;
    let mut client = EmbedClient::new(channel);
    // The first call is not a 2nd: answered at once, and not cancelled.
    timeout(STEP, client.embed(embed_request("one", true)))
        .await
        .expect("answered in time")
        .expect("embed");
    let before = stats(&server).await;
    assert_eq!(
        (before["stalled"].as_u64(), before["cancelled"].as_u64()),
        (Some(0), Some(0))
    );
    // The second is held; the client gives up, which resets its stream.
    let held = timeout(
        Duration::from_millis(300),
        client.embed(embed_request("two", true)),
    )
    .await;
    assert!(held.is_err(), "the stalled call was answered: {held:?}");
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let now = stats(&server).await;
        assert_eq!(now["stalled"], 1, "{now}");
        if now["cancelled"] == 1 {
            assert_eq!(now["requests"], 2, "{now}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never cancelled: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.expect("stop");
}
