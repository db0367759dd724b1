//! TEI gRPC through the proxy with a tonic client: unary, bidi and client streaming forwarded
//! frame by frame to `mock-tei --grpc`, trailers passed through, and the proxy's own errors as
//! gRPC statuses.

use std::time::Duration;

use multiverse_mocks::embedding;
use multiverse_proto::tei::v1 as tei;
use multiverse_tests::*;
use tei::embed_client::EmbedClient;
use tei::rerank_client::RerankClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn with_model<T>(msg: T, model: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("x-model", model.parse().expect("ascii metadata"));
    req
}

fn embed_req(text: &str) -> tei::EmbedRequest {
    tei::EmbedRequest {
        inputs: text.into(),
        normalize: Some(true),
        ..Default::default()
    }
}

async fn channel(proxy: &Proxy) -> Channel {
    Channel::from_shared(proxy.url())
        .expect("url")
        .connect()
        .await
        .expect("connect to the proxy")
}

#[tokio::test]
async fn tei_grpc_through_the_proxy() {
    let dir = temp_dir("grpc");
    let g1 = MockTei::start(&dir, "tei-grpc-1", &["--grpc"]);
    let g2 = MockTei::start(&dir, "tei-grpc-2", &["--grpc"]);
    let locked = MockTei::start(&dir, "tei-grpc-locked", &["--grpc", "--api-key", "s3cret"]);
    let routes = model_toml(
        "bge",
        "embedding",
        "",
        &[
            Ep::grpc("tei-grpc-1", g1.addr, "healthy"),
            Ep::grpc("tei-grpc-2", g2.addr, "healthy"),
        ],
    ) + &model_toml(
        "reranker",
        "rerank",
        "",
        &[Ep::grpc("tei-grpc-1", g1.addr, "healthy")],
    ) + &model_toml(
        "locked",
        "embedding",
        "",
        &[Ep::grpc("tei-grpc-locked", locked.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc", &routes, "").await;
    let mut embed = EmbedClient::new(channel(&proxy).await);

    // Unary: the body is the mock's deterministic embedding; the endpoint is named.
    let resp = embed
        .embed(with_model(embed_req("hello grpc"), "bge"))
        .await
        .expect("unary Embed");
    let endpoint = resp
        .metadata()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .expect("x-multiverse-endpoint metadata")
        .to_string();
    assert!(endpoint.starts_with("tei-grpc-"), "{endpoint}");
    assert_eq!(
        resp.into_inner().embeddings,
        embedding("hello grpc", 384, true)
    );

    // Bidi: each request is answered before the next is sent, so nothing may be buffered.
    let (tx, rx) = mpsc::channel(1);
    let mut replies = embed
        .embed_stream(with_model(ReceiverStream::new(rx), "bge"))
        .await
        .expect("EmbedStream")
        .into_inner();
    for i in 0..5 {
        let text = format!("message {i}");
        tx.send(embed_req(&text)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("a reply before the next request")
            .expect("stream ok")
            .expect("a reply");
        assert_eq!(reply.embeddings, embedding(&text, 384, true), "reply {i}");
    }
    drop(tx);
    assert!(replies.message().await.expect("clean end").is_none());
    // Trailers arrived intact: the stream ended with grpc-status 0.
    assert!(replies.trailers().await.expect("trailers").is_some());

    // Client streaming: RerankStream takes texts one by one and answers once.
    let texts = ["apples", "pears", "plums"];
    let requests: Vec<_> = texts
        .iter()
        .map(|t| tei::RerankStreamRequest {
            query: "fruit".into(),
            text: t.to_string(),
            ..Default::default()
        })
        .collect();
    let stream = tokio_stream::iter(requests);
    let ranked = RerankClient::new(channel(&proxy).await)
        .rerank_stream(with_model(stream, "reranker"))
        .await
        .expect("RerankStream")
        .into_inner();
    let mut indexes: Vec<u32> = ranked.ranks.iter().map(|r| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, vec![0, 1, 2]);

    // The upstream's own error status comes through in its trailers.
    let err = embed
        .embed(with_model(embed_req("x"), "locked"))
        .await
        .expect_err("the locked mock wants a key");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut authed = with_model(embed_req("x"), "locked");
    authed
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("ascii"));
    embed.embed(authed).await.expect("with the key it works");
}

#[tokio::test]
async fn grpc_upstream_streams_share_http2_connections() {
    let dir = temp_dir("grpc-mux");
    let tei = MockTei::start(&dir, "tei-mux", &["--grpc", "--latency-ms", "1000"]);
    let routes = model_toml(
        "bge",
        "embedding",
        "",
        &[Ep::grpc("tei-mux", tei.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-mux", &routes, "").await;
    let channel = channel(&proxy).await;
    // Calls start 25 ms apart and each takes 1 s, so all 20 overlap. (Calls that arrive at the
    // very same instant can each dial a connection: pingora's h2 pool hands a connection to one
    // caller at a time while it opens a stream, by design.)
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = EmbedClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            client
                .embed(with_model(embed_req(&format!("call {i}")), "bge"))
                .await
                .map(|r| r.into_inner().embeddings.len())
        }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for call in calls {
        assert_eq!(call.await.expect("task").expect("Embed"), 384);
    }
    let stats: serde_json::Value = reqwest::get(format!("{}/mock/stats", tei.url()))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["requests"], 20);
    let connections = stats["connections"].as_u64().expect("connections");
    // 20 overlapping calls multiplexed: the stats request plus very few h2 connections.
    assert!(
        connections <= 4,
        "20 concurrent calls used {connections} upstream connections"
    );
}

#[tokio::test]
async fn proxy_errors_are_grpc_statuses() {
    let dir = temp_dir("grpc-errors");
    let ok = MockTei::start(&dir, "tei-ok", &["--grpc"]);
    let hung = MockTei::start(&dir, "tei-hung", &["--grpc", "--hang-after", "0"]);
    let routes = model_toml(
        "down",
        "embedding",
        "",
        &[Ep::grpc("tei-ok", ok.addr, "unhealthy")],
    ) + &model_toml(
        "slow",
        "embedding",
        "first_byte_timeout_ms = 400\nidle_timeout_ms = 400",
        &[Ep::grpc("tei-hung", hung.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-grpc-errors", &routes, "").await;
    let mut embed = EmbedClient::new(channel(&proxy).await);
    for (model, code) in [
        ("no-such-model", Code::NotFound),
        ("down", Code::Unavailable),
        ("slow", Code::DeadlineExceeded),
    ] {
        let err = embed
            .embed(with_model(embed_req("x"), model))
            .await
            .expect_err(model);
        assert_eq!(err.code(), code, "{model}: {err:?}");
        assert!(!err.message().is_empty(), "{model}: a message is given");
    }
    // Two embedding models and no x-model: the client must name one.
    let err = embed
        .embed(Request::new(embed_req("x")))
        .await
        .expect_err("ambiguous");
    assert_eq!(err.code(), Code::InvalidArgument);
}
