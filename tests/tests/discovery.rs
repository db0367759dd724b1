//! The discovery protocol as the real proxy speaks it, against a scripted control plane running
//! in the test: hello, ACK of a good snapshot, NACK of a bad one with the previous version kept
//! and still serving. (That the control plane ignores answers with a stale nonce is tested on
//! its side: control/tests/discovery_nonces.rs.) And reconnecting: a real control plane killed
//! and restarted on the same address, with the proxy's default discovery settings.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use multiverse_proto::discovery::v1 as pb;
use multiverse_tests::*;
use pb::route_discovery_server::{RouteDiscovery, RouteDiscoveryServer};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// A control plane the test drives by hand: it forwards every request it receives and sends
/// whatever the test pushes.
struct Scripted {
    requests: mpsc::Sender<pb::DiscoveryRequest>,
    responses: tokio::sync::Mutex<Option<mpsc::Receiver<Result<pb::DiscoveryResponse, Status>>>>,
}

#[tonic::async_trait]
impl RouteDiscovery for Scripted {
    type StreamRoutesStream = ReceiverStream<Result<pb::DiscoveryResponse, Status>>;

    async fn stream_routes(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamRoutesStream>, Status> {
        let mut inbound = request.into_inner();
        let forward = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if forward.send(r).await.is_err() {
                    break;
                }
            }
        });
        let rx = self
            .responses
            .lock()
            .await
            .take()
            .ok_or_else(|| Status::unavailable("one stream only"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn snapshot(address: &str) -> pb::RouteSnapshot {
    pb::RouteSnapshot {
        models: vec![pb::Model {
            name: "demo".into(),
            kind: pb::ModelKind::Chat as i32,
            policy: None,
            endpoints: vec![pb::Endpoint {
                id: "mock-good".into(),
                address: address.into(),
                protocol: pb::Protocol::Http1 as i32,
                health: pb::HealthStatus::Healthy as i32,
                ..Default::default()
            }],
        }],
        auth: None,
    }
}

fn response(version: &str, nonce: &str, snapshot: pb::RouteSnapshot) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        version_info: version.into(),
        nonce: nonce.into(),
        snapshot: Some(snapshot),
        control_plane_id: "cp-scripted".into(),
        leases: None,
        load: None,
    }
}

async fn next(rx: &mut mpsc::Receiver<pb::DiscoveryRequest>) -> pb::DiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the proxy answered in time")
        .expect("stream open")
}

#[tokio::test]
async fn ack_good_snapshot_nack_bad_one_and_keep_serving() {
    let dir = temp_dir("discovery");
    let mock = MockOpenAi::start(&dir, "mock-good", &[]);

    let (req_tx, mut req_rx) = mpsc::channel(16);
    let (resp_tx, resp_rx) = mpsc::channel(16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RouteDiscoveryServer::new(Scripted {
                requests: req_tx,
                responses: tokio::sync::Mutex::new(Some(resp_rx)),
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let proxy = Proxy::start(&dir, "proxy-under-test", &[format!("http://{addr}")]).await;
    let client = reqwest::Client::new();

    // Hello: names the node, holds no version, answers no nonce.
    let hello = next(&mut req_rx).await;
    let node = hello.node.expect("the first request names the node");
    assert_eq!(node.id, "proxy-under-test");
    assert!(!node.build_version.is_empty());
    assert_eq!(hello.version_info, "");
    assert_eq!(hello.response_nonce, "");

    // A good snapshot is applied and ACKed with its version and nonce.
    resp_tx
        .send(Ok(response("v1", "n1", snapshot(&mock.addr.to_string()))))
        .await
        .expect("send");
    let ack = next(&mut req_rx).await;
    assert_eq!(ack.version_info, "v1");
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none(), "ACK carries no error");
    proxy.wait_ready(&client).await;
    assert_eq!(proxy.version(&client).await, "v1");

    // A bad snapshot (unparseable address) is NACKed: previous version, its nonce, a reason.
    resp_tx
        .send(Ok(response("v2", "n2", snapshot("not-an-address"))))
        .await
        .expect("send");
    let nack = next(&mut req_rx).await;
    assert_eq!(
        nack.version_info, "v1",
        "a NACK names the version still running"
    );
    assert_eq!(nack.response_nonce, "n2");
    let reason = nack.error_detail.expect("a NACK says why").message;
    assert!(reason.contains("not-an-address"), "{reason}");

    // v1 still serves: same version, same endpoint, requests succeed.
    assert_eq!(proxy.version(&client).await, "v1");
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-multiverse-endpoint"].to_str().ok(),
        Some("mock-good")
    );
    let dump: Value = client
        .get(format!("{}/config_dump", proxy.admin_url()))
        .send()
        .await
        .expect("config_dump")
        .json()
        .await
        .expect("json");
    assert_eq!(dump["table"]["version"], "v1");
    assert_eq!(
        dump["table"]["models"]["demo"]["endpoints"][0]["address"],
        mock.addr.to_string()
    );
    let metrics = client
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("multiverse_proxy_snapshots_rejected_total 1"),
        "{metrics}"
    );

    // A later good snapshot is taken again: an empty table, version v3.
    resp_tx
        .send(Ok(response("v3", "n3", pb::RouteSnapshot::default())))
        .await
        .expect("send");
    let ack = next(&mut req_rx).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v3", "n3")
    );
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": "demo", "messages": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status(),
        404,
        "absence from the snapshot means deletion"
    );

    drop(proxy);
    server.abort();
}

/// A proxy process fed by `url` with the default `[discovery]` settings (the harness's
/// `Proxy::start` shortens the backoff for speed, which would hide what this measures).
async fn proxy_with_default_discovery(dir: &std::path::Path, node_id: &str, url: &str) -> Proxy {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.join(format!("{node_id}.toml"));
    let text = format!(
        "node_id = \"{node_id}\"\n[listen]\nclients = \"{listen}\"\nadmin = \"{admin}\"\n\
         [server]\nthreads = 2\ndrain_grace_seconds = 5\n[[control_planes]]\nurl = \"{url}\"\n"
    );
    std::fs::write(&config, text).expect("write proxy config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let proc = Proc::spawn(node_id, &bin("multiverse-proxy"), &args, dir, false);
    let p = Proxy {
        proc,
        listen,
        admin,
    };
    wait_ok(
        &reqwest::Client::new(),
        &format!("http://{admin}/healthz"),
        READY_TIMEOUT,
        &p.proc,
    )
    .await;
    p
}

/// Whether the control plane's `GET /proxies` lists `node` connected and ACKing its current
/// version.
async fn acked_by(client: &reqwest::Client, api: SocketAddr, node: &str) -> bool {
    let Ok(r) = client.get(format!("http://{api}/proxies")).send().await else {
        return false;
    };
    let Ok(v) = r.json::<Value>().await else {
        return false;
    };
    let current = v["current_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    !current.is_empty()
        && v["proxies"].as_array().is_some_and(|list| {
            list.iter().any(|p| {
                p["node_id"] == node
                    && p["connected"] == true
                    && p["acked_version"].as_str() == Some(current.as_str())
            })
        })
}

/// The longest stretch of `[from, to]` (seconds after `start`) without an attempt in `at`.
fn longest_silence(start: Instant, at: &[Instant], from: f64, to: f64) -> f64 {
    let mut marks: Vec<f64> = at
        .iter()
        .map(|t| t.duration_since(start).as_secs_f64())
        .filter(|s| (from..=to).contains(s))
        .collect();
    marks.insert(0, from);
    marks.push(to);
    marks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// Issue 10: after a control plane restart the proxies took 2.4-4.0 s to reconnect, because the
/// backoff had reached 5 s during a 10 s outage. With the default settings the proxy now tries
/// a lost plane about once a second however long it is away, and is back within 2 s of its
/// return. During the outage a stand-in listener on the plane's address counts the proxy's
/// connection attempts (accepting and closing each, as a plane that is not ready would).
#[tokio::test]
async fn a_restarted_control_plane_is_reconnected_within_two_seconds() {
    const OUTAGE: Duration = Duration::from_secs(9);
    let dir = temp_dir("reconnect");
    let mock = MockOpenAi::start(&dir, "mock-r", &[]);
    let body = backends_toml(&[&mock], "demo");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let discovery: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut control = Control::start_on(&dir, "cp-restart", &body, api, discovery).await;
    let proxy =
        proxy_with_default_discovery(&dir, "proxy-reconnect", &control.discovery_url()).await;
    let client = reqwest::Client::new();
    proxy.wait_ready(&client).await;
    eventually(Duration::from_secs(10), "the first ACK", || async {
        acked_by(&client, api, "proxy-reconnect")
            .await
            .then_some(())
    })
    .await;

    control.proc.kill();
    let down = Instant::now();
    let stand_in = tokio::net::TcpListener::bind(discovery)
        .await
        .expect("the plane's address is free again");
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + OUTAGE;
    while let Ok(Ok((sock, _))) = tokio::time::timeout_at(deadline, stand_in.accept()).await {
        attempts.push(Instant::now());
        drop(sock);
    }
    drop(stand_in);

    control = Control::start_on(&dir, "cp-restart", &body, api, discovery).await;
    let back = Instant::now();
    eventually(
        Duration::from_secs(15),
        "the ACK after the restart",
        || async {
            acked_by(&client, api, "proxy-reconnect")
                .await
                .then_some(())
        },
    )
    .await;
    let reconnected = back.elapsed();

    // Once the backoff has had time to climb (main reached gaps of 1.6-5 s after ~3 s), the
    // proxy still tries at least every ~1 s.
    let silence = longest_silence(down, &attempts, 3.5, OUTAGE.as_secs_f64());
    eprintln!(
        "{} connections in the outage, longest silence after 3.5 s: {silence:.2} s; \
         ACKed {reconnected:?} after the restart",
        attempts.len()
    );
    assert!(
        silence <= 1.4,
        "longest gap between reconnect attempts late in a {OUTAGE:?} outage: {silence:.2} s \
         (connections at {:?} s)",
        attempts
            .iter()
            .map(|t| format!("{:.2}", t.duration_since(down).as_secs_f64()))
            .collect::<Vec<_>>()
    );
    assert!(
        reconnected <= Duration::from_secs(2),
        "reconnected and ACKed {reconnected:?} after the control plane was back"
    );
    // And it routes by the restarted plane's table.
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    drop(control);
}
