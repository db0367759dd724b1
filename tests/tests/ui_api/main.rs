//! What the web UI needs from the server (issue 12, phase 2), through the real binaries: the
//! control plane's `GET /ui/config`, "Test connection" (`POST /admin/backends/test`), `GET
//! /stats` and the list filters ([`routes`]), backend events on `/events` ([`events`]) and the
//! proxy's CORS for the playground ([`cors`]), each as an API user sees it, and each documented
//! (and tagged) in `/openapi.json`.

mod cors;
mod events;
mod routes;

use std::time::Duration;

use multiverse_tests::*;
use serde_json::Value;

const KEY: &str = "ui-api-admin-key";
/// The web UI's origin in these tests.
const UI: &str = "http://127.0.0.1:9000";

pub(crate) fn control_body(extra: &str) -> String {
    format!(
        "[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         [discovery]\ncoalesce_ms = 20\n{extra}\n"
    )
}

pub(crate) async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    json_of(c.get(url).bearer_auth(KEY).send().await.expect(url)).await
}

pub(crate) async fn openapi(c: &reqwest::Client, api: &str) -> Value {
    let (status, doc) = get_json(c, &format!("{api}/openapi.json")).await;
    assert_eq!(status, 200);
    doc
}

/// `method path` is in `/openapi.json` with a tag Swagger groups it by.
pub(crate) fn assert_documented(doc: &Value, path: &str, method: &str) {
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

pub(crate) async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
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

pub(crate) fn assert_code(reply: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(reply.0, status, "{what}: {}", reply.1);
    assert_eq!(reply.1["code"], code, "{what}: {}", reply.1);
    assert!(reply.1["timestamp"].is_string(), "{what}: {}", reply.1);
}

/// The models of the snapshot being pushed.
pub(crate) async fn snapshot_models(c: &reqwest::Client, api: &str) -> Vec<String> {
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

/// 8 free ports in 31000-31999 for instances.
pub(crate) fn instance_ports() -> (u16, u16) {
    let first = (std::process::id() % 125) as u16;
    (0..125)
        .map(|i| 31000 + ((first + i) % 125) * 8)
        .find(|lo| (*lo..*lo + 8).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .map(|lo| (lo, lo + 7))
        .expect("8 free ports in 31000-31999")
}
/// Waits until the wall clock is in a later second than now (RFC 3339 timestamps are to the
/// second).
pub(crate) async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    tokio::time::sleep(Duration::from_millis(1010 - u64::from(now.subsec_millis()))).await;
}

pub(crate) fn names_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {list}"))
        .iter()
        .map(|b| b["name"].as_str().unwrap_or("?").to_string())
        .collect()
}
