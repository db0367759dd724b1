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
