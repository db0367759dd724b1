//! The control plane's side of route discovery, with the control plane running in-process
//! (`App::build` + `App::serve`) and the test speaking the protocol as a proxy would: an ACK or
//! a NACK that answers an older response than the latest one sent (a stale nonce) is ignored.

use std::time::Duration;

use multiverse_control::{App, ControlConfig};
use multiverse_proto::discovery::v1 as pb;
use pb::route_discovery_client::RouteDiscoveryClient;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const KEY: &str = "test-admin-key-1";

/// A control plane whose routes change only when the test registers a backend.
async fn start(tag: &str) -> (App, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mv-nonces-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg: ControlConfig = toml::from_str(&format!(
        r#"
        id = "cp-nonces"
        data_dir = "{}"
        [listen]
        api = "127.0.0.1:0"
        discovery = "127.0.0.1:0"
        [admin]
        api_keys = ["{KEY}"]
        allow_private_backends = true
        "#,
        dir.display()
    ))
    .expect("config");
    (App::build(cfg).await.expect("build"), dir)
}

/// A backend stand-in: `GET /v1/models` lists `demo`.
async fn backend() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"data": [{"id": "demo"}]})) }),
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
        .expect("a snapshot in time")
        .expect("stream ok")
        .expect("stream open")
}

fn request(version: &str, nonce: &str, nack: Option<&str>) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        node: None,
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: nack.map(|m| pb::ErrorDetail { message: m.into() }),
        usage: None,
    }
}

/// A GET with the admin key (`/proxies` needs it: `[admin] public_read` is off by default).
async fn get(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

/// The proxy `p1` in `GET /proxies`, once `ready` holds for it.
async fn proxy_until(client: &reqwest::Client, api: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{api}/proxies");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: Value = serde_json::from_str(&get(client, &url).await).expect("json");
            if let Some(p) = v["proxies"]
                .as_array()
                .and_then(|l| l.iter().find(|p| p["node_id"] == "p1"))
            {
                if ready(p) {
                    return p.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("GET /proxies shows it in time")
}

#[tokio::test]
async fn acks_and_nacks_with_a_stale_nonce_are_ignored() {
    let (app, dir) = start("stale").await;
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
    // The first snapshot, ACKed.
    let first = next(&mut responses).await;
    tx.send(request(&first.version_info, &first.nonce, None))
        .await
        .expect("ack");
    proxy_until(&http, &api, |p| {
        p["acked_version"] == first.version_info.as_str()
    })
    .await;

    // A registration pushes a second snapshot.
    let r = http
        .post(format!("{api}/admin/backends"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"name": "b1", "url": format!("http://{}", backend().await)}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let second = next(&mut responses).await;
    assert_ne!(second.nonce, first.nonce);
    assert_ne!(second.version_info, first.version_info);

    // Both answer the first response: stale, ignored.
    tx.send(request(
        &first.version_info,
        &first.nonce,
        Some("stale NACK"),
    ))
    .await
    .expect("send");
    tx.send(request("999", &first.nonce, None))
        .await
        .expect("send");
    // A current NACK that names no running version: it is recorded, and it is processed
    // after the stale ones (one stream, in order).
    tx.send(request("", &second.nonce, Some("current NACK")))
        .await
        .expect("send");
    let p = proxy_until(&http, &api, |p| !p["last_nack"].is_null()).await;
    assert_eq!(p["last_nack"]["reason"], "current NACK", "{p}");
    assert_eq!(
        p["last_nack"]["version"],
        second.version_info.as_str(),
        "{p}"
    );
    assert_eq!(
        p["acked_version"],
        first.version_info.as_str(),
        "the stale ACK of version 999 was ignored: {p}"
    );
    let metrics = get(&http, &format!("{api}/metrics")).await;
    assert!(
        metrics.contains("multiverse_control_nacks_total{node=\"p1\"} 1\n"),
        "only the current NACK is counted:\n{metrics}"
    );

    drop((tx, responses, client));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after the shutdown future")
        .expect("no panic")
        .expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
