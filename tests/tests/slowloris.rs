//! Slowloris against the proxy's client listener, through a real process: 200 connections that
//! trickle a request header one byte at a time while a normal client keeps sending requests.
//! The normal requests must all be served, none waiting anywhere near the header timeout (no
//! worker is held by a slow client), and every slow connection must be answered 408 or closed
//! once the header timeout has passed. The measured figures are printed (`--nocapture`) and
//! quoted in README's Security section.

use std::time::{Duration, Instant};

use multiverse_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW: usize = 200;
/// The proxy's header timeout in this test.
const HEADER_TIMEOUT: Duration = Duration::from_millis(3000);
/// A normal request waiting this long (2/3 of the header timeout) would mean a slow client held
/// it up: the header timeout is the only thing that frees a worker from a slow client, so a
/// request that had to wait for one would take about that long.
const PROMPT: Duration = Duration::from_millis(2000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_headers_do_not_hold_up_normal_requests() {
    let dir = temp_dir("slowloris");
    let openai = MockOpenAi::start(&dir, "slowloris-openai", &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("openai-1", openai.addr, "healthy")],
    );
    let extra = format!(
        "[clients]\nheader_timeout_ms = {}\nkeepalive_timeout_ms = 5000\n",
        HEADER_TIMEOUT.as_millis()
    );
    let proxy = Proxy::start_standalone(&dir, "slowloris-proxy", &routes, &extra).await;
    let addr = proxy.listen;

    // The slow clients: a header sent one byte every 100 ms, never finished in time.
    let started = Instant::now();
    let (connected, mut all_connected) = tokio::sync::mpsc::channel::<()>(SLOW);
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let connected = connected.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let header = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let opened = Instant::now();
            for (i, b) in header.iter().enumerate() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                if i == 0 {
                    let _ = connected.send(()).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if opened.elapsed() > HEADER_TIMEOUT * 4 {
                    break;
                }
            }
            // What the proxy said before (or after) cutting the header off.
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
            (opened.elapsed(), String::from_utf8_lossy(&reply).into_owned())
        }));
    }
    // Every slow client is connected and has sent its first byte.
    drop(connected);
    for _ in 0..SLOW {
        all_connected.recv().await.expect("a slow client connected");
    }

    // A new connection per request: the accept path is under test too.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut latencies = Vec::new();
    while started.elapsed() < HEADER_TIMEOUT + Duration::from_millis(500) {
        let t = Instant::now();
        let r = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a normal request is answered");
        assert_eq!(r.status(), 200);
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().expect("some requests");
    eprintln!(
        "slowloris: {SLOW} slow connections; {} normal requests, p50 {p50:?}, max {max:?}",
        latencies.len()
    );
    assert!(max < PROMPT, "a normal request waited {max:?}");

    let mut cut = Vec::new();
    for s in slow {
        let (elapsed, reply) = s.await.expect("slow client");
        // Part of a header arrived: the answer is 408 (then the close), never a hang.
        assert!(
            reply.starts_with("HTTP/1.1 408"),
            "a slow header got: {reply:?}"
        );
        cut.push(elapsed);
    }
    cut.sort();
    let (first, last) = (cut[0], cut[cut.len() - 1]);
    eprintln!("slowloris: slow connections cut after {first:?} .. {last:?}");
    assert!(
        first >= HEADER_TIMEOUT - Duration::from_millis(100),
        "cut before the header timeout: {first:?}"
    );
    assert!(
        last < HEADER_TIMEOUT * 3,
        "a slow connection was held {last:?}"
    );
}
