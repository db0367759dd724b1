//! What the web UI needs from the server (issue 12, phase 2), through the real binaries: the
//! control plane's `GET /ui/config`, the proxy's CORS for the playground, "Test connection"
//! (`POST /admin/backends/test`), backend events on `/events`, `GET /stats` and the list
//! filters, each as an API user sees it, and each documented in `/openapi.json`.

use std::time::Duration;

use multiverse_tests::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const KEY: &str = "ui-api-admin-key";
/// The web UI's origin in these tests.
const UI: &str = "http://127.0.0.1:9000";

fn control_body(extra: &str) -> String {
    format!(
        "[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         [discovery]\ncoalesce_ms = 20\n{extra}\n"
    )
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    json_of(c.get(url).bearer_auth(KEY).send().await.expect(url)).await
}

async fn openapi(c: &reqwest::Client, api: &str) -> Value {
    let (status, doc) = get_json(c, &format!("{api}/openapi.json")).await;
    assert_eq!(status, 200);
    doc
}

/// `method path` is in `/openapi.json` with a tag Swagger groups it by.
fn assert_documented(doc: &Value, path: &str, method: &str) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "openapi.json documents {method} {path}");
    let tag = op["tags"][0].as_str().unwrap_or_default();
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        tags.contains(&tag),
        "{method} {path} has a declared tag: {tag:?} in {tags:?}"
    );
}

#[tokio::test]
async fn ui_config_names_the_proxy_and_is_validated() {
    let dir = temp_dir("ui-config");
    let c = reqwest::Client::new();
    let cp = Control::start(
        &dir,
        "cp-ui-config",
        &control_body("[ui]\nproxy_url = \"https://gateway.example.com:8443\""),
    )
    .await;
    // Open: no key needed.
    let r = c
        .get(format!("{}/ui/config", cp.api_url()))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"proxy_url": "https://gateway.example.com:8443"})
    );
    let doc = openapi(&c, &cp.api_url()).await;
    assert_documented(&doc, "/ui/config", "get");
    // Every operation is tagged.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if method != "parameters" {
                assert!(op["tags"][0].is_string(), "{method} {path} is tagged");
            }
        }
    }

    // Unset: null.
    let plain = Control::start(&dir, "cp-ui-config-unset", &control_body("")).await;
    let (_, body) = get_json(&c, &format!("{}/ui/config", plain.api_url())).await;
    assert_eq!(body, json!({"proxy_url": null}));

    // Invalid: the control plane refuses to start, naming the key and the file.
    let bad = dir.join("bad-ui.toml");
    std::fs::write(&bad, "[ui]\nproxy_url = \"ftp://gateway\"\n").unwrap();
    let out = std::process::Command::new(bin("multiverse-control"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run multiverse-control");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad proxy_url");
    assert!(
        stderr.contains("ui.proxy_url") && stderr.contains("bad-ui.toml"),
        "{stderr}"
    );
}

fn cors_headers(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-") || k.as_str() == "vary")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    v.sort();
    v
}

fn assert_allowed(h: &HeaderMap, what: &str) {
    assert_eq!(
        h.get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(UI),
        "{what}: {:?}",
        cors_headers(h)
    );
    assert!(
        h.get_all("vary").iter().any(|v| v == "Origin"),
        "{what}: Vary: Origin in {:?}",
        cors_headers(h)
    );
    assert_eq!(
        h.get("access-control-expose-headers")
            .map(|v| v.to_str().unwrap()),
        Some("x-multiverse-endpoint"),
        "{what}"
    );
}

fn assert_no_cors(h: &HeaderMap, what: &str) {
    let cors = cors_headers(h);
    assert!(
        cors.iter().all(|(k, v)| k == "vary" && v != "Origin"),
        "{what}: no CORS header: {cors:?}"
    );
}

#[tokio::test]
async fn the_proxy_answers_cors_for_allowed_origins_only() {
    let dir = temp_dir("ui-cors");
    let chat = MockOpenAi::start(
        &dir,
        "mock-cors",
        &[
            "--model",
            "demo",
            "--tokens",
            "5",
            "--chunk-interval-ms",
            "5",
        ],
    );
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-cors", chat.addr, "healthy")],
    ) + &model_toml(
        "dead",
        "chat",
        "max_retries = 0",
        &[Ep::http("dead-1", try_free_addr().unwrap(), "unhealthy")],
    );
    let proxy = Proxy::start_standalone(
        &dir,
        "proxy-cors",
        &routes,
        &format!("[cors]\nallowed_origins = [\"http://127.0.0.1:1\", \"{UI}\"]"),
    )
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", proxy.url());
    let before = chat.stats(&c).await;

    // Preflight from the UI: answered by the proxy, never forwarded.
    let r = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", UI)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers().clone();
    assert_allowed(&h, "preflight");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allow = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow.contains("content-type") && allow.contains("authorization"),
        "{allow}"
    );
    assert_eq!(h["access-control-max-age"], "600");
    // From another origin: refused, no CORS header.
    let r = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_no_cors(r.headers(), "preflight from an unknown origin");
    let after = chat.stats(&c).await;
    assert_eq!(
        (before["connections"].clone(), before["requests"].clone()),
        (after["connections"].clone(), after["requests"].clone()),
        "preflights reached the backend: {before} -> {after}"
    );

    // A streamed reply to the UI: tagged, endpoint exposed.
    let body =
        json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = c
        .post(&url)
        .header("origin", UI)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_allowed(r.headers(), "SSE");
    assert_eq!(r.headers()["x-multiverse-endpoint"], "mock-cors");
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // The proxy's own answers: /v1/models, an unknown model (404), no healthy endpoint (503).
    let r = c
        .get(format!("{}/v1/models", proxy.url()))
        .header("origin", UI)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(r.headers(), "/v1/models");
    for (model, status) in [("nope", 404), ("dead", 503)] {
        let r = c
            .post(&url)
            .header("origin", UI)
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{model}");
        assert_allowed(r.headers(), model);
        let (_, err) = json_of(r).await;
        assert!(err["error"]["code"].is_string(), "{err}");
    }
    // Unknown origins and requests without an origin: no CORS header, same answer.
    for origin in [
        Some("http://evil.example"),
        Some("http://127.0.0.1:90000"),
        None,
    ] {
        let mut req = c.post(&url).json(&body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{origin:?}");
        assert_no_cors(r.headers(), &format!("{origin:?}"));
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }

    // Without [cors]: no CORS header, and a preflight is not answered as one.
    let plain = Proxy::start_standalone(&dir, "proxy-no-cors", &routes, "").await;
    let r = c
        .post(format!("{}/v1/chat/completions", plain.url()))
        .header("origin", UI)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_no_cors(r.headers(), "no [cors]");
    let r = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", plain.url()),
        )
        .header("origin", UI)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 204);
    assert_no_cors(r.headers(), "preflight without [cors]");

    // An invalid origin: the proxy refuses to start, naming the key and the file.
    let bad = dir.join("bad-cors.toml");
    std::fs::write(&bad, "[cors]\nallowed_origins = [\"http://ui.example/\"]\n").unwrap();
    let out = std::process::Command::new(bin("multiverse-proxy"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run multiverse-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad origin");
    assert!(
        stderr.contains("cors.allowed_origins[0]") && stderr.contains("bad-cors.toml"),
        "{stderr}"
    );
    let _ = Duration::ZERO;
}

async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    json_of(
        c.post(url)
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect(url),
    )
    .await
}

fn assert_code(reply: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(reply.0, status, "{what}: {}", reply.1);
    assert_eq!(reply.1["code"], code, "{what}: {}", reply.1);
    assert!(reply.1["timestamp"].is_string(), "{what}: {}", reply.1);
}

/// The models of the snapshot being pushed.
async fn snapshot_models(c: &reqwest::Client, api: &str) -> Vec<String> {
    let (_, snap) = get_json(c, &format!("{api}/snapshot")).await;
    snap["models"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn test_connection_checks_like_registration_and_stores_nothing() {
    let dir = temp_dir("ui-test-conn");
    let tested = MockOpenAi::start(
        &dir,
        "mock-tested",
        &["--model", "tested-a", "--model", "tested-b"],
    );
    let keyed = MockOpenAi::start(
        &dir,
        "mock-keyed",
        &["--model", "keyed", "--api-key", "sk-upstream-1"],
    );
    let real = MockOpenAi::start(&dir, "mock-real", &["--model", "real"]);
    let cp = Control::start(&dir, "cp-test-conn", &control_body("")).await;
    let c = reqwest::Client::new();
    let api = cp.api_url();
    let url = format!("{api}/admin/backends/test");
    assert_documented(&openapi(&c, &api).await, "/admin/backends/test", "post");

    // Discovered models, latency and the backend's status.
    let (status, body) = post_json(&c, &url, &json!({"name": "t-1", "url": tested.url()})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["status"], 200);
    assert_eq!(body["models"], json!(["tested-a", "tested-b"]));
    assert!(body["latency_ms"].is_u64(), "{body}");
    // Named models are kept; the upstream key is sent.
    let (status, body) = post_json(
        &c,
        &url,
        &json!({"name": "t-2", "url": keyed.url(), "api_key": "sk-upstream-1", "models": ["alias"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"], json!(["alias"]));
    // Registration's errors, with its codes.
    let r = post_json(&c, &url, &json!({"name": "t-3", "url": keyed.url()})).await;
    assert_code(&r, 503, "BACKEND_UNAVAILABLE", "wrong upstream key");
    assert!(r.1["error"].as_str().unwrap().contains("401"), "{}", r.1);
    let dead = format!("http://{}", try_free_addr().unwrap());
    let r = post_json(&c, &url, &json!({"name": "t-4", "url": dead})).await;
    assert_code(&r, 503, "BACKEND_UNAVAILABLE", "nothing listening");
    let r = post_json(&c, &url, &json!({"name": "bad name!", "url": tested.url()})).await;
    assert_code(&r, 400, "VALIDATION_ERROR", "bad name");
    assert!(
        r.1["error"].as_str().unwrap().starts_with("`name`"),
        "{}",
        r.1
    );
    let r = post_json(&c, &url, &json!({"name": "t-5", "url": "ftp://x"})).await;
    assert_code(&r, 400, "INVALID_URL", "bad scheme");
    let r = post_json(
        &c,
        &url,
        &json!({"name": "t-6", "url": tested.url(), "weight": 0}),
    )
    .await;
    assert_code(&r, 400, "VALIDATION_ERROR", "weight 0");
    let r = post_json(
        &c,
        &url,
        &json!({"name": "t-7", "url": tested.url(), "colour": "red"}),
    )
    .await;
    assert_code(&r, 400, "VALIDATION_ERROR", "unknown field");
    let r = json_of(
        c.post(&url)
            .json(&json!({"name": "t", "url": tested.url()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_code(&r, 401, "UNAUTHORIZED", "no key");

    // Nothing was stored: a real registration afterwards is the only backend, and once its
    // snapshot is out, no tested model is in it.
    let (status, body) = post_json(
        &c,
        &format!("{api}/admin/backends"),
        &json!({"name": "real", "url": real.url()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let models = eventually(
        Duration::from_secs(10),
        "the registration's snapshot",
        || async {
            let m = snapshot_models(&c, &api).await;
            m.contains(&"real".to_string()).then_some(m)
        },
    )
    .await;
    assert_eq!(models, ["real"], "tested backends reached the snapshot");
    let (_, list) = get_json(&c, &format!("{api}/admin/backends")).await;
    let names: Vec<_> = list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(names, [json!("real")]);

    // The SSRF rules apply: without allow_private_backends, loopback is refused.
    let strict = Control::start(
        &dir,
        "cp-test-strict",
        &control_body("").replace(
            "allow_private_backends = true",
            "allow_private_backends = false",
        ),
    )
    .await;
    let r = post_json(
        &c,
        &format!("{}/admin/backends/test", strict.api_url()),
        &json!({"name": "t-8", "url": tested.url()}),
    )
    .await;
    assert_code(&r, 400, "PRIVATE_ADDRESS_NOT_ALLOWED", "loopback");
}

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

/// 8 free ports in 31000-31999 for instances.
fn instance_ports() -> (u16, u16) {
    let first = (std::process::id() % 125) as u16;
    (0..125)
        .map(|i| 31000 + ((first + i) % 125) * 8)
        .find(|lo| (*lo..*lo + 8).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .map(|lo| (lo, lo + 7))
        .expect("8 free ports in 31000-31999")
}

#[tokio::test]
async fn stats_counts_what_the_dashboard_shows() {
    let dir = temp_dir("ui-stats");
    let up = MockOpenAi::start(&dir, "mock-up", &["--model", "m-up", "--model", "m-shared"]);
    let mut down = MockOpenAi::start(&dir, "mock-down", &["--model", "m-down"]);
    let ports = instance_ports();
    let cp = Control::start(
        &dir,
        "cp-stats",
        &control_body(&format!(
            "[instances]\nbinary = \"{}\"\nport_range = [{}, {}]\nstartup_probe_interval_ms = 100\n\
             liveness_interval_ms = 500\nprobe_timeout_ms = 1000\ndrain_ms = 50\nstop_grace_ms = 1000\n\
             [[backends]]\nname = \"cfg-up\"\nurl = \"{}\"\nmodels = [\"m-up\", \"m-shared\"]\n",
            bin("mock-tei").display(),
            ports.0,
            ports.1,
            up.url()
        )),
    )
    .await;
    let c = reqwest::Client::new();
    let api = cp.api_url();
    assert_documented(&openapi(&c, &api).await, "/stats", "get");
    let (status, body) = post_json(
        &c,
        &format!("{api}/admin/backends"),
        &json!({"name": "down", "url": down.url()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_json(
        &c,
        &format!("{api}/instances"),
        &json!({"name": "emb-s", "model_id": "BAAI/bge-small-en-v1.5", "pooling": "cls"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    down.proc.kill();
    let proxy = Proxy::start(&dir, "proxy-stats", &[cp.discovery_url()]).await;

    // Open: no key. Converges to: cfg-up healthy, down unhealthy, emb-s ready, one proxy on
    // the current version; models m-up, m-shared, m-down, the instance's; endpoints 2+1+1.
    let want = json!({
        "backends": {"total": 2, "healthy": 1, "unhealthy": 1, "unknown": 0, "deregistered": 0},
        "instances": {"total": 1, "by_status": {"ready": 1}},
        "models": 4,
        "endpoints": {"total": 4, "healthy": 3},
        "proxies": {"connected": 1, "acked_current": 1},
    });
    let stats = eventually(Duration::from_secs(30), "the stats to converge", || async {
        let r = c.get(format!("{api}/stats")).send().await.ok()?;
        let mut v: Value = r.json().await.ok()?;
        let version = v["proxies"].as_object_mut()?.remove("current_version")?;
        (v == want).then_some(version)
    })
    .await;
    let (_, snap) = get_json(&c, &format!("{api}/snapshot")).await;
    assert_eq!(stats, snap["version"], "current_version is the snapshot's");
    drop(proxy);
}

/// Waits until the wall clock is in a later second than now (RFC 3339 timestamps are to the
/// second).
async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    tokio::time::sleep(Duration::from_millis(1010 - u64::from(now.subsec_millis()))).await;
}

fn names_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {list}"))
        .iter()
        .map(|b| b["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn lists_filter_and_sort_on_the_server() {
    let dir = temp_dir("ui-lists");
    let a = MockOpenAi::start(&dir, "mock-la", &["--model", "chat-a", "--model", "shared"]);
    let b = MockOpenAi::start(&dir, "mock-lb", &["--model", "chat-b", "--model", "shared"]);
    let mut cm = MockOpenAi::start(&dir, "mock-lc", &["--model", "chat-c"]);
    let ports = instance_ports();
    let cp = Control::start(
        &dir,
        "cp-lists",
        &control_body(&format!(
            "[instances]\nbinary = \"{}\"\nport_range = [{}, {}]\nstartup_probe_interval_ms = 100\n\
             liveness_interval_ms = 500\nprobe_timeout_ms = 1000\ndrain_ms = 50\nstop_grace_ms = 1000\n",
            bin("mock-tei").display(),
            ports.0,
            ports.1
        )),
    )
    .await;
    let c = reqwest::Client::new();
    let api = cp.api_url();
    // Registered in the order zeta, (next second) alpha, mid: creation order differs from
    // names (timestamps are to the second; ties sort by name).
    for (name, url, owner, team) in [
        ("zeta", cm.url(), "bob", "ml"),
        ("alpha", a.url(), "ann", "search"),
        ("mid", b.url(), "bob", "search"),
    ] {
        let (status, body) = post_json(
            &c,
            &format!("{api}/admin/backends"),
            &json!({"name": name, "url": url, "owner": owner, "tags": {"team": team}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        if name == "zeta" {
            next_second().await;
        }
    }
    for (name, gpu) in [("emb-b", 1), ("emb-a", 0)] {
        if name == "emb-a" {
            next_second().await;
        }
        let (status, body) = post_json(
            &c,
            &format!("{api}/instances"),
            &json!({"name": name, "model_id": format!("org/model-{name}"), "gpu_id": gpu}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    cm.proc.kill();
    eventually(Duration::from_secs(15), "zeta unhealthy", || async {
        let (_, v) = get_json(&c, &format!("{api}/admin/backends?health=unhealthy")).await;
        (names_of(&v, "backends") == ["zeta"]).then_some(())
    })
    .await;

    let list = |q: &'static str| {
        let c = c.clone();
        let api = api.clone();
        async move {
            let (status, v) = get_json(&c, &format!("{api}/admin/backends{q}")).await;
            assert_eq!(status, 200, "{q}: {v}");
            names_of(&v, "backends").join(",")
        }
    };
    assert_eq!(list("").await, "alpha,mid,zeta");
    assert_eq!(list("?model=shared").await, "alpha,mid");
    assert_eq!(list("?model=chat-c").await, "zeta");
    assert_eq!(list("?health=healthy").await, "alpha,mid");
    assert_eq!(list("?owner=bob").await, "mid,zeta");
    assert_eq!(list("?tag=team:search&owner=bob").await, "mid");
    assert_eq!(list("?tag=team").await, "alpha,mid,zeta");
    assert_eq!(list("?deregistered=true").await, "");
    assert_eq!(list("?sort=name&order=desc").await, "zeta,mid,alpha");
    assert_eq!(list("?sort=created").await, "zeta,alpha,mid");
    assert_eq!(list("?sort=created&order=desc").await, "mid,alpha,zeta");
    assert_eq!(list("?sort=status").await, "alpha,mid,zeta");
    assert_eq!(list("?sort=status&order=desc").await, "zeta,mid,alpha");
    let last_check = list("?sort=last_check").await;
    assert_eq!(last_check.split(',').count(), 3, "{last_check}");

    let instances = |q: &'static str| {
        let c = c.clone();
        let api = api.clone();
        async move {
            let (status, v) = get_json(&c, &format!("{api}/instances{q}")).await;
            assert_eq!(status, 200, "{q}: {v}");
            names_of(&v, "instances").join(",")
        }
    };
    assert_eq!(instances("").await, "emb-a,emb-b");
    assert_eq!(instances("?sort=name&order=desc").await, "emb-b,emb-a");
    assert_eq!(instances("?sort=created").await, "emb-b,emb-a");
    assert_eq!(instances("?gpu=1").await, "emb-b");
    assert_eq!(instances("?model=org/model-emb-a").await, "emb-a");
    assert_eq!(instances("?status=failed").await, "");

    // Unknown parameters and values: 400 VALIDATION_ERROR naming them.
    for (path, named) in [
        ("/admin/backends?colour=red", "colour"),
        ("/admin/backends?health=green", "health"),
        ("/admin/backends?sort=size", "sort"),
        ("/admin/backends?order=up", "order"),
        ("/admin/backends?deregistered=maybe", "deregistered"),
        ("/instances?status=sleeping", "status"),
        ("/instances?sort=gpu", "sort"),
        ("/instances?gpu=first", "gpu"),
        ("/instances?colour=red", "colour"),
    ] {
        let r = get_json(&c, &format!("{api}{path}")).await;
        assert_code(&r, 400, "VALIDATION_ERROR", path);
        assert!(
            r.1["error"]
                .as_str()
                .unwrap()
                .contains(&format!("`{named}`")),
            "{path}: {}",
            r.1
        );
    }
}
