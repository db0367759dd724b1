//! What hostile clients and restarts found in the control plane (issue 10), through real
//! processes: snapshot versions that ran backwards after a restart, a 10 MB body answered 400
//! instead of 413, and backend names `.` and `..` accepted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

const KEY: &str = "adm-key-hardening-42";
const WAIT: Duration = Duration::from_secs(20);

fn body(data_dir: &Path) -> String {
    std::fs::create_dir_all(data_dir).expect("data dir");
    format!(
        "data_dir = \"{}\"\n[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
         [discovery]\ncoalesce_ms = 20\n",
        data_dir.display()
    )
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

async fn register(client: &reqwest::Client, control: &Control, name: &str, url: &str) -> u16 {
    client
        .post(format!("{}/admin/backends", control.api_url()))
        .bearer_auth(KEY)
        .json(&json!({"name": name, "url": url, "models": ["demo"]}))
        .send()
        .await
        .expect("register")
        .status()
        .as_u16()
}

/// The version `node` ACKed, once it ACKed the control plane's current version and that is at
/// least `min`.
async fn acked(client: &reqwest::Client, control: &Control, node: &str, min: u64) -> u64 {
    eventually(
        WAIT,
        &format!("{node} to ACK the current version"),
        || async {
            let v: Value = client
                .get(format!("{}/proxies", control.api_url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let current = v["current_version"].as_str()?;
            let p = v["proxies"]
                .as_array()?
                .iter()
                .find(|p| p["node_id"] == node)?;
            let current: u64 = current.parse().expect("numeric version");
            (p["connected"] == true
                && p["acked_version"].as_str() == Some(&current.to_string())
                && current >= min)
                .then_some(current)
        },
    )
    .await
}

#[tokio::test]
async fn snapshot_versions_only_grow_across_restarts() {
    let dir = temp_dir("versions");
    let client = reqwest::Client::new();
    let mock = MockOpenAi::start(&dir, "mock-versions", &[]);
    let (api, discovery) = (addr(), addr());
    let data = dir.join("data");
    let mut control = Control::start_on(&dir, "cp-versions", &body(&data), api, discovery).await;
    let mut proxy = Proxy::start(&dir, "p-before", &[control.discovery_url()]).await;
    // Each registration is a new version (after the first snapshot's).
    let mut before = 1;
    for name in ["b1", "b2", "b3"] {
        assert_eq!(register(&client, &control, name, &mock.url()).await, 201);
        before = acked(&client, &control, "p-before", before + 1).await;
    }

    // The state file keeps the versions: a restarted control plane (and a new proxy, which
    // says no version in its hello) continues above them.
    proxy.proc.kill();
    control.proc.kill();
    control = Control::start_on(&dir, "cp-versions", &body(&data), api, discovery).await;
    let proxy = Proxy::start(&dir, "p-after", &[control.discovery_url()]).await;
    let after = acked(&client, &control, "p-after", 0).await;
    assert!(
        after > before,
        "after a restart the proxy ACKed {after}, not above {before}"
    );

    // A control plane that lost its state (a new data directory) still never sends a proxy a
    // version below the one it says it holds in its hello.
    control.proc.kill();
    let control = Control::start_on(
        &dir,
        "cp-versions",
        &body(&dir.join("fresh-data")),
        api,
        discovery,
    )
    .await;
    let again = acked(&client, &control, "p-after", 0).await;
    assert!(
        again > after,
        "the reconnected proxy ACKed {again}, not above the {after} it held"
    );
    drop(proxy);
}

#[tokio::test]
async fn a_10_mb_body_is_413_payload_too_large() {
    let dir = temp_dir("big-body");
    let control = Control::start(&dir, "cp-big", &body(&dir.join("data"))).await;
    let client = reqwest::Client::new();
    let huge = format!(
        "{{\"name\": \"big\", \"url\": \"http://127.0.0.1:1\", \"owner\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    for path in ["/admin/backends", "/instances"] {
        let resp = client
            .post(format!("{}{path}", control.api_url()))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(resp.status(), 413, "POST {path}");
        let v: Value = resp.json().await.expect("JSON error body");
        assert_eq!(v["code"], "PAYLOAD_TOO_LARGE", "POST {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("bytes")),
            "POST {path}: the error names the limit: {v}"
        );
        assert!(v["timestamp"].as_str().is_some(), "POST {path}: {v}");
    }
    // Nothing was registered, and the API still answers.
    let list: Value = client
        .get(format!("{}/admin/backends", control.api_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["backends"], json!([]));
}

#[tokio::test]
async fn backend_names_dot_and_dotdot_are_refused() {
    let dir = temp_dir("dot-names");
    let mock = MockOpenAi::start(&dir, "mock-dots", &[]);
    let control = Control::start(&dir, "cp-dots", &body(&dir.join("data"))).await;
    let client = reqwest::Client::new();
    for name in [".", ".."] {
        let resp = client
            .post(format!("{}/admin/backends", control.api_url()))
            .bearer_auth(KEY)
            .json(&json!({"name": name, "url": mock.url(), "models": ["demo"]}))
            .send()
            .await
            .expect("register");
        assert_eq!(resp.status(), 400, "name {name:?}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["code"], "VALIDATION_ERROR", "name {name:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("`name`")),
            "name {name:?}: {v}"
        );
    }
    // Dots inside a name stay allowed.
    assert_eq!(
        register(&client, &control, "vllm.a", &mock.url()).await,
        201
    );
}
