//! The client listener against hostile and unlucky clients (issue 10), through real proxy
//! processes and raw TCP sockets: requests shorter than the HTTP/2 preface, garbage, silent
//! connections, a header trickled byte by byte, idle keep-alive connections, malformed chunked
//! bodies, the log lines client mistakes cause, and `/ready` against the client port.
//!
//! Timeouts are configured short (header 500 ms, keep-alive 700 ms) so the waits stay short;
//! every wait is bounded by [`CAP`], so a connection the proxy never answers or closes fails
//! the test instead of hanging it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use multiverse_tests::raw_http::{read_response, read_to_close, Reply, CAP};
use multiverse_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `[clients]` with the short timeouts most tests use.
const SHORT_TIMEOUTS: &str = "[clients]\nheader_timeout_ms = 500\nkeepalive_timeout_ms = 700\n";

/// A standalone proxy routing `demo` (chat) to a mock-openai and `bge` (embedding) to a
/// mock-tei.
struct Setup {
    proxy: Proxy,
    _openai: MockOpenAi,
    _tei: MockTei,
    /// The mocks' addresses, which no error body may show.
    upstreams: Vec<SocketAddr>,
}

async fn setup(tag: &str, extra_toml: &str) -> Setup {
    let dir = temp_dir(tag);
    let openai = MockOpenAi::start(&dir, &format!("{tag}-openai"), &[]);
    let tei = MockTei::start(&dir, &format!("{tag}-tei"), &["--dims", "8"]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("openai-1", openai.addr, "healthy")],
    ) + &model_toml(
        "bge",
        "embedding",
        "",
        &[Ep::http("tei-1", tei.addr, "healthy")],
    );
    let proxy = Proxy::start_standalone(&dir, &format!("{tag}-proxy"), &routes, extra_toml).await;
    Setup {
        proxy,
        upstreams: vec![openai.addr, tei.addr],
        _openai: openai,
        _tei: tei,
    }
}

/// Connects, writes `request` (keeping the write side open, as a client waiting for its
/// answer does) and reads until the proxy closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_to_close(&mut stream, started).await
}

/// Asserts an error body shows nothing internal: no upstream or loopback address, no pingora
/// error chain.
fn assert_nothing_internal(what: &str, reply: &Reply, upstreams: &[SocketAddr]) {
    let text = reply.text();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    for leak in [
        "127.0.0.1",
        "peer",
        "context",
        "cause:",
        "Downstream",
        "scheme",
    ] {
        assert!(!body.contains(leak), "{what}: body shows `{leak}`: {body}");
    }
    for addr in upstreams {
        let port = addr.port().to_string();
        assert!(
            !body.contains(&port),
            "{what}: body shows port {port}: {body}"
        );
    }
}

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;

/// A chunked request whose first chunk size line is `size`.
fn bad_chunked(path: &str, extra_headers: &str, size: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}\
         Transfer-Encoding: chunked\r\n\r\n{size}\r\n{CHAT}\r\n0\r\n\r\n"
    )
    .into_bytes()
}

/// Bullet 1: requests shorter than the 24-byte HTTP/2 preface are answered at once (the
/// header timeout is the default 10 s, so an answer within the cap is not a timeout's doing).
#[tokio::test]
async fn requests_shorter_than_the_h2_preface_are_answered() {
    let s = setup("short", "").await;
    let addr = s.proxy.listen;

    let reply = exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status(), Some(404), "GET / HTTP/1.0: {reply:?}");
    assert_eq!(reply.json()["error"]["code"], "unknown_route", "{reply:?}");
    assert!(
        reply.closed,
        "HTTP/1.0 without keep-alive is closed after the answer"
    );
    assert!(reply.elapsed < Duration::from_secs(3), "{reply:?}");

    let reply = exchange(addr, b"GARBAGE\r\n\r\n").await;
    assert_eq!(reply.status(), Some(400), "garbage: {reply:?}");
    let v = reply.json();
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        reply.closed,
        "garbage: the connection is closed after the 400"
    );
    assert!(reply.elapsed < Duration::from_secs(3), "{reply:?}");

    // Longer HTTP/1.1 requests and h2c (prior knowledge) still share the port.
    let reply = exchange(
        addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
}

/// Bullet 1: a connection that sends nothing, or only part of the preface, is closed at the
/// header timeout; a preface split over two segments is still HTTP/2.
#[tokio::test]
async fn silent_connections_are_closed_at_the_header_timeout() {
    let s = setup("silent", SHORT_TIMEOUTS).await;
    let addr = s.proxy.listen;

    for (what, sent) in [
        ("nothing", &b""[..]),
        ("part of the preface", &b"PRI * HTTP/2.0\r\n"[..]),
        ("part of an HTTP/1.1 request line", &b"GET /v1/mod"[..]),
    ] {
        let reply = exchange(addr, sent).await;
        assert!(reply.closed, "{what}: still open after {CAP:?}");
        assert!(
            reply.elapsed >= Duration::from_millis(500),
            "{what}: closed before the header timeout: {reply:?}"
        );
        if sent.is_empty() || sent.starts_with(b"PRI") {
            assert!(
                reply.bytes.is_empty(),
                "{what}: nothing to answer: {reply:?}"
            );
        } else {
            assert_eq!(reply.status(), Some(408), "{what}: {reply:?}");
        }
    }

    // The admin listener has the same header deadline.
    let reply = exchange(s.proxy.admin, b"GET /rea").await;
    assert!(reply.closed, "admin: still open after {CAP:?}");
    assert!(
        reply.elapsed >= Duration::from_millis(500),
        "admin: closed before the header timeout: {reply:?}"
    );

    // The preface in two segments, then an empty SETTINGS frame: the proxy answers with
    // HTTP/2 frames (its SETTINGS), not an HTTP/1 error.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    // Not synchronisation: a pause so the two halves arrive as separate segments.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let mut frame = [0u8; 9];
    tokio::time::timeout(CAP, stream.read_exact(&mut frame))
        .await
        .expect("a frame within the cap")
        .expect("read");
    assert_eq!(
        frame[3], 0x4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
}

/// Bullet 2: a header trickled a byte every 100 ms (each read well within any per-read
/// timeout) is cut at the 500 ms header deadline with a 408, and the connection is closed.
#[tokio::test]
async fn a_trickled_header_is_cut_at_the_deadline() {
    let s = setup("trickle", SHORT_TIMEOUTS).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(s.proxy.listen).await.expect("connect");
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    let mut answered = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let closed = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break true,
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            },
            _ = ticker.tick() => {
                if started.elapsed() > CAP {
                    break false;
                }
                // The proxy may have closed its side already; the read reports that.
                let _ = stream.write_all(b"a").await;
            }
        }
    };
    let reply = Reply {
        bytes: answered,
        closed,
        elapsed: started.elapsed(),
    };
    assert!(
        reply.closed,
        "a trickled header kept its connection: {reply:?}"
    );
    assert_eq!(reply.status(), Some(408), "{reply:?}");
    let v = reply.json();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        reply.elapsed >= Duration::from_millis(500),
        "cut before the deadline: {reply:?}"
    );
}

/// Bullet 2: a kept-alive connection serves its next request if it comes in time, and is
/// closed once it has been idle for the keep-alive timeout (700 ms).
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let s = setup("idle", SHORT_TIMEOUTS).await;
    let mut stream = TcpStream::connect(s.proxy.listen).await.expect("connect");
    let request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    // Idle for less than the timeout (client behaviour, not synchronisation): still served,
    // and the idle time starts again after this response.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(request).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    let idle_from = Instant::now();
    let reply = read_to_close(&mut stream, idle_from).await;
    assert!(
        reply.closed,
        "an idle keep-alive connection stayed open: {reply:?}"
    );
    assert!(
        reply.bytes.is_empty(),
        "closed without a response: {reply:?}"
    );
    assert!(
        reply.elapsed >= Duration::from_millis(700),
        "closed before the keep-alive timeout: {reply:?}"
    );
}

/// Bullet 3: a bad, negative or overflowing chunk size is the client's fault: 400 in the
/// route family's format (whether the model comes from `x-model` or the body), naming the
/// problem and nothing internal.
#[tokio::test]
async fn malformed_chunked_bodies_are_400_in_the_family_format() {
    let s = setup("chunks", "").await;
    let addr = s.proxy.listen;
    for size in ["zz", "-5", "ffffffffffffffffffffffff"] {
        for (family, path, headers) in [
            ("openai, model in the body", "/v1/chat/completions", ""),
            (
                "openai, x-model",
                "/v1/chat/completions",
                "x-model: demo\r\n",
            ),
            ("tei, sole model", "/embed", ""),
            ("tei, x-model", "/embed", "x-model: bge\r\n"),
        ] {
            let what = format!("{family}, chunk size {size}");
            let reply = exchange(addr, &bad_chunked(path, headers, size)).await;
            assert_eq!(reply.status(), Some(400), "{what}: {reply:?}");
            let v = reply.json();
            let (code, message) = if path == "/embed" {
                (&v["error_type"], &v["error"])
            } else {
                assert_eq!(v["error"]["type"], "invalid_request_error", "{what}: {v}");
                (&v["error"]["code"], &v["error"]["message"])
            };
            assert_eq!(code, "invalid_body_encoding", "{what}: {v}");
            assert!(
                message.as_str().is_some_and(|m| m.contains("chunk")),
                "{what}: the message names the problem: {v}"
            );
            assert_nothing_internal(&what, &reply, &s.upstreams);
        }
    }
}

/// The proxy's log so far.
fn log_of(proxy: &Proxy) -> String {
    std::fs::read_to_string(&proxy.proc.log).unwrap_or_default()
}

/// `multiverse_proxy_client_faults_total{reason}` on `/metrics`.
async fn client_faults(client: &reqwest::Client, proxy: &Proxy, reason: &str) -> u64 {
    let series = format!("multiverse_proxy_client_faults_total{{reason=\"{reason}\"}} ");
    proxy.metric(client, &series).await as u64
}

/// Bullet 4: client mistakes (bad chunks, an oversize streamed body, a client gone mid-body,
/// garbage, a slow header on either listener) log no ERROR or WARN line, neither ours nor pingora's; the body
/// faults are logged at info and counted, and a flood of them is rate-limited in the log while
/// the metric counts every one.
#[tokio::test]
async fn client_faults_log_at_info_with_a_rate_limit() {
    let s = setup(
        "faults",
        &format!("{SHORT_TIMEOUTS}[limits]\nmax_body_bytes = 4096\n"),
    )
    .await;
    let addr = s.proxy.listen;
    let client = reqwest::Client::new();

    let reply = exchange(addr, &bad_chunked("/v1/chat/completions", "", "zz")).await;
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    let reply = exchange(
        addr,
        &bad_chunked("/v1/chat/completions", "x-model: demo\r\n", "-5"),
    )
    .await;
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    // A streamed body over the limit (routed by header, so read while proxying).
    let mut big = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-model: demo\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..6 {
        big.extend_from_slice(format!("3e8\r\n{}\r\n", " ".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let reply = exchange(addr, &big).await;
    assert_eq!(reply.status(), Some(413), "{reply:?}");
    // Gone mid-body.
    let mut gone = TcpStream::connect(addr).await.expect("connect");
    gone.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-model: demo\r\n\
          Content-Length: 1000\r\n\r\n{\"model\"",
    )
    .await
    .expect("write");
    drop(gone);
    // Garbage and a header that never ends are answered before any phase (debug only).
    assert_eq!(exchange(addr, b"GARBAGE\r\n\r\n").await.status(), Some(400));
    assert_eq!(
        exchange(addr, b"GET /v1/models HTTP/1.1\r\nHost:")
            .await
            .status(),
        Some(408)
    );
    // A late header on the admin listener (closed without a 408).
    assert!(exchange(s.proxy.admin, b"GET /rea").await.closed);

    eventually(CAP, "the body faults counted", || async {
        let malformed = client_faults(&client, &s.proxy, "malformed_body").await;
        let too_large = client_faults(&client, &s.proxy, "body_too_large").await;
        (malformed == 2 && too_large == 1).then_some(())
    })
    .await;
    let log = log_of(&s.proxy);
    let faults: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request failed by the client's doing"))
        .collect();
    assert!(
        faults
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("malformed_body"))
            && faults.iter().any(|l| l.contains("body_too_large")),
        "client faults are logged at info: {faults:#?}\n{log}"
    );

    // A flood: every request counted, at most 10 log lines a second.
    const FLOOD: u64 = 60;
    let flood_started = Instant::now();
    for _ in 0..FLOOD {
        let reply = exchange(addr, &bad_chunked("/v1/chat/completions", "", "zz")).await;
        assert_eq!(reply.status(), Some(400), "{reply:?}");
    }
    eventually(CAP, "the flood counted", || async {
        (client_faults(&client, &s.proxy, "malformed_body").await == 2 + FLOOD).then_some(())
    })
    .await;
    let seconds = flood_started.elapsed().as_secs() + 2;
    let log = log_of(&s.proxy);
    let lines = log
        .lines()
        .filter(|l| l.contains("request failed by the client's doing"))
        .count() as u64;
    assert!(
        lines <= 3 + 10 * seconds && lines < 3 + FLOOD,
        "{lines} client-fault lines for {} faults in {seconds} s",
        3 + FLOOD
    );

    for level in [" ERROR ", " WARN "] {
        let bad: Vec<&str> = log.lines().filter(|l| l.contains(level)).collect();
        assert!(bad.is_empty(), "client faults logged at{level}: {bad:#?}");
    }
}

/// A GET on a raw connection; `Some(status)` if answered.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let reply = read_to_close(&mut stream, Instant::now()).await;
    reply.status()
}

/// Bullet 5: right after the first 200 from `/ready`, the client port accepts every connect;
/// over several fresh proxy starts (the admin listener starts first).
#[tokio::test]
async fn ready_means_the_client_port_accepts() {
    let dir = temp_dir("ready");
    let mock = MockOpenAi::start(&dir, "ready-openai", &[]);
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        model_toml("demo", "chat", "", &[Ep::http("e1", mock.addr, "healthy")]),
    )
    .expect("write routes");
    const STARTS: usize = 16;
    const CONNECTS: usize = 20;
    for start in 0..STARTS {
        let clients: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = dir.join(format!("proxy-{start}.toml"));
        std::fs::write(
            &config,
            format!(
                "[listen]\nclients = \"{clients}\"\nadmin = \"{admin}\"\n[server]\nthreads = 2\n\
                 [standalone]\nroutes_file = \"{}\"\n",
                routes.display()
            ),
        )
        .expect("write config");
        let args = vec!["--config".to_string(), config.display().to_string()];
        let proxy = Proc::spawn(
            &format!("ready-proxy-{start}"),
            &bin("multiverse-proxy"),
            &args,
            &dir,
            false,
        );
        // Poll /ready back to back, to catch its very first 200.
        let deadline = Instant::now() + READY_TIMEOUT;
        while get_status(admin, "/ready").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "never ready:\n{}",
                proxy.tail_log()
            );
            tokio::task::yield_now().await;
        }
        let mut refused = 0;
        for _ in 0..CONNECTS {
            if TcpStream::connect(clients).await.is_err() {
                refused += 1;
            }
        }
        assert_eq!(
            refused, 0,
            "start {start}: {refused} of {CONNECTS} connects refused right after /ready said 200"
        );
    }
}

/// Bullet 5, deterministically: while another socket holds the client port (a previous
/// process still draining, say), pingora retries the bind every second and `/ready` must not
/// say 200; once the port is free and bound, it does, and the proxy serves every request.
#[tokio::test]
async fn ready_waits_for_a_client_port_still_in_use() {
    let dir = temp_dir("ready-held");
    let mock = MockOpenAi::start(&dir, "held-openai", &[]);
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        model_toml("demo", "chat", "", &[Ep::http("e1", mock.addr, "healthy")]),
    )
    .expect("write routes");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let clients = holder.local_addr().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nclients = \"{clients}\"\nadmin = \"{admin}\"\n[server]\nthreads = 2\n\
             [standalone]\nroutes_file = \"{}\"\n",
            routes.display()
        ),
    )
    .expect("write config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let proxy = Proc::spawn("held-proxy", &bin("multiverse-proxy"), &args, &dir, false);
    let client = reqwest::Client::new();
    wait_ok(
        &client,
        &format!("http://{admin}/healthz"),
        READY_TIMEOUT,
        &proxy,
    )
    .await;
    let ready = client
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(
        ready.status(),
        503,
        "ready while the client port is not bound: {:?}",
        ready.text().await
    );
    drop(holder);
    wait_ok(
        &client,
        &format!("http://{admin}/ready"),
        READY_TIMEOUT,
        &proxy,
    )
    .await;
    for i in 0..10 {
        assert_eq!(
            get_status(clients, "/v1/models").await,
            Some(200),
            "request {i} right after /ready said 200"
        );
    }
}

/// A proxy that cannot bind its client port exits with an error naming the key, instead of
/// serving its admin port without ever accepting clients. (192.0.2.1 is TEST-NET-1, on no
/// interface here, so the bind fails at once; a port in use fails the same way after
/// pingora's 30 s of retries.)
#[tokio::test]
async fn an_unbindable_client_port_ends_the_proxy() {
    let dir = temp_dir("unbindable");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, "").expect("write routes");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nclients = \"192.0.2.1:{}\"\nadmin = \"{admin}\"\n[server]\nthreads = 1\n\
             [standalone]\nroutes_file = \"{}\"\n",
            free_port(),
            routes.display()
        ),
    )
    .expect("write config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut proxy = Proc::spawn(
        "unbindable-proxy",
        &bin("multiverse-proxy"),
        &args,
        &dir,
        false,
    );
    let code = proxy.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2), "exit code; log:\n{}", proxy.tail_log());
    assert!(
        proxy.tail_log().contains("listen.clients"),
        "the error names the key:\n{}",
        proxy.tail_log()
    );
}
