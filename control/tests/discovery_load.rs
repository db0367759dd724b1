//! Engine-load updates on the discovery stream, with the control plane in-process and the test
//! speaking the protocol as a proxy would: after a backend whose `/metrics` are vLLM's is
//! registered, load updates arrive on their own (no snapshot, no version, no nonce) carrying
//! its queue and the scrape interval, and the snapshot before them is still ACKed by its own
//! nonce (a load update never moves the nonce a proxy must answer).

use std::time::Duration;

use multiverse_control::{App, ControlConfig};
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_client::RouteDiscoveryClient;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const KEY: &str = "test-admin-key-load";

/// A backend stand-in: `GET /v1/models` lists `demo`, `GET /metrics` says 7 are waiting.
async fn backend() -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/v1/models",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"data": [{"id": "demo"}]}))
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(|| async {
                "vllm:num_requests_waiting{model_name=\"demo\"} 7.0\n\
                 vllm:num_requests_running{model_name=\"demo\"} 2.0\n"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn next(responses: &mut tonic::Streaming<pb::DiscoveryResponse>) -> pb::DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

fn ack(version: &str, nonce: &str) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// The ACKed version of proxy `p1` in `GET /proxies`, once it is `want`.
async fn acked(client: &reqwest::Client, api: &str, want: &str) {
    let url = format!("{api}/proxies");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: Value = client
                .get(&url)
                .bearer_auth(KEY)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            let found = v["proxies"]
                .as_array()
                .and_then(|l| l.iter().find(|p| p["node_id"] == "p1"))
                .is_some_and(|p| p["acked_version"] == want);
            if found {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("GET /proxies shows the ACK in time")
}

#[tokio::test]
async fn load_updates_ride_alone_and_leave_the_snapshot_nonce_alone() {
    let dir = std::env::temp_dir().join(format!("mv-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg: ControlConfig = toml::from_str(&format!(
        r#"
        id = "cp-load"
        data_dir = "{}"
        [listen]
        api = "127.0.0.1:0"
        discovery = "127.0.0.1:0"
        [admin]
        api_keys = ["{KEY}"]
        allow_private_backends = true
        [load]
        scrape_interval_ms = 100
        "#,
        dir.display()
    ))
    .expect("config");
    let app = App::build(cfg).await.expect("build");
    let addrs = app.addrs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    let api = format!("http://{}", addrs.api);
    let http = reqwest::Client::new();

    let mut client = RouteDiscoveryClient::connect(format!("http://{}", addrs.discovery))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::DiscoveryRequest {
        node: Some(pb::Node {
            id: "p1".into(),
            build_version: "test".into(),
            labels: Default::default(),
        }),
        ..Default::default()
    })
    .await
    .expect("hello");
    let mut responses = client
        .stream_routes(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut responses).await;
    tx.send(ack(&first.version_info, &first.nonce))
        .await
        .expect("ack");
    acked(&http, &api, &first.version_info).await;

    let r = http
        .post(format!("{api}/admin/backends"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"name": "b1", "url": format!("http://{}", backend().await)}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());

    // Snapshots and load updates interleave: read until b1's snapshot and a load of b1 came.
    let has_b1 = |r: &pb::DiscoveryResponse| {
        r.snapshot.as_ref().is_some_and(|s| {
            s.models
                .iter()
                .any(|m| m.endpoints.iter().any(|e| e.id == "b1"))
        })
    };
    let mut latest = first.clone();
    let mut load: Option<pb::LoadUpdate> = None;
    while load.is_none() || !has_b1(&latest) {
        let resp = next(&mut responses).await;
        match (&resp.snapshot, &resp.load) {
            (Some(_), None) => latest = resp,
            (None, Some(update)) => {
                assert!(
                    resp.version_info.is_empty() && resp.nonce.is_empty(),
                    "a load update carries no version or nonce: {resp:?}"
                );
                assert_eq!(resp.control_plane_id, "cp-load");
                if update.endpoints.iter().any(|e| e.endpoint_id == "b1") {
                    load = Some(update.clone());
                }
            }
            other => panic!("a response is a snapshot or a load update: {other:?}"),
        }
    }
    let load = load.expect("b1's load");
    assert_eq!(load.interval_ms, 100);
    let b1 = &load.endpoints[0];
    assert_eq!((b1.engine.as_str(), b1.waiting, b1.running), ("vllm", 7, 2));

    // The latest snapshot is ACKed by its nonce, load updates notwithstanding.
    tx.send(ack(&latest.version_info, &latest.nonce))
        .await
        .expect("ack");
    acked(&http, &api, &latest.version_info).await;

    // The stream ends first: a graceful shutdown waits for open streams.
    drop(tx);
    drop(responses);
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}
