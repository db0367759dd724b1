//! The proxy's client listener against floods (issue 13, "abuse limits"), through real proxy
//! processes: oversized headers and header floods (HTTP/1.1 over raw sockets, HTTP/2 with the
//! h2 crate as the client), connection floods from one address and from many (client sockets
//! bound to 127.0.0.1, 127.0.0.2 and 127.0.0.3, which Linux routes to `lo`), and HTTP/2 stream
//! floods. After each flood, a normal request is still served.
//!
//! Every wait is bounded by [`CAP`], so a connection the proxy never answers or closes fails the
//! test instead of hanging it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use multiverse_tests::raw_http::{read_response, read_to_close, status_of, Reply, CAP};
use multiverse_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A standalone proxy routing `demo` (chat) to a mock-openai answering after `latency_ms`.
struct Setup {
    proxy: Proxy,
    _openai: MockOpenAi,
    client: reqwest::Client,
}

async fn setup(tag: &str, latency_ms: u64, extra_toml: &str) -> Setup {
    let dir = temp_dir(tag);
    let latency = latency_ms.to_string();
    let openai = MockOpenAi::start(&dir, &format!("{tag}-openai"), &["--latency-ms", &latency]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("openai-1", openai.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, &format!("{tag}-proxy"), &routes, extra_toml).await;
    Setup {
        proxy,
        _openai: openai,
        client: reqwest::Client::new(),
    }
}

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;

/// A chat request through the proxy with reqwest (its own connection pool, from 127.0.0.1).
async fn chat_status(s: &Setup) -> u16 {
    s.client
        .post(format!("{}/v1/chat/completions", s.proxy.url()))
        .header("content-type", "application/json")
        .body(CHAT)
        .timeout(CAP)
        .send()
        .await
        .expect("chat request")
        .status()
        .as_u16()
}

/// A raw HTTP/1.1 chat request (keep-alive).
fn chat_request() -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
    .into_bytes()
}

/// Connects to `to` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback source address");
    tokio::time::timeout(CAP, socket.connect(to))
        .await
        .expect("connect within the cap")
        .expect("connect")
}

const LOCAL_1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LOCAL_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOCAL_3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Writes `request` on a new connection and reads until the proxy closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = connect_from(LOCAL_1, addr).await;
    stream.write_all(request).await.expect("write");
    read_to_close(&mut stream, Instant::now()).await
}

/// Sends a chat request on `stream` and returns the status (the connection stays open).
async fn chat_on(stream: &mut TcpStream) -> u16 {
    stream.write_all(&chat_request()).await.expect("write");
    read_response(stream).await
}

/// The proxy closed `stream` at once: nothing came back, and the close arrived within [`CAP`].
async fn assert_shed(stream: &mut TcpStream, what: &str) {
    // The request may already fail to go out (the proxy reset the connection).
    let _ = stream.write_all(&chat_request()).await;
    let reply = read_to_close(stream, Instant::now()).await;
    assert!(reply.closed, "{what}: the connection was left open");
    assert!(
        reply.bytes.is_empty(),
        "{what}: a shed connection gets no response: {:?}",
        reply.text()
    );
}

/// A counter on the proxy's `/metrics` (0 when absent).
async fn metric(s: &Setup, name_and_labels: &str) -> u64 {
    let series = format!("multiverse_proxy_{name_and_labels} ");
    s.proxy.metric(&s.client, &series).await as u64
}

/// Waits until the proxy counts no open client connection (the start-up probe's is closed).
async fn wait_no_connections(s: &Setup) {
    let deadline = Instant::now() + CAP;
    while metric(s, "client_connections").await != 0 {
        assert!(Instant::now() < deadline, "client connections stay open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries a chat request on new connections from `from` until one is served (a closed
/// connection's place is given back once the proxy has seen it close); panics after [`CAP`].
async fn served_again(addr: SocketAddr, from: Ipv4Addr) {
    let deadline = Instant::now() + CAP;
    loop {
        let mut stream = connect_from(from, addr).await;
        let _ = stream.write_all(&chat_request()).await;
        let reply = read_to_close_or_response(&mut stream).await;
        if reply == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a place freed by a closed connection was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of one response on `stream`, or `None` if the proxy closed it first.
async fn read_to_close_or_response(stream: &mut TcpStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + CAP;
    loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("\r\n\r\n") {
            return status_of(&bytes);
        }
    }
}

/// A 65 KiB header gets a 431 (over the 32 KiB default) and the connection is closed; the
/// fault is counted, and normal requests are served throughout.
#[tokio::test]
async fn oversized_header_gets_431_and_close() {
    let s = setup("oversized-header", 0, "").await;
    assert_eq!(chat_status(&s).await, 200);
    let big = "a".repeat(65 * 1024);
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let reply = exchange(s.proxy.listen, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(431), "{:?}", reply.text());
    assert!(reply.closed, "the connection must be closed after the 431");
    assert_eq!(
        reply.json()["error"]["code"],
        "request_header_too_large",
        "{}",
        reply.text()
    );
    // Many header lines of moderate size add up the same way.
    let lines: String = (0..40)
        .map(|i| format!("X-Fill-{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
    let reply = exchange(s.proxy.listen, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(431), "{:?}", reply.text());
    assert!(reply.closed);
    assert_eq!(
        metric(&s, "client_faults_total{reason=\"header_too_large\"}").await,
        2
    );
    // Just under the limit is served.
    let fits = "c".repeat(30 * 1024);
    let mut stream = connect_from(LOCAL_1, s.proxy.listen).await;
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Fits: {fits}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    assert_eq!(chat_status(&s).await, 200);
}

/// 200 header fields get a 431 (over the default 100) and the connection is closed; 90 are
/// served. Counted as `too_many_headers`.
#[tokio::test]
async fn too_many_headers_get_431_and_close() {
    let s = setup("header-flood", 0, "").await;
    let fields = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(200));
    let reply = exchange(s.proxy.listen, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(431), "{:?}", reply.text());
    assert!(reply.closed, "the connection must be closed after the 431");
    assert_eq!(
        metric(&s, "client_faults_total{reason=\"too_many_headers\"}").await,
        1
    );
    let mut stream = connect_from(LOCAL_1, s.proxy.listen).await;
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(90));
    stream.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    // A malformed header is counted too (it was not, before issue 13).
    let reply = exchange(s.proxy.listen, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_eq!(reply.status(), Some(400), "{:?}", reply.text());
    assert_eq!(
        metric(&s, "client_faults_total{reason=\"malformed_header\"}").await,
        1
    );
    assert_eq!(chat_status(&s).await, 200);
}

/// `max_connections_per_ip = 3`: a fourth connection from 127.0.0.1 is closed at once, without
/// a response, while 127.0.0.2 is still served; once one of the three closes, 127.0.0.1 is
/// served again.
#[tokio::test]
async fn connections_beyond_the_per_ip_limit_are_shed() {
    let s = setup(
        "per-ip-connections",
        0,
        "[clients]\nmax_connections_per_ip = 3\nheader_timeout_ms = 30000\n",
    )
    .await;
    let addr = s.proxy.listen;
    wait_no_connections(&s).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(LOCAL_1, addr).await;
        assert_eq!(chat_on(&mut stream).await, 200, "under the limit");
        held.push(stream);
    }
    for i in 0..5 {
        let mut extra = connect_from(LOCAL_1, addr).await;
        assert_shed(&mut extra, &format!("connection {} from 127.0.0.1", 4 + i)).await;
    }
    // Another address is not affected, and the three held connections still work.
    let mut other = connect_from(LOCAL_2, addr).await;
    assert_eq!(chat_on(&mut other).await, 200, "127.0.0.2 is served");
    for stream in &mut held {
        assert_eq!(chat_on(stream).await, 200, "a held connection still works");
    }
    assert_eq!(
        metric(
            &s,
            "connections_shed_total{limit=\"max_connections_per_ip\"}"
        )
        .await,
        5
    );
    drop(held.pop());
    served_again(addr, LOCAL_1).await;
}

/// `max_connections = 4` (no per-address limit): with four open from two addresses, a fifth
/// from a third address is shed; the accept loop keeps accepting and shedding a burst, and a
/// freed place is taken again.
#[tokio::test]
async fn connections_beyond_the_total_limit_are_shed() {
    let s = setup(
        "total-connections",
        0,
        "[clients]\nmax_connections = 4\nmax_connections_per_ip = 0\nheader_timeout_ms = 30000\n",
    )
    .await;
    let addr = s.proxy.listen;
    wait_no_connections(&s).await;
    let mut held = Vec::new();
    for from in [LOCAL_1, LOCAL_1, LOCAL_2, LOCAL_2] {
        let mut stream = connect_from(from, addr).await;
        assert_eq!(chat_on(&mut stream).await, 200, "under the limit");
        held.push(stream);
    }
    // A burst of 20 connects at once: every one is closed, none is left hanging.
    let burst: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { connect_from(LOCAL_3, addr).await }))
        .collect();
    for (i, task) in burst.into_iter().enumerate() {
        let mut stream = task.await.expect("connect task");
        assert_shed(&mut stream, &format!("burst connection {i}")).await;
    }
    assert_eq!(
        metric(&s, "connections_shed_total{limit=\"max_connections\"}").await,
        20
    );
    assert_eq!(metric(&s, "client_connections").await, 4);
    for stream in &mut held {
        assert_eq!(chat_on(stream).await, 200, "a held connection still works");
    }
    drop(held.pop());
    served_again(addr, LOCAL_3).await;
}

/// `h2_max_streams = 3`: a client that opens five streams at once (before it has seen the
/// proxy's SETTINGS) gets REFUSED_STREAM for the two beyond the limit, while the three allowed
/// complete with 200. A request with more header fields than allowed gets a 431 in the OpenAI
/// format, and one whose header list is over `max_header_bytes` is refused on its stream; the
/// connection keeps serving.
#[tokio::test]
async fn h2_streams_beyond_the_limit_are_refused() {
    let s = setup(
        "h2-streams",
        300,
        "[clients]\nh2_max_streams = 3\nmax_headers = 20\n",
    )
    .await;
    let tcp = connect_from(LOCAL_1, s.proxy.listen).await;
    let (mut h2, connection) = h2::client::Builder::new()
        // The client's own assumption until the server's SETTINGS arrive: so the five streams
        // are sent, not queued in the client.
        .initial_max_send_streams(100)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let chat = |h2: &mut h2::client::SendRequest<bytes::Bytes>| {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/v1/chat/completions", s.proxy.listen))
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        let (response, mut body) = h2.send_request(request, false).expect("send_request");
        body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true)
            .expect("send body");
        response
    };
    // All five before the connection task runs (and reads the proxy's SETTINGS).
    let responses: Vec<_> = (0..5).map(|_| chat(&mut h2)).collect();
    let driver = tokio::spawn(connection);
    let mut ok = 0;
    let mut refused = 0;
    for response in responses {
        match tokio::time::timeout(CAP, response)
            .await
            .expect("within the cap")
        {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (3, 2), "three served, two refused");

    // The same connection still serves, and holds header fields to `max_headers`.
    let mut h2 = h2.ready().await.expect("ready");
    let mut request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/v1/models", s.proxy.listen));
    for i in 0..30 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let (response, _) = h2
        .send_request(request.body(()).expect("request"), true)
        .expect("send");
    let response = tokio::time::timeout(CAP, response)
        .await
        .expect("within the cap")
        .expect("a response");
    assert_eq!(response.status(), 431);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(CAP, body.data())
        .await
        .expect("body within the cap")
    {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let json: Value = serde_json::from_slice(&bytes).expect("JSON body");
    assert_eq!(json["error"]["code"], "too_many_headers", "{json}");

    // A header list over 32 KiB (h2's SETTINGS_MAX_HEADER_LIST_SIZE): refused on its stream.
    let mut h2 = h2.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/v1/models", s.proxy.listen))
        .header("x-big", "a".repeat(40 * 1024))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(request, true).expect("send");
    match tokio::time::timeout(CAP, response)
        .await
        .expect("within the cap")
    {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(
            e.reason().is_some(),
            "a stream reset, not a broken connection: {e}"
        ),
    }

    // And a normal request still completes on it.
    let mut h2 = h2.ready().await.expect("ready");
    let (response, mut body) = {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/v1/chat/completions", s.proxy.listen))
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        h2.send_request(request, false).expect("send")
    };
    body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true)
        .expect("send body");
    let response = tokio::time::timeout(CAP, response)
        .await
        .expect("within the cap")
        .expect("a response");
    assert_eq!(response.status(), 200);
    drop(h2);
    driver.abort();
    assert_eq!(
        metric(&s, "client_faults_total{reason=\"too_many_headers\"}").await,
        1
    );
    assert_eq!(chat_status(&s).await, 200);
}

// --- The operator API (control plane) ---

const ADMIN_KEY: &str = "abuse-limits-key-0123456789";

/// A raw `GET /health` on `stream` (keep-alive); the status, or `None` if it was closed first.
async fn health_on(stream: &mut TcpStream) -> Option<u16> {
    get_on(stream, "/health").await
}

/// A raw `GET path` on `stream` (keep-alive); the status, or `None` if it was closed first.
async fn get_on(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    read_to_close_or_response(stream).await
}

/// A connection from `from` that answers `GET path` with 200 (retried while a connection of
/// an earlier client, e.g. a start-up probe's, is still being closed).
async fn served_on(addr: SocketAddr, from: Ipv4Addr, path: &str) -> TcpStream {
    let deadline = Instant::now() + CAP;
    loop {
        let mut stream = connect_from(from, addr).await;
        if get_on(&mut stream, path).await == Some(200) {
            return stream;
        }
        assert!(Instant::now() < deadline, "{path} never served from {from}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection from `from` that the operator API serves.
async fn served_connection(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    served_on(addr, from, "/health").await
}

/// `multiverse_control_api_connections_shed_total{limit}`; `None` if `/metrics` could not be
/// read (its own connection shed).
async fn api_shed(client: &reqwest::Client, control: &Control, limit: &str) -> Option<u64> {
    let text = client
        .get(format!("{}/metrics", control.api_url()))
        .timeout(CAP)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("multiverse_control_api_connections_shed_total{{limit=\"{limit}\"}} ");
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Operator API headers: a 65 KiB header gets a 431 and the connection is closed; 200 header
/// fields get 431 `REQUEST_HEADER_TOO_LARGE` in `{error, code, timestamp}`; 90 are served.
#[tokio::test]
async fn operator_api_header_limits() {
    let dir = temp_dir("api-header-limits");
    let control = Control::start(
        &dir,
        "cp-header-limits",
        &format!("[admin]\napi_keys = [\"{ADMIN_KEY}\"]\n"),
    )
    .await;
    let big = "a".repeat(65 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let reply = exchange(control.api, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(431), "{:?}", reply.text());
    assert!(reply.closed, "the connection must be closed after the 431");

    let fields = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
        fields(200)
    );
    let reply = exchange(control.api, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(431), "{:?}", reply.text());
    let v = reply.json();
    assert_eq!(v["code"], "REQUEST_HEADER_TOO_LARGE", "{v}");
    assert!(v["error"].is_string() && v["timestamp"].is_string(), "{v}");

    let request = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
        fields(90)
    );
    let reply = exchange(control.api, request.as_bytes()).await;
    assert_eq!(reply.status(), Some(200), "{:?}", reply.text());
}

/// Operator API connections: `max_connections_per_ip = 2`, `max_connections = 3`. Two held
/// from 127.0.0.1, a third from it is closed at once; 127.0.0.2 is served (three in all), and
/// then 127.0.0.3 is closed at once (the total). The held ones keep working; a freed place is
/// taken again.
#[tokio::test]
async fn operator_api_connection_limits() {
    let dir = temp_dir("api-connection-limits");
    let control = Control::start(
        &dir,
        "cp-connection-limits",
        &format!(
            "[admin]\napi_keys = [\"{ADMIN_KEY}\"]\nmax_connections = 3\n\
             max_connections_per_ip = 2\n"
        ),
    )
    .await;
    let addr = control.api;
    let mut held = vec![
        served_connection(addr, LOCAL_1).await,
        served_connection(addr, LOCAL_1).await,
    ];
    let mut third = connect_from(LOCAL_1, addr).await;
    assert_eq!(health_on(&mut third).await, None, "a third from 127.0.0.1");
    held.push(served_connection(addr, LOCAL_2).await);
    let mut over_total = connect_from(LOCAL_3, addr).await;
    assert_eq!(health_on(&mut over_total).await, None, "a fourth in all");
    for stream in &mut held {
        assert_eq!(
            health_on(stream).await,
            Some(200),
            "a held connection works"
        );
    }
    drop(held);
    // The metrics request itself needs a place: the held ones are closed now.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + CAP;
    let (per_ip, total) = loop {
        let per_ip = api_shed(&client, &control, "max_connections_per_ip").await;
        let total = api_shed(&client, &control, "max_connections").await;
        if let (Some(per_ip), Some(total)) = (per_ip, total) {
            break (per_ip, total);
        }
        assert!(Instant::now() < deadline, "metrics never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(per_ip >= 1, "per-address sheds counted: {per_ip}");
    assert!(total >= 1, "total sheds counted: {total}");
    served_connection(addr, LOCAL_3).await;
}

// --- The proxy's admin listener ---

/// A raw `GET /healthz` on a proxy admin `stream` (keep-alive); the status, or `None` if it was
/// closed first.
async fn healthz_on(stream: &mut TcpStream) -> Option<u16> {
    get_on(stream, "/healthz").await
}

/// A connection from `from` that the proxy's admin listener serves.
async fn served_admin(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    served_on(addr, from, "/healthz").await
}

/// The proxy's admin listener has a budget of its own (`[admin] max_connections = 3`,
/// `max_connections_per_ip = 2`): two held from 127.0.0.1, a third from it is closed at once;
/// 127.0.0.2 is served, then 127.0.0.3 is closed at once (the total). The client listener
/// still serves 127.0.0.1 meanwhile, and the sheds are counted under the admin's labels, not
/// the client listener's.
#[tokio::test]
async fn proxy_admin_listener_has_its_own_connection_limits() {
    let s = setup(
        "admin-connections",
        0,
        "[admin]\nmax_connections = 3\nmax_connections_per_ip = 2\n\
         [clients]\nheader_timeout_ms = 30000\n",
    )
    .await;
    let addr = s.proxy.admin;
    let mut held = vec![
        served_admin(addr, LOCAL_1).await,
        served_admin(addr, LOCAL_1).await,
    ];
    let mut third = connect_from(LOCAL_1, addr).await;
    assert_eq!(healthz_on(&mut third).await, None, "a third from 127.0.0.1");
    held.push(served_admin(addr, LOCAL_2).await);
    let mut over_total = connect_from(LOCAL_3, addr).await;
    assert_eq!(healthz_on(&mut over_total).await, None, "a fourth in all");
    let mut chat = connect_from(LOCAL_1, s.proxy.listen).await;
    assert_eq!(
        chat_on(&mut chat).await,
        200,
        "the client listener's budget is its own"
    );
    for stream in &mut held {
        assert_eq!(healthz_on(stream).await, Some(200), "a held one works");
    }
    drop(held);
    // The metrics request needs an admin place: the held ones are closed now.
    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + CAP;
    let text = loop {
        let got = async { s.client.get(&url).timeout(CAP).send().await?.text().await };
        if let Ok(text) = got.await {
            break text;
        }
        assert!(Instant::now() < deadline, "admin /metrics never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let shed = |limit: &str| -> u64 {
        let prefix = format!("multiverse_proxy_connections_shed_total{{limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(shed("admin_max_connections_per_ip") >= 1, "{text}");
    assert!(shed("admin_max_connections") >= 1, "{text}");
    assert_eq!(shed("max_connections_per_ip"), 0, "not the clients' limit");
    assert_eq!(shed("max_connections"), 0, "not the clients' limit");
}
