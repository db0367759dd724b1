//! The control plane as operators and proxies see it (issue 4): the backend registry and its
//! operator API (auth, validation, SSRF refusal, initial check, update, deregister), active
//! health checking that withdraws and restores endpoints, durable state across restarts (and a
//! corrupt state file refused, not overwritten), and route discovery to several proxies and
//! from several control planes — all as real processes on loopback.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use multiverse_tests::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin key of every control plane here (distinctive, so a leak into logs is visible).
const KEY: &str = "adm-key-5c1e9a7f3b";
/// Health checks every 200 ms: 2 failures → unhealthy, 2 successes → healthy.
const INTERVAL: Duration = Duration::from_millis(200);
/// How long the proxies get to reflect a change of the control plane.
const CONVERGE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A control-plane config body (top-level keys first, then tables; never `[listen]`).
fn control_body(
    data_dir: &Path,
    allow_private: bool,
    extra_admin: &str,
    extra_health: &str,
) -> String {
    std::fs::create_dir_all(data_dir).expect("create data dir");
    format!(
        "data_dir = \"{}\"\n\
         [admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = {allow_private}\n{extra_admin}\n\
         [health]\ninterval_ms = {}\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 2\n{extra_health}\n\
         [discovery]\ncoalesce_ms = 20\n",
        data_dir.display(),
        INTERVAL.as_millis(),
    )
}

/// One answer of the operator API.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    text: String,
}

/// A client of one control plane's operator API; remembers every response body so a test can
/// check that a secret never appeared in any of them.
struct Api {
    client: reqwest::Client,
    base: String,
    seen: Mutex<Vec<String>>,
}

impl Api {
    fn new(control: &Control) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: control.api_url(),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Sends `method path` with `auth` (header name, value) and an optional JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        self.seen.lock().expect("lock").push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    async fn keyed(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let bearer = format!("Bearer {KEY}");
        self.send(method, path, Some(("authorization", &bearer)), body)
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.keyed(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.keyed(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        self.keyed(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.keyed(Method::DELETE, path, None).await
    }

    /// Registers and expects 201; returns the Backend JSON.
    async fn register(&self, body: &Value) -> Value {
        let r = self.post("/admin/backends", body).await;
        assert_eq!(r.status, 201, "register {body}: {}", r.text);
        r.body
    }

    async fn backend(&self, id: &str) -> Value {
        let r = self.get(&format!("/admin/backends/{id}")).await;
        assert_eq!(r.status, 200, "GET backend {id}: {}", r.text);
        r.body
    }

    async fn backends(&self) -> Vec<Value> {
        let r = self.get("/admin/backends").await;
        assert_eq!(r.status, 200, "GET /admin/backends: {}", r.text);
        r.body["backends"]
            .as_array()
            .unwrap_or_else(|| panic!("`backends` is an array: {}", r.text))
            .clone()
    }

    /// `GET /proxies` (no key).
    async fn proxies(&self) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/proxies", self.base))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    fn all_seen(&self) -> String {
        self.seen.lock().expect("lock").join("\n")
    }
}

/// `{ name, url, models? }` registration body.
fn backend_body(name: &str, url: &str, models: Option<&[&str]>) -> Value {
    let mut b = json!({"name": name, "url": url});
    if let Some(m) = models {
        b["models"] = json!(m);
    }
    b
}

/// Whether `s` looks like an RFC 3339 timestamp (`2024-01-02T03:04:05[.f](Z|±hh:mm)`).
fn looks_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || {
            let tail = &b[b.len() - 6..];
            (tail[0] == b'+' || tail[0] == b'-') && tail[3] == b':'
        })
}

/// An operator-API error: status, `code`, a non-empty `error`, an RFC 3339 `timestamp`.
#[track_caller]
fn assert_api_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(r.body["code"], code, "{what}: {}", r.text);
    assert!(
        r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: `error` is a non-empty message: {}",
        r.text
    );
    assert!(
        r.body["timestamp"].as_str().is_some_and(looks_rfc3339),
        "{what}: `timestamp` is RFC 3339: {}",
        r.text
    );
}

/// The sorted model list of a Backend JSON.
fn models_of(b: &Value) -> Vec<String> {
    let mut m: Vec<String> = b["models"]
        .as_array()
        .unwrap_or_else(|| panic!("`models` is an array: {b}"))
        .iter()
        .map(|m| m.as_str().expect("model is a string").to_string())
        .collect();
    m.sort();
    m
}

/// One chat completion through a proxy.
struct Answer {
    status: u16,
    endpoint: Option<String>,
    instance: Option<String>,
    body: Value,
}

async fn chat(client: &reqwest::Client, proxy: &Proxy, model: &str) -> Option<Answer> {
    let resp = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .ok()?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let endpoint = header("x-multiverse-endpoint");
    let instance = header("x-mock-instance");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Some(Answer {
        status,
        endpoint,
        instance,
        body,
    })
}

/// Waits until `proxy` answers `model` with 200 from backend `endpoint`.
async fn wait_routes(client: &reqwest::Client, proxy: &Proxy, model: &str, endpoint: &str) {
    eventually(
        CONVERGE,
        &format!("{} to route {model} to {endpoint}", proxy.proc.name),
        || async {
            let a = chat(client, proxy, model).await?;
            (a.status == 200 && a.endpoint.as_deref() == Some(endpoint)).then_some(())
        },
    )
    .await;
}

/// Waits until `GET /proxies` lists each of `nodes` exactly once, connected, with
/// `acked_version == current_version`; returns the document.
async fn wait_converged(api: &Api, nodes: &[&str]) -> Value {
    let what = format!("{nodes:?} connected and ACKing current_version in GET /proxies");
    let mut last = Value::Null;
    let found = tokio::time::timeout(CONVERGE, async {
        loop {
            if let Some(v) = api.proxies().await {
                last = v.clone();
                let current = v["current_version"].as_str().unwrap_or_default();
                let list = v["proxies"].as_array().cloned().unwrap_or_default();
                let ok = !current.is_empty()
                    && nodes.iter().all(|n| {
                        let mine: Vec<&Value> =
                            list.iter().filter(|p| p["node_id"] == *n).collect();
                        mine.len() == 1
                            && mine[0]["connected"] == true
                            && mine[0]["acked_version"].as_str() == Some(current)
                    });
                if ok {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last GET /proxies: {last}"))
}

/// The proxy's `multiverse_proxy_control_plane_connected` gauge for `url`.
async fn plane_connected(client: &reqwest::Client, proxy: &Proxy, url: &str) -> Option<i64> {
    let text = client
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with("multiverse_proxy_control_plane_connected{"))
        .find(|l| l.contains(&format!("\"{url}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Starts mock-openai on a fixed address (so it can come back on the same port).
fn mock_on(dir: &Path, proc_name: &str, instance: &str, addr: SocketAddr) -> MockOpenAi {
    let args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--name".into(),
        instance.into(),
    ];
    let mut proc = Proc::spawn(proc_name, &bin("mock-openai"), &args, dir, true);
    let addr = proc.wait_listening();
    MockOpenAi {
        proc,
        addr,
        name: instance.to_string(),
    }
}

/// A loopback HTTP server answering every request with 200 and a body that is not JSON.
async fn not_json_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "this is <not> json";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// A loopback TCP server that accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("state.toml")
}

// ---------------------------------------------------------------------------------------------
// Route discovery: many proxies, restarts, several control planes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn three_proxies_follow_one_control_plane() {
    let dir = temp_dir("three-proxies");
    let data = dir.join("cp-data");
    let body = control_body(&data, true, "", "");
    let mock = MockOpenAi::start(&dir, "mock-demo", &[]);
    let mut control = Control::start(&dir, "cp-main", &body).await;
    let (api_addr, discovery_addr) = (control.api, control.discovery);
    let api = Api::new(&control);
    let urls = [control.discovery_url()];
    let client = reqwest::Client::new();
    let nodes = ["proxy-1", "proxy-2", "proxy-3"];
    let mut proxies = Vec::new();
    for n in nodes {
        proxies.push(Proxy::start(&dir, n, &urls).await);
    }

    // A backend registered through the API reaches all three proxies.
    let b = api
        .register(&backend_body("mock-demo", &mock.url(), Some(&["demo"])))
        .await;
    let id = b["id"].as_str().expect("id").to_string();
    for p in &proxies {
        wait_routes(&client, p, "demo", "mock-demo").await;
    }
    let v = wait_converged(&api, &nodes).await;
    assert_eq!(
        v["proxies"].as_array().map(Vec::len),
        Some(3),
        "three proxies listed: {v}"
    );
    let current = v["current_version"].as_str().expect("version").to_string();
    for p in v["proxies"].as_array().expect("proxies") {
        assert!(
            p["connected_since"].as_str().is_some_and(looks_rfc3339),
            "connected_since: {p}"
        );
        assert!(p["last_nack"].is_null(), "no NACK: {p}");
    }
    for p in &proxies {
        assert_eq!(
            p.version(&client).await,
            current,
            "{} runs the plane's version",
            p.proc.name
        );
    }

    // proxy-2 dies: the plane sees it disconnected; a new proxy-2 on new ports resyncs.
    proxies[1].proc.kill();
    eventually(CONVERGE, "proxy-2 shown disconnected", || async {
        let v = api.proxies().await?;
        let p2 = v["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["node_id"] == "proxy-2")?
            .clone();
        (p2["connected"] == false).then_some(())
    })
    .await;
    proxies[1] = Proxy::start(&dir, "proxy-2", &urls).await;
    wait_routes(&client, &proxies[1], "demo", "mock-demo").await;
    let v = wait_converged(&api, &nodes).await;
    assert_eq!(
        proxies[1].version(&client).await,
        v["current_version"].as_str().expect("version"),
        "the restarted proxy-2 runs the current version"
    );

    // The control plane dies: every proxy notices, and keeps routing by its last table.
    let versions_before: Vec<String> = {
        let mut vs = Vec::new();
        for p in &proxies {
            vs.push(p.version(&client).await);
        }
        vs
    };
    control.proc.kill();
    for p in &proxies {
        eventually(
            CONVERGE,
            &format!("{} to see the control plane gone", p.proc.name),
            || async { (plane_connected(&client, p, &urls[0]).await? == 0).then_some(()) },
        )
        .await;
    }
    for (p, before) in proxies.iter().zip(&versions_before) {
        for _ in 0..5 {
            let a = chat(&client, p, "demo").await.expect("proxy answers");
            assert_eq!(
                (a.status, a.endpoint.as_deref()),
                (200, Some("mock-demo")),
                "{} routes by its last table while the plane is down: {}",
                p.proc.name,
                a.body
            );
        }
        assert_eq!(
            &p.version(&client).await,
            before,
            "{} keeps its table",
            p.proc.name
        );
    }

    // It returns on the same addresses: the backend is restored from state, and the proxies
    // reconnect and converge.
    control = Control::start_on(&dir, "cp-main", &body, api_addr, discovery_addr).await;
    let api = Api::new(&control);
    let restored = api.backends().await;
    assert!(
        restored
            .iter()
            .any(|b| b["id"] == id.as_str() && b["name"] == "mock-demo"),
        "backend {id} restored from state: {restored:?}"
    );
    let v = wait_converged(&api, &nodes).await;
    let current = v["current_version"].as_str().expect("version").to_string();
    for p in &proxies {
        eventually(
            CONVERGE,
            &format!("{} to run version {current}", p.proc.name),
            || async { (p.version(&client).await == current).then_some(()) },
        )
        .await;
        assert_eq!(plane_connected(&client, p, &urls[0]).await, Some(1));
        wait_routes(&client, p, "demo", "mock-demo").await;
    }
}

#[tokio::test]
async fn proxy_merges_two_control_planes() {
    let dir = temp_dir("two-planes");
    let mock_a = MockOpenAi::start(&dir, "mock-a", &[]);
    let mock_b = MockOpenAi::start(&dir, "mock-b", &[]);
    let cp_a = Control::start(
        &dir,
        "cp-a",
        &control_body(&dir.join("data-a"), true, "", ""),
    )
    .await;
    let cp_b = Control::start(
        &dir,
        "cp-b",
        &control_body(&dir.join("data-b"), true, "", ""),
    )
    .await;
    let (api_a, api_b) = (Api::new(&cp_a), Api::new(&cp_b));
    let proxy = Proxy::start(
        &dir,
        "proxy-merge",
        &[cp_a.discovery_url(), cp_b.discovery_url()],
    )
    .await;
    let client = reqwest::Client::new();

    api_a
        .register(&backend_body("mock-a", &mock_a.url(), Some(&["demo"])))
        .await;
    api_b
        .register(&backend_body("mock-b", &mock_b.url(), Some(&["demo"])))
        .await;
    wait_converged(&api_a, &["proxy-merge"]).await;
    wait_converged(&api_b, &["proxy-merge"]).await;
    // The proxy's model list has both planes' endpoints for demo.
    eventually(
        CONVERGE,
        "demo with 2 endpoints in the proxy's /v1/models",
        || async {
            let v: Value = client
                .get(format!("{}/v1/models", proxy.url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let demo = v["data"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == "demo")?
                .clone();
            (demo["multiverse"]["endpoints"] == 2).then_some(())
        },
    )
    .await;

    let mut served = HashSet::new();
    for _ in 0..20 {
        let a = chat(&client, &proxy, "demo").await.expect("proxy answers");
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.endpoint, a.instance, "the endpoint header names the mock");
        served.insert(a.endpoint.expect("x-multiverse-endpoint"));
    }
    let expected: HashSet<String> = ["mock-a".to_string(), "mock-b".to_string()].into();
    assert_eq!(served, expected, "demo is served by both planes' backends");

    // One plane goes away: by default its endpoints are kept (no grace period configured), so
    // both backends keep serving.
    let mut cp_b = cp_b;
    let url_b = cp_b.discovery_url();
    cp_b.proc.kill();
    eventually(CONVERGE, "the proxy to see cp-b gone", || async {
        (plane_connected(&client, &proxy, &url_b).await? == 0).then_some(())
    })
    .await;
    let mut served = HashSet::new();
    for _ in 0..20 {
        let a = chat(&client, &proxy, "demo").await.expect("proxy answers");
        assert_eq!(a.status, 200, "{}", a.body);
        served.insert(a.endpoint.expect("x-multiverse-endpoint"));
    }
    assert_eq!(
        served, expected,
        "cp-b's endpoint is kept while cp-b is unreachable (default: no withdrawal)"
    );
}

// ---------------------------------------------------------------------------------------------
// The backend registry and the operator API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn registration_lifecycle() {
    let dir = temp_dir("registration");
    let secret = "sk-upstream-secret-7d3a91";
    // The main mock requires the upstream key, so the initial check and the proxies must send it.
    let main = MockOpenAi::start(
        &dir,
        "mock-main",
        &["--model", "demo", "--model", "other", "--api-key", secret],
    );
    let second = MockOpenAi::start(
        &dir,
        "mock-second",
        &["--model", "demo", "--model", "other"],
    );
    let control = Control::start(
        &dir,
        "cp-reg",
        &control_body(&dir.join("data"), true, "", ""),
    )
    .await;
    let api = Api::new(&control);
    let proxy = Proxy::start(&dir, "proxy-reg", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();

    // Public routes need no key.
    for path in ["/health", "/proxies", "/metrics", "/openapi.json"] {
        let r = api.send(Method::GET, path, None, None).await;
        assert_eq!(r.status, 200, "GET {path} without a key: {}", r.text);
    }
    let metrics = api.send(Method::GET, "/metrics", None, None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("multiverse_control_")),
        "Prometheus metrics named multiverse_control_*: {metrics}"
    );
    let openapi = api
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "an OpenAPI 3 document: {openapi}"
    );
    // Paths by their shape: `{backend_id}` and `{id}` name the same route.
    let shape = |p: &str| {
        p.split('/')
            .map(|s| if s.starts_with('{') { "{id}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let documented: BTreeMap<String, Value> = openapi["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("`paths` is an object: {openapi}"))
        .iter()
        .map(|(k, v)| (shape(k), v.clone()))
        .collect();
    for (path, methods) in [
        ("/admin/backends", &["get", "post"][..]),
        ("/admin/backends/{id}", &["get", "put", "delete"][..]),
        ("/admin/backends/{id}/check", &["post"][..]),
        ("/admin/backends/{id}/restore", &["post"][..]),
        ("/proxies", &["get"][..]),
        ("/health", &["get"][..]),
        ("/metrics", &["get"][..]),
    ] {
        let doc = documented.get(path).unwrap_or_else(|| {
            panic!(
                "openapi.json documents {path}: {:?}",
                documented.keys().collect::<Vec<_>>()
            )
        });
        for m in methods {
            assert!(
                doc.get(*m).is_some(),
                "openapi.json documents {m} {path}: {doc}"
            );
        }
    }

    // The backend schemas name every field a registration may carry (policy and admission
    // included), in the request and in the view.
    for schema in ["BackendRequest", "Backend"] {
        let props = &openapi["components"]["schemas"][schema]["properties"];
        for field in [
            "name",
            "url",
            "models",
            "weight",
            "probes",
            "policy",
            "max_concurrent",
            "max_requests_per_sec",
        ] {
            assert!(
                props.get(field).is_some(),
                "openapi.json's {schema} documents `{field}`: {props}"
            );
        }
    }

    // Missing key → 401, wrong key → 403, on reads and writes; X-API-Key works too.
    let body = backend_body("reg-demo", &main.url(), None);
    for (method, b) in [(Method::GET, None), (Method::POST, Some(&body))] {
        let r = api.send(method.clone(), "/admin/backends", None, b).await;
        assert_api_error(&r, 401, "UNAUTHORIZED", &format!("{method} without a key"));
        let r = api
            .send(
                method.clone(),
                "/admin/backends",
                Some(("authorization", "Bearer not-the-key")),
                b,
            )
            .await;
        assert_api_error(
            &r,
            403,
            "FORBIDDEN",
            &format!("{method} with a wrong bearer key"),
        );
        let r = api
            .send(
                method.clone(),
                "/admin/backends",
                Some(("x-api-key", "not-the-key")),
                b,
            )
            .await;
        assert_api_error(
            &r,
            403,
            "FORBIDDEN",
            &format!("{method} with a wrong X-API-Key"),
        );
    }
    let r = api
        .send(
            Method::GET,
            "/admin/backends",
            Some(("x-api-key", KEY)),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "X-API-Key is accepted: {}", r.text);
    assert_eq!(r.body["backends"], json!([]), "nothing registered yet");

    // Refusals: bad URL, failing initial check.
    for url in ["ftp://127.0.0.1/", "not a url", "http://", "127.0.0.1:80"] {
        let r = api
            .post(
                "/admin/backends",
                &backend_body("reg-bad", url, Some(&["demo"])),
            )
            .await;
        assert_api_error(&r, 400, "INVALID_URL", &format!("url {url:?}"));
    }
    let closed = format!("http://127.0.0.1:{}", free_port());
    let r = api
        .post(
            "/admin/backends",
            &backend_body("reg-closed", &closed, Some(&["demo"])),
        )
        .await;
    assert_api_error(&r, 503, "BACKEND_UNAVAILABLE", "closed port");
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("connect")),
        "the reason names the connection failure: {}",
        r.text
    );
    assert!(
        api.backends().await.is_empty(),
        "refused backends are not registered"
    );

    // Success: models discovered, the upstream key stored but never returned.
    let mut body = backend_body("reg-demo", &main.url(), None);
    body["api_key"] = json!(secret);
    body["owner"] = json!("team-a");
    body["tags"] = json!({"env": "test"});
    body["weight"] = json!(2);
    let created = api.register(&body).await;
    let id = created["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("a non-empty id: {created}"))
        .to_string();
    assert_eq!(created["name"], "reg-demo");
    assert_eq!(
        models_of(&created),
        ["demo", "other"],
        "models discovered: {created}"
    );
    assert_eq!(created["has_api_key"], true, "{created}");
    assert!(
        created.get("api_key").is_none(),
        "api_key not returned: {created}"
    );
    assert_eq!(created["owner"], "team-a");
    assert_eq!(created["tags"], json!({"env": "test"}));
    assert_eq!(created["weight"], 2);
    assert_eq!(created["kind"], "chat");
    assert_eq!(created["source"], "api");
    assert_eq!(created["deregistered"], false);
    assert!(
        created["created_at"].as_str().is_some_and(looks_rfc3339),
        "{created}"
    );
    assert!(
        created["updated_at"].as_str().is_some_and(looks_rfc3339),
        "{created}"
    );
    assert!(created["health"].is_object(), "{created}");
    assert_eq!(api.backend(&id).await["id"], id.as_str());
    let listed = api.backends().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    // The proxy routes demo to it, sending the upstream key (the mock requires it).
    wait_routes(&client, &proxy, "demo", "reg-demo").await;
    let a = chat(&client, &proxy, "demo").await.expect("answer");
    assert_eq!(a.instance.as_deref(), Some("mock-main"));

    // Explicit models are kept as given; without a key has_api_key is false.
    let explicit = api
        .register(&backend_body(
            "reg-explicit",
            &second.url(),
            Some(&["explicit-model"]),
        ))
        .await;
    assert_eq!(models_of(&explicit), ["explicit-model"]);
    assert_eq!(explicit["has_api_key"], false);
    assert_ne!(explicit["id"], id.as_str(), "ids are unique");

    // Name already used → 409; unknown id → 404.
    let r = api
        .post(
            "/admin/backends",
            &backend_body("reg-demo", &second.url(), Some(&["demo"])),
        )
        .await;
    assert_api_error(&r, 409, "BACKEND_EXISTS", "duplicate name");
    let r = api.get("/admin/backends/no-such-backend").await;
    assert_api_error(&r, 404, "BACKEND_NOT_FOUND", "GET unknown id");
    let r = api
        .put(
            "/admin/backends/no-such-backend",
            &backend_body("x", &second.url(), None),
        )
        .await;
    assert_api_error(&r, 404, "BACKEND_NOT_FOUND", "PUT unknown id");

    // Update: re-validated, same id, new URL; the proxy follows to the second mock.
    let r = api
        .put(
            &format!("/admin/backends/{id}"),
            &backend_body("reg-demo", "gopher://nowhere", None),
        )
        .await;
    assert_api_error(&r, 400, "INVALID_URL", "PUT with a bad URL");
    let r = api
        .put(
            &format!("/admin/backends/{id}"),
            &backend_body("reg-explicit", &second.url(), None),
        )
        .await;
    assert_api_error(&r, 409, "BACKEND_EXISTS", "PUT renaming to a used name");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let r = api
        .put(
            &format!("/admin/backends/{id}"),
            &backend_body("reg-demo", &closed, Some(&["demo"])),
        )
        .await;
    assert_api_error(
        &r,
        503,
        "BACKEND_UNAVAILABLE",
        "PUT to a closed port is re-checked",
    );
    let unchanged = api.backend(&id).await;
    assert_eq!(
        unchanged["url"].as_str().map(|u| u.trim_end_matches('/')),
        Some(&*main.url()),
        "a refused update changes nothing: {unchanged}"
    );
    assert_eq!(unchanged["name"], "reg-demo");
    let mut update = backend_body("reg-demo", &second.url(), None);
    update["api_key"] = json!(secret);
    update["tags"] = json!({"env": "prod"});
    update["weight"] = json!(3);
    let r = api.put(&format!("/admin/backends/{id}"), &update).await;
    assert_eq!(r.status, 200, "PUT: {}", r.text);
    assert_eq!(r.body["id"], id.as_str(), "the id is stable across updates");
    assert_eq!(
        r.body["url"].as_str().map(|u| u.trim_end_matches('/')),
        Some(&*second.url())
    );
    assert_eq!(r.body["weight"], 3);
    assert_eq!(r.body["tags"], json!({"env": "prod"}));
    assert_eq!(r.body["created_at"], created["created_at"]);
    eventually(
        CONVERGE,
        "demo served by mock-second after the update",
        || async {
            let a = chat(&client, &proxy, "demo").await?;
            (a.status == 200
                && a.endpoint.as_deref() == Some("reg-demo")
                && a.instance.as_deref() == Some("mock-second"))
            .then_some(())
        },
    )
    .await;

    // Forced check.
    let r = api
        .post(&format!("/admin/backends/{id}/check"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "check: {}", r.text);
    assert_eq!(r.body["result"]["ok"], true, "{}", r.text);
    assert_eq!(r.body["result"]["status"], 200, "{}", r.text);
    assert!(
        r.body["result"]["at"].as_str().is_some_and(looks_rfc3339),
        "{}",
        r.text
    );
    assert!(r.body["result"]["latency_ms"].is_number(), "{}", r.text);
    assert!(r.body["health"]["status"].is_string(), "{}", r.text);

    // Deregister: 204, gone from the API, no more routing to it.
    let r = api.delete(&format!("/admin/backends/{id}")).await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text);
    let r = api.get(&format!("/admin/backends/{id}")).await;
    assert_api_error(&r, 404, "BACKEND_NOT_FOUND", "GET after DELETE");
    let r = api.delete(&format!("/admin/backends/{id}")).await;
    assert_api_error(&r, 404, "BACKEND_NOT_FOUND", "DELETE twice");
    eventually(CONVERGE, "demo no longer routed to reg-demo", || async {
        let a = chat(&client, &proxy, "demo").await?;
        let gone = (a.status == 404 && a.body["error"]["code"] == "model_not_found")
            || (a.status == 503 && a.body["error"]["code"] == "no_healthy_endpoint");
        (gone && a.endpoint.as_deref() != Some("reg-demo")).then_some(())
    })
    .await;
    for _ in 0..5 {
        let a = chat(&client, &proxy, "demo").await.expect("answer");
        assert_ne!(a.status, 200, "demo stays unrouted: {}", a.body);
    }

    // Re-register the same name.
    let mut again = backend_body("reg-demo", &main.url(), Some(&["demo"]));
    again["api_key"] = json!(secret);
    let again = api.register(&again).await;
    assert_eq!(again["name"], "reg-demo");
    wait_routes(&client, &proxy, "demo", "reg-demo").await;

    // The upstream key never left the control plane, and neither key is in its log.
    assert!(
        !api.all_seen().contains(secret),
        "the upstream key appeared in a response"
    );
    let log = std::fs::read_to_string(&control.proc.log).unwrap_or_default();
    assert!(!log.contains(secret), "the upstream key is in the log");
    assert!(!log.contains(KEY), "the admin key is in the log");
}

/// The initial health check refuses a failing backend with 503 and names the reason; field
/// validation and the backend limit answer 400 / 422.
#[tokio::test]
async fn registration_refusals_name_the_reason() {
    let dir = temp_dir("refusals");
    let needs_key = MockOpenAi::start(&dir, "mock-keyed", &["--api-key", "sk-other"]);
    let good = MockOpenAi::start(&dir, "mock-good", &[]);
    let also_good = MockOpenAi::start(&dir, "mock-also-good", &[]);
    let control = Control::start(
        &dir,
        "cp-refusals",
        &control_body(&dir.join("data"), true, "max_backends = 1", ""),
    )
    .await;
    let api = Api::new(&control);

    let not_json = not_json_server().await;
    let silent = silent_server().await;
    let closed = free_port();
    let cases: Vec<(String, &str)> = vec![
        (format!("http://127.0.0.1:{closed}"), "connect"),
        (needs_key.url(), "status 401"),
        (format!("http://{not_json}"), "invalid json"),
        (format!("http://{silent}"), "timed out"),
    ];
    for (i, (url, reason)) in cases.iter().enumerate() {
        let started = Instant::now();
        let r = api
            .post(
                "/admin/backends",
                &backend_body(&format!("failing-{i}"), url, None),
            )
            .await;
        assert_api_error(&r, 503, "BACKEND_UNAVAILABLE", url);
        let msg = r.body["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            msg.contains(reason),
            "{url}: the error names {reason:?}: {}",
            r.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: refused within the check timeout (took {:?})",
            started.elapsed()
        );
    }

    // Field validation.
    let bad_bodies = [
        backend_body("bad name!", &good.url(), Some(&["demo"])),
        backend_body("", &good.url(), Some(&["demo"])),
        backend_body(&"n".repeat(64), &good.url(), Some(&["demo"])),
        json!({"url": good.url()}),
        json!({"name": "weightless", "url": good.url(), "weight": "heavy"}),
        json!({"name": "kindless", "url": good.url(), "kind": "teleport"}),
    ];
    for b in &bad_bodies {
        let r = api.post("/admin/backends", b).await;
        assert_api_error(&r, 400, "VALIDATION_ERROR", &b.to_string());
    }
    let bearer = format!("Bearer {KEY}");
    let r = api
        .client
        .post(format!("{}/admin/backends", api.base))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let reply = Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    };
    assert_api_error(&reply, 400, "VALIDATION_ERROR", "malformed JSON body");
    assert!(api.backends().await.is_empty(), "nothing registered");

    // The limit: max_backends = 1.
    api.register(&backend_body("first", &good.url(), Some(&["demo"])))
        .await;
    let r = api
        .post(
            "/admin/backends",
            &backend_body("second", &also_good.url(), Some(&["demo"])),
        )
        .await;
    assert_api_error(&r, 422, "MAX_BACKENDS_REACHED", "over max_backends");
    assert_eq!(api.backends().await.len(), 1);
}

/// With `allow_private_backends = false` (the default) loopback, private, link-local and
/// metadata addresses are refused before any connection; keys can come from a file.
#[tokio::test]
async fn private_addresses_are_refused_by_default() {
    let dir = temp_dir("ssrf");
    let mock = MockOpenAi::start(&dir, "mock-private", &[]);
    let keys = dir.join("admin-keys");
    std::fs::write(&keys, "file-key-one\nfile-key-two\n").expect("write key file");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // allow_private_backends left out: the default must be false.
    let body = format!(
        "data_dir = \"{}\"\n[admin]\napi_key_file = \"{}\"\n[health]\ninterval_ms = 200\ntimeout_ms = 1000\n",
        data.display(),
        keys.display()
    );
    let control = Control::start(&dir, "cp-ssrf", &body).await;
    let api = Api::new(&control);
    let auth = Some(("authorization", "Bearer file-key-two"));

    let r = api.send(Method::GET, "/admin/backends", auth, None).await;
    assert_eq!(
        r.status, 200,
        "a key from api_key_file is accepted: {}",
        r.text
    );
    let r = api
        .send(
            Method::GET,
            "/admin/backends",
            Some(("x-api-key", "file-key-one")),
            None,
        )
        .await;
    assert_eq!(
        r.status, 200,
        "every line of api_key_file is a key: {}",
        r.text
    );

    let port = mock.addr.port();
    let urls = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        "http://169.254.169.254/".to_string(),
        "http://10.1.2.3:8000/".to_string(),
        "http://172.16.5.4/".to_string(),
        "http://192.168.1.10/".to_string(),
        "http://[fe80::1]/".to_string(),
        "http://[fd00::1]/".to_string(),
    ];
    for (i, url) in urls.iter().enumerate() {
        let b = backend_body(&format!("private-{i}"), url, Some(&["demo"]));
        let r = api
            .send(Method::POST, "/admin/backends", auth, Some(&b))
            .await;
        assert_api_error(&r, 400, "PRIVATE_ADDRESS_NOT_ALLOWED", url);
    }
    let stats = mock.stats(&api.client).await;
    assert_eq!(
        stats["connections"], 1,
        "the control plane never connected to the refused loopback backend (1 = this stats call): {stats}"
    );
    let r = api.send(Method::GET, "/admin/backends", auth, None).await;
    assert_eq!(r.body["backends"], json!([]), "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Health checking
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unhealthy_backend_is_withdrawn_and_restored() {
    let dir = temp_dir("health");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut mock = mock_on(&dir, "mock-flaky", "mock-flaky", addr);
    let control = Control::start(
        &dir,
        "cp-health",
        &control_body(&dir.join("data"), true, "", ""),
    )
    .await;
    let api = Api::new(&control);
    let proxy = Proxy::start(&dir, "proxy-health", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();

    let b = api
        .register(&backend_body("flaky", &mock.url(), Some(&["demo"])))
        .await;
    let id = b["id"].as_str().expect("id").to_string();
    wait_routes(&client, &proxy, "demo", "flaky").await;
    eventually(CONVERGE, "flaky healthy", || async {
        (api.backend(&id).await["health"]["status"] == "healthy").then_some(())
    })
    .await;

    // The backend dies: unhealthy after the threshold, withdrawn from the proxy.
    mock.proc.kill();
    let killed = Instant::now();
    let b = eventually(CONVERGE, "flaky unhealthy", || async {
        let b = api.backend(&id).await;
        (b["health"]["status"] == "unhealthy").then_some(b)
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took >= INTERVAL / 2,
        "not unhealthy before the threshold of 2 failed checks ({took:?})"
    );
    let health = &b["health"];
    assert!(
        health["consecutive_failures"].as_u64() >= Some(2),
        "{health}"
    );
    assert_eq!(health["consecutive_successes"], 0, "{health}");
    assert_eq!(health["last_check"]["ok"], false, "{health}");
    assert!(
        health["last_check"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "a failed check has a reason: {health}"
    );
    assert_eq!(
        b["deregistered"], false,
        "unhealthy is not deregistered: {b}"
    );
    let listed = api.backends().await;
    assert!(
        listed.iter().any(|x| x["id"] == id.as_str()),
        "still registered"
    );
    let seen = Instant::now();
    eventually(
        Duration::from_secs(3),
        "the proxy to hold flaky as unhealthy",
        || async {
            (proxy
                .endpoint_health(&client, "demo", "flaky")
                .await
                .as_deref()
                == Some("unhealthy"))
            .then_some(())
        },
    )
    .await;
    assert!(
        seen.elapsed() < INTERVAL * 5,
        "the transition reached the proxy within about a check interval ({:?})",
        seen.elapsed()
    );
    let a = chat(&client, &proxy, "demo").await.expect("answer");
    assert_eq!(a.status, 503, "no healthy endpoint for demo: {}", a.body);
    assert_eq!(a.body["error"]["code"], "no_healthy_endpoint", "{}", a.body);

    // It comes back on the same port: healthy after the threshold, routed again.
    let _mock = mock_on(&dir, "mock-flaky-again", "mock-flaky", addr);
    let b = eventually(CONVERGE, "flaky healthy again", || async {
        let b = api.backend(&id).await;
        (b["health"]["status"] == "healthy").then_some(b)
    })
    .await;
    assert!(
        b["health"]["consecutive_successes"].as_u64() >= Some(2),
        "{b}"
    );
    assert_eq!(b["health"]["consecutive_failures"], 0, "{b}");
    eventually(
        Duration::from_secs(3),
        "the proxy to hold flaky as healthy",
        || async {
            (proxy
                .endpoint_health(&client, "demo", "flaky")
                .await
                .as_deref()
                == Some("healthy"))
            .then_some(())
        },
    )
    .await;
    let a = chat(&client, &proxy, "demo").await.expect("answer");
    assert_eq!(
        (a.status, a.endpoint.as_deref()),
        (200, Some("flaky")),
        "{}",
        a.body
    );

    // The history shows both.
    let history = b["health"]["history"].as_array().expect("history").clone();
    assert!(history.len() <= 100, "at most 100 results");
    for h in &history {
        assert!(h["at"].as_str().is_some_and(looks_rfc3339), "{h}");
        assert!(h["latency_ms"].is_number(), "{h}");
        assert!(h["ok"].is_boolean(), "{h}");
    }
    assert!(
        history
            .iter()
            .any(|h| h["ok"] == false && h["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "a failed check with its reason in the history: {history:?}"
    );
    assert!(
        history
            .iter()
            .any(|h| h["ok"] == true && h["status"] == 200),
        "a successful check in the history: {history:?}"
    );
}

/// Auto-deregistration after K failures is soft: the backend stays visible, flagged, unrouted,
/// and `restore` brings it back.
#[tokio::test]
async fn auto_deregistration_is_soft_and_restorable() {
    let dir = temp_dir("auto-dereg");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut mock = mock_on(&dir, "mock-dereg", "mock-dereg", addr);
    let control = Control::start(
        &dir,
        "cp-dereg",
        &control_body(&dir.join("data"), true, "", "deregister_after_failures = 4"),
    )
    .await;
    let api = Api::new(&control);
    let proxy = Proxy::start(&dir, "proxy-dereg", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();

    let b = api
        .register(&backend_body("dereg", &mock.url(), Some(&["demo"])))
        .await;
    let id = b["id"].as_str().expect("id").to_string();
    wait_routes(&client, &proxy, "demo", "dereg").await;

    mock.proc.kill();
    let b = eventually(CONVERGE, "dereg auto-deregistered", || async {
        let b = api.backend(&id).await;
        (b["deregistered"] == true).then_some(b)
    })
    .await;
    assert!(
        b["health"]["consecutive_failures"].as_u64() >= Some(4),
        "{b}"
    );
    eventually(CONVERGE, "demo no longer routed to dereg", || async {
        let a = chat(&client, &proxy, "demo").await?;
        (a.status != 200 && a.endpoint.as_deref() != Some("dereg")).then_some(())
    })
    .await;

    let _mock = mock_on(&dir, "mock-dereg-again", "mock-dereg", addr);
    let r = api
        .post(&format!("/admin/backends/{id}/restore"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "restore: {}", r.text);
    eventually(CONVERGE, "dereg restored and healthy", || async {
        let b = api.backend(&id).await;
        (b["deregistered"] == false && b["health"]["status"] == "healthy").then_some(())
    })
    .await;
    wait_routes(&client, &proxy, "demo", "dereg").await;
}

/// Custom probes of an external backend (issue 16): a startup probe checking a JSON field
/// admits it (or refuses it, naming the probe); a readiness probe that fails withdraws its
/// route from the proxy without ever deregistering it, and brings it back when it passes; a
/// liveness probe that fails (the process is gone) is what deregisters it; every probe is
/// counted per kind on `GET /admin/backends/{id}`, summarised in the list and in Prometheus.
#[tokio::test]
async fn backend_probes_gate_routes_and_are_counted() {
    let dir = temp_dir("backend-probes");
    let mut mock = MockOpenAi::start(&dir, "mock-probed", &[]);
    let control = Control::start(
        &dir,
        "cp-probes",
        &control_body(&dir.join("data"), true, "", "deregister_after_failures = 3"),
    )
    .await;
    let api = Api::new(&control);
    let proxy = Proxy::start(&dir, "proxy-probes", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();

    // Invalid probes are refused, naming the field.
    let mut bad = backend_body("probed", &mock.url(), Some(&["demo"]));
    bad["probes"] = json!({"readiness": {"path": "mock/ready"}});
    let r = api.post("/admin/backends", &bad).await;
    assert_api_error(&r, 400, "VALIDATION_ERROR", "a probe path without /");
    assert!(r.text.contains("probes.readiness.path"), "{}", r.text);

    // A startup probe whose JSON field does not match refuses the registration.
    let mut wrong = backend_body("probed", &mock.url(), Some(&["demo"]));
    wrong["probes"] = json!({"startup": {"path": "/v1/models", "json_pointer": "/data/0/id",
                                         "json_equals": "another-model"}});
    let r = api.post("/admin/backends", &wrong).await;
    assert_api_error(&r, 503, "BACKEND_UNAVAILABLE", "a failing startup probe");
    let error = r.body["error"].as_str().unwrap_or("");
    assert!(
        error.contains("startup probe") && error.contains("expected \"another-model\""),
        "{error}"
    );
    assert!(api.backends().await.is_empty(), "nothing was registered");

    let mut body = backend_body("probed", &mock.url(), Some(&["demo"]));
    body["probes"] = json!({
        "startup": {"path": "/v1/models", "json_pointer": "/data/0/id", "json_equals": "demo"},
        "liveness": {"path": "/health"},
        "readiness": {"path": "/mock/ready", "json_pointer": "/ready", "json_equals": "true",
                      "headers": {"x-probe": "readiness"}, "timeout_ms": 500},
    });
    let b = api.register(&body).await;
    let id = b["id"].as_str().expect("id").to_string();
    assert_eq!(b["probes"]["readiness"]["path"], "/mock/ready", "{b}");
    assert_eq!(b["probe_stats"]["startup"]["successes"], 1, "{b}");
    wait_routes(&client, &proxy, "demo", "probed").await;

    // Not ready: withdrawn from the proxy, never deregistered (more failures than the
    // deregistration threshold of 3 go by).
    let flip = |ready: bool| {
        let client = client.clone();
        let url = format!("{}/mock/ready", mock.url());
        async move {
            let r = client
                .put(url)
                .json(&json!({ "ready": ready }))
                .send()
                .await
                .expect("PUT /mock/ready");
            assert_eq!(r.status(), 200);
        }
    };
    flip(false).await;
    let b = eventually(CONVERGE, "probed not ready for 5 checks", || async {
        let b = api.backend(&id).await;
        (b["health"]["consecutive_failures"].as_u64() >= Some(5)).then_some(b)
    })
    .await;
    assert_eq!(b["health"]["status"], "unhealthy", "{b}");
    assert_eq!(
        b["deregistered"], false,
        "readiness does not deregister: {b}"
    );
    let reason = b["health"]["last_check"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("readiness: ") && reason.contains("/ready is \"false\""),
        "{reason}"
    );
    eventually(
        CONVERGE,
        "the proxy to hold probed as unhealthy",
        || async {
            (proxy
                .endpoint_health(&client, "demo", "probed")
                .await
                .as_deref()
                == Some("unhealthy"))
            .then_some(())
        },
    )
    .await;
    let a = chat(&client, &proxy, "demo").await.expect("answer");
    assert_eq!(a.status, 503, "withdrawn: {}", a.body);

    // Ready again: routed again.
    flip(true).await;
    wait_routes(&client, &proxy, "demo", "probed").await;

    // The figures, per kind.
    let b = api.backend(&id).await;
    let stats = &b["probe_stats"];
    let (live, ready) = (&stats["liveness"], &stats["readiness"]);
    assert!(ready["failures"].as_u64() >= Some(5), "{stats}");
    assert!(ready["successes"].as_u64() >= Some(1), "{stats}");
    assert_eq!(
        ready["total"].as_u64(),
        Some(ready["successes"].as_u64().unwrap_or(0) + ready["failures"].as_u64().unwrap_or(0)),
        "{stats}"
    );
    assert_eq!(live["failures"], 0, "alive all along: {stats}");
    assert!(live["total"].as_u64() >= ready["total"].as_u64(), "{stats}");
    assert_eq!(ready["consecutive_failures"], 0, "{stats}");
    for k in [live, ready] {
        assert!(k["avg_ms"].as_f64().is_some_and(|v| v >= 0.0), "{stats}");
        assert!(k["p99_ms"].as_f64().is_some_and(|v| v >= 0.0), "{stats}");
        assert!(
            k["last_success_at"].as_str().is_some_and(looks_rfc3339),
            "{stats}"
        );
    }
    assert!(
        ready["last_failure_at"].as_str().is_some_and(looks_rfc3339),
        "{stats}"
    );
    assert!(
        ready["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("/ready")),
        "{stats}"
    );
    let listed = api.backends().await;
    let row = listed
        .iter()
        .find(|x| x["id"] == id.as_str())
        .expect("listed");
    let rate = row["success_rate"].as_f64().expect("success_rate");
    assert!(rate > 0.0 && rate < 1.0, "some probes failed: {row}");
    assert!(row["avg_latency_ms"].as_f64().is_some(), "{row}");

    let m = api.send(Method::GET, "/metrics", None, None).await.text;
    for needle in [
        "multiverse_control_probe_duration_seconds_bucket{kind=\"readiness\",target=\"probed\",target_type=\"backend\"",
        "multiverse_control_probes_total{kind=\"readiness\",result=\"failed\",target=\"probed\",target_type=\"backend\"}",
        "multiverse_control_probes_total{kind=\"liveness\",result=\"ok\",target=\"probed\",target_type=\"backend\"}",
        "multiverse_control_probes_total{kind=\"startup\",result=\"ok\",target=\"probed\",target_type=\"backend\"}",
    ] {
        assert!(m.contains(needle), "{needle} in /metrics:\n{m}");
    }

    // Gone: the liveness probe fails, and 3 of those deregister it (softly).
    mock.proc.kill();
    let b = eventually(CONVERGE, "probed deregistered", || async {
        let b = api.backend(&id).await;
        (b["deregistered"] == true).then_some(b)
    })
    .await;
    let reason = b["health"]["last_check"]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("liveness: "), "{reason}");
    assert!(
        b["probe_stats"]["liveness"]["consecutive_failures"].as_u64() >= Some(3),
        "{b}"
    );
}

// ---------------------------------------------------------------------------------------------
// Durable state
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn state_survives_restart_and_corrupt_file_is_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;

    let dir = temp_dir("state");
    let data = dir.join("data");
    let body = control_body(&data, true, "", "");
    let a = MockOpenAi::start(&dir, "mock-state-a", &[]);
    let b = MockOpenAi::start(&dir, "mock-state-b", &[]);
    let mut control = Control::start(&dir, "cp-state", &body).await;
    let api = Api::new(&control);
    let mut with_key = backend_body("state-a", &a.url(), Some(&["demo"]));
    with_key["api_key"] = json!("sk-state-secret");
    let id_a = api.register(&with_key).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let id_b = api.register(&backend_body("state-b", &b.url(), None)).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(id_a, id_b);
    // An update and a deregistration are persisted too.
    let mut update = backend_body("state-b", &b.url(), Some(&["demo"]));
    update["weight"] = json!(5);
    update["tags"] = json!({"rack": "r7"});
    let r = api.put(&format!("/admin/backends/{id_b}"), &update).await;
    assert_eq!(r.status, 200, "PUT: {}", r.text);
    let id_c = api
        .register(&backend_body("state-c", &b.url(), Some(&["gone"])))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = api.delete(&format!("/admin/backends/{id_c}")).await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text);

    // Restart with the same data_dir: both back, same ids, same fields.
    control.proc.kill();
    control = Control::start(&dir, "cp-state", &body).await;
    let api = Api::new(&control);
    let listed = api.backends().await;
    let find = |id: &str| {
        listed
            .iter()
            .find(|x| x["id"] == id)
            .unwrap_or_else(|| panic!("backend {id} restored: {listed:?}"))
            .clone()
    };
    let (ra, rb) = (find(&id_a), find(&id_b));
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(ra["name"], "state-a");
    assert_eq!(
        ra["has_api_key"], true,
        "the key survives the restart: {ra}"
    );
    assert_eq!(rb["name"], "state-b");
    assert_eq!(models_of(&rb), ["demo"], "models persisted: {rb}");
    assert_eq!(rb["weight"], 5, "the update persisted: {rb}");
    assert_eq!(
        rb["tags"],
        json!({"rack": "r7"}),
        "the update persisted: {rb}"
    );
    assert!(
        listed.iter().all(|x| x["id"] != id_c.as_str()),
        "the deregistered backend stays deregistered: {listed:?}"
    );

    let state = state_file(&data);
    let meta =
        std::fs::metadata(&state).unwrap_or_else(|e| panic!("{} exists: {e}", state.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} has mode 0600",
        state.display()
    );

    // A truncated state file stops the start, is named, and is left as it was.
    control.proc.kill();
    let full = std::fs::read(&state).expect("read state");
    let mut cut = full.len() / 2;
    // Cut inside a line, so the half cannot happen to be a complete, valid document.
    while cut > 1 && matches!(full[cut - 1], b'\n' | b'\r' | b']') {
        cut -= 1;
    }
    let truncated = full[..cut].to_vec();
    std::fs::write(&state, &truncated).expect("truncate state");
    let args = vec!["--config".to_string(), control.config.display().to_string()];
    let mut proc = Proc::spawn(
        "cp-state-corrupt",
        &bin("multiverse-control"),
        &args,
        &dir,
        false,
    );
    let code = proc.wait_exit(Duration::from_secs(10));
    let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
    assert!(
        matches!(code, Some(c) if c != 0),
        "multiverse-control exits non-zero on a truncated state file (exit: {code:?}); log:\n{log}"
    );
    assert!(
        log.contains(&state.display().to_string()),
        "the error names {}; log:\n{log}",
        state.display()
    );
    assert_eq!(
        std::fs::read(&state).expect("read state"),
        truncated,
        "the corrupt state file is left byte for byte"
    );
}

/// Backends declared in the config file are listed by the API as `source = "config"`, health
/// checked like the others, and routed.
#[tokio::test]
async fn config_backends_are_listed_and_checked() {
    let dir = temp_dir("config-backends");
    let mock = MockOpenAi::start(&dir, "mock-config", &[]);
    let body = format!(
        "{}{}",
        control_body(&dir.join("data"), true, "", ""),
        backends_toml(&[&mock], "demo")
    );
    let control = Control::start(&dir, "cp-config", &body).await;
    let api = Api::new(&control);
    let proxy = Proxy::start(&dir, "proxy-config", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();

    let listed = api.backends().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "mock-config");
    assert_eq!(listed[0]["source"], "config", "{}", listed[0]);
    assert_eq!(models_of(&listed[0]), ["demo"]);
    let id = listed[0]["id"].as_str().expect("id").to_string();
    eventually(
        CONVERGE,
        "the config backend health-checked healthy",
        || async {
            let b = api.backend(&id).await;
            (b["health"]["status"] == "healthy" && b["health"]["last_check"]["ok"] == true)
                .then_some(())
        },
    )
    .await;
    wait_routes(&client, &proxy, "demo", "mock-config").await;
    // An API registration cannot take a config backend's name.
    let r = api
        .post(
            "/admin/backends",
            &backend_body("mock-config", &mock.url(), Some(&["demo"])),
        )
        .await;
    assert_api_error(&r, 409, "BACKEND_EXISTS", "name of a config backend");
}
