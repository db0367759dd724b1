//! Backend events (`backend_*`) on `GET /events`, with the instance events: one seq, replay,
//! `?type=`, webhooks.

use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

use super::*;

/// Reads an SSE response event by event (`(event, id, data JSON)`).
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(url: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = reqwest::Client::new().get(url).bearer_auth(KEY);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect(url);
        assert_eq!(resp.status(), 200, "GET {url}");
        Sse {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event (its JSON, checked against the frame's `event:` and `id:`), or `None`
    /// when none arrives within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_string())
                };
                let Some(data) = field("data:") else { continue };
                let v: Value = serde_json::from_str(&data).expect("event JSON");
                assert_eq!(field("event:").as_deref(), v["type"].as_str(), "{block}");
                assert_eq!(
                    field("id:").and_then(|i| i.parse::<u64>().ok()),
                    v["seq"].as_u64(),
                    "{block}"
                );
                return Some(v);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c),
                _ => return None,
            }
        }
    }

    /// Events until one of type `until` (included), panicking after `timeout`.
    async fn until(&mut self, until: &str, timeout: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no `{until}` within {timeout:?}; got {got:?}"));
            let done = v["type"] == until;
            got.push(v);
            if done {
                return got;
            }
        }
    }
}

fn type_names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

/// A loopback webhook receiver: one POST per connection, answered 200; the bodies it got.
async fn webhook_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let body = serde_json::from_slice(&buf[end + 4..end + 4 + len])
                                .unwrap_or(Value::Null);
                            let _ = tx.send(body);
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn backend_events_share_the_instance_event_stream() {
    let dir = temp_dir("ui-backend-events");
    let (hook, mut hooked) = webhook_receiver().await;
    let mut flaky = MockOpenAi::start(&dir, "mock-ev", &["--model", "ev-model"]);
    let cp = Control::start(
        &dir,
        "cp-backend-events",
        &control_body(&format!(
            "[[webhooks]]\nurl = \"http://{hook}/hook\"\nevents = [\"backend_registered\", \"backend_unhealthy\", \"backend_deleted\"]\n"
        ))
        .replace("healthy_threshold = 1\n", "healthy_threshold = 1\nderegister_after_failures = 3\n"),
    )
    .await;
    let c = reqwest::Client::new();
    let api = cp.api_url();
    let mut all = Sse::open(&format!("{api}/events"), None).await;
    let mut only = Sse::open(
        &format!("{api}/events?type=backend_unhealthy,backend_deleted"),
        None,
    )
    .await;

    // Registered (its first check passed, healthy_threshold 1: healthy too), updated.
    let (status, body) = post_json(
        &c,
        &format!("{api}/admin/backends"),
        &json!({"name": "ev-1", "url": flaky.url()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let got = all.until("backend_healthy", Duration::from_secs(10)).await;
    assert_eq!(type_names(&got), ["backend_registered", "backend_healthy"]);
    for e in &got {
        assert_eq!(e["backend"], json!({"id": id, "name": "ev-1"}), "{e}");
        assert!(e.get("instance").is_none(), "{e}");
        assert!(e["at"].is_string(), "{e}");
    }
    let r = json_of(
        c.put(format!("{api}/admin/backends/{id}"))
            .bearer_auth(KEY)
            .json(&json!({"name": "ev-1", "url": flaky.url(), "owner": "team-a"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let got = all.until("backend_updated", Duration::from_secs(10)).await;
    assert_eq!(type_names(&got), ["backend_updated"]);

    // Its server dies: unhealthy (with the reason), then deregistered; restored; deleted.
    flaky.proc.kill();
    let got = all
        .until("backend_deregistered", Duration::from_secs(15))
        .await;
    assert_eq!(
        type_names(&got),
        ["backend_unhealthy", "backend_deregistered"]
    );
    assert!(
        got[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connection")),
        "{}",
        got[0]
    );
    let r = post_json(
        &c,
        &format!("{api}/admin/backends/{id}/restore"),
        &json!({}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let got = all.until("backend_restored", Duration::from_secs(10)).await;
    assert_eq!(type_names(&got), ["backend_restored"]);
    let r = c
        .delete(format!("{api}/admin/backends/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = all.until("backend_deleted", Duration::from_secs(10)).await;
    // The restored backend may fail a check before the delete: only those types in between.
    assert!(
        got.iter().all(|e| [
            "backend_unhealthy",
            "backend_deregistered",
            "backend_deleted"
        ]
        .contains(&e["type"].as_str().unwrap_or(""))),
        "{got:?}"
    );

    // ?type= filters backend types like instance ones.
    let filtered = only.until("backend_deleted", Duration::from_secs(5)).await;
    assert!(
        filtered
            .iter()
            .all(|e| e["type"] == "backend_unhealthy" || e["type"] == "backend_deleted"),
        "{filtered:?}"
    );
    assert_eq!(filtered[0]["type"], "backend_unhealthy");
    // An unknown type names the backend types among the valid ones.
    let r = get_json(&c, &format!("{api}/events?type=backend_exploded")).await;
    assert_code(&r, 400, "VALIDATION_ERROR", "unknown type");
    assert!(
        r.1["error"].as_str().unwrap().contains("backend_healthy"),
        "{}",
        r.1
    );

    // Replay: since= and Last-Event-ID give the same later events, in seq order.
    let mut replay = Sse::open(&format!("{api}/events?since=2"), None).await;
    let mut resumed = Sse::open(&format!("{api}/events"), Some(2)).await;
    let a = replay
        .until("backend_deleted", Duration::from_secs(5))
        .await;
    let b = resumed
        .until("backend_deleted", Duration::from_secs(5))
        .await;
    assert_eq!(a, b);
    assert_eq!(a[0]["seq"], 3, "{a:?}");
    assert!(a
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));

    // The webhook got the types it asked for, in order.
    let mut hooks = Vec::new();
    while hooks.last().map(|h: &Value| h["type"].clone()) != Some(json!("backend_deleted")) {
        let h = tokio::time::timeout(Duration::from_secs(10), hooked.recv())
            .await
            .unwrap_or_else(|_| panic!("webhook deliveries so far: {hooks:?}"))
            .expect("receiver open");
        hooks.push(h);
    }
    assert_eq!(hooks[0]["type"], "backend_registered");
    assert_eq!(hooks[0]["backend"]["id"], id.as_str());
    assert_eq!(hooks[1]["type"], "backend_unhealthy");
    assert!(hooks.iter().all(
        |h| ["backend_registered", "backend_unhealthy", "backend_deleted"]
            .contains(&h["type"].as_str().unwrap_or(""))
    ));
}
