//! The proxy as a library: started in-process from a `ProxyConfig` on port 0, its bound
//! addresses learned from the handle, requests proxied, stopped gracefully (draining an open
//! request) or by drop — with no process, no signal and no port guessing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use multiverse_proxy::config::ProxyConfig;
use multiverse_proxy::{Proxy, StartError, Stop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP/1.1 upstream answering every request with `{"ok":true}` after `delay`.
async fn upstream(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() < end + 4 + len {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.drain(..end + 4 + len);
                    tokio::time::sleep(delay).await;
                    let body = r#"{"ok":true}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A standalone config on port 0 routing model `demo` to `upstream`.
fn config(tag: &str, upstream: SocketAddr) -> (ProxyConfig, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mv-in-process-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[models]]\nname = \"demo\"\n[[models.endpoints]]\nid = \"up\"\naddress = \"{upstream}\"\n"
        ),
    )
    .expect("write routes");
    let mut cfg = ProxyConfig::default();
    cfg.listen.clients = "127.0.0.1:0".into();
    cfg.listen.admin = "127.0.0.1:0".into();
    cfg.standalone.routes_file = Some(routes);
    cfg.server.threads = Some(1);
    cfg.server.drain_grace_seconds = 5;
    cfg.node_id = Some(format!("in-process-{tag}"));
    (cfg, dir)
}

async fn chat(client: &reqwest::Client, proxy: SocketAddr) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("http://{proxy}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"messages":[],"model":"demo"}"#)
        .send()
        .await
}

/// Whether something accepts TCP connections on `addr`.
async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

#[tokio::test]
async fn two_proxies_in_one_process_learn_their_ports_serve_and_stop() {
    let up = upstream(Duration::ZERO).await;
    let (cfg_a, dir_a) = config("a", up);
    let (cfg_b, dir_b) = config("b", up);
    let a = Proxy::start(&cfg_a).expect("proxy a starts");
    let b = Proxy::start(&cfg_b).expect("proxy b starts");
    let addrs = [
        a.clients_addr(),
        a.admin_addr(),
        b.clients_addr(),
        b.admin_addr(),
    ];
    for addr in addrs {
        assert_ne!(addr.port(), 0, "the bound port is known");
    }
    let unique: std::collections::HashSet<_> = addrs.iter().collect();
    assert_eq!(unique.len(), 4, "four listeners, four ports: {addrs:?}");
    // Standalone routes are loaded before start returns.
    assert!(a.is_ready() && b.is_ready());
    assert_eq!(a.node_id(), "in-process-a");

    let client = reqwest::Client::new();
    for proxy in [&a, &b] {
        let resp = chat(&client, proxy.clients_addr()).await.expect("proxied");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-multiverse-endpoint"].to_str().ok(),
            Some("up")
        );
        assert_eq!(resp.text().await.expect("body"), r#"{"ok":true}"#);
        let ready = client
            .get(format!("http://{}/ready", proxy.admin_addr()))
            .send()
            .await
            .expect("admin");
        assert_eq!(ready.status(), 200);
    }

    // Stopping one leaves the other serving; both listeners of the stopped one are closed.
    let (a_clients, a_admin) = (a.clients_addr(), a.admin_addr());
    assert_eq!(a.stop(Stop::Graceful).await, 0, "nothing was in flight");
    assert!(!accepts(a_clients).await && !accepts(a_admin).await);
    let resp = chat(&client, b.clients_addr())
        .await
        .expect("b still serves");
    assert_eq!(resp.status(), 200);
    // Dropping stops too.
    let b_clients = b.clients_addr();
    drop(b);
    assert!(!accepts(b_clients).await);
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

#[tokio::test]
async fn a_graceful_stop_lets_the_open_request_finish_and_refuses_new_ones() {
    let up = upstream(Duration::from_millis(700)).await;
    let (cfg, dir) = config("drain", up);
    let proxy = Proxy::start(&cfg).expect("starts");
    let addr = proxy.clients_addr();
    let client = reqwest::Client::new();
    let open = tokio::spawn({
        let client = client.clone();
        async move { chat(&client, addr).await }
    });
    // Wait until the request is in flight (the upstream holds it for 700 ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.state().table().route("demo").is_some_and(|r| {
        r.endpoints[0]
            .state
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = tokio::time::Instant::now();
    let left = proxy.stop(Stop::Graceful).await;
    assert_eq!(left, 0, "the open request finished within the grace");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop did not wait for the whole grace period"
    );
    let resp = open
        .await
        .expect("task")
        .expect("the open request is answered");
    assert_eq!(resp.status(), 200);
    assert!(!accepts(addr).await, "no new connections after the stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unbindable_address_is_an_error_that_names_the_key() {
    let up = upstream(Duration::ZERO).await;
    let (mut cfg, dir) = config("unbindable", up);
    // 192.0.2.1 is TEST-NET-1, on no interface here: the bind fails at once.
    cfg.listen.admin = "192.0.2.1:9".into();
    match Proxy::start(&cfg) {
        Err(e @ StartError::Bind { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("listen.admin"), "{msg}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("started on an address of no interface"),
    }
    // An invalid config is refused before anything binds.
    cfg.listen.admin = "nope".into();
    assert!(matches!(Proxy::start(&cfg), Err(StartError::Config(_))));
    let _ = std::fs::remove_dir_all(dir);
}

/// A port still held (a previous process draining on it) is retried, as pingora does: the
/// proxy starts, is not ready until the port is free, then serves on it.
#[tokio::test]
async fn a_client_port_still_in_use_is_taken_once_free() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let held = holder.local_addr().expect("addr");
    let up = upstream(Duration::ZERO).await;
    let (mut cfg, dir) = config("held", up);
    cfg.listen.clients = held.to_string();
    let proxy = Proxy::start(&cfg).expect("starts while the port is held");
    assert_eq!(proxy.clients_addr(), held);
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, admin: SocketAddr| async move {
        client
            .get(format!("http://{admin}/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    assert_eq!(
        ready(client.clone(), proxy.admin_addr()).await,
        Some(503),
        "not ready while another socket holds the client port"
    );
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ready(client.clone(), proxy.admin_addr()).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = chat(&client, held).await.expect("served on the freed port");
    assert_eq!(resp.status(), 200);
    proxy.stop(Stop::Fast).await;
    let _ = std::fs::remove_dir_all(dir);
}
