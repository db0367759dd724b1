//! The operator API's request body limit (`[admin] max_body_bytes`, 1 MiB by default): a body
//! over it is 413 `PAYLOAD_TOO_LARGE` in `{error, code, timestamp}`, one under it is read (and
//! judged on its content), and nothing over the limit is registered.

use multiverse_tests::*;
use serde_json::Value;

const KEY: &str = "limits-key-0123456789";

async fn post(client: &reqwest::Client, control: &Control, body: String) -> (u16, Value) {
    let r = client
        .post(format!("{}/admin/backends", control.api_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /admin/backends");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn registration(owner_bytes: usize) -> String {
    format!(
        "{{\"name\": \"b\", \"url\": \"http://127.0.0.1:1\", \"models\": [\"m\"], \"owner\": \"{}\"}}",
        "x".repeat(owner_bytes)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_by_default_at_1_mib_and_as_configured() {
    let dir = temp_dir("api-limits");
    let client = reqwest::Client::new();
    let default = Control::start(
        &dir,
        "cp-default-limit",
        &format!("[admin]\napi_keys = [\"{KEY}\"]\n"),
    )
    .await;
    // 1.5 MiB: over the 1 MiB default.
    let (status, v) = post(&client, &default, registration(1536 * 1024)).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["code"], "PAYLOAD_TOO_LARGE", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_body_bytes")),
        "{v}"
    );
    assert!(v["timestamp"].is_string(), "{v}");

    let small = Control::start(
        &dir,
        "cp-small-limit",
        &format!("[admin]\napi_keys = [\"{KEY}\"]\nmax_body_bytes = 2000\n"),
    )
    .await;
    let (status, v) = post(&client, &small, registration(3000)).await;
    assert_eq!(status, 413, "{v}");
    // Under the limit the body is read: refused for its content (a loopback backend), not its
    // size.
    let (status, v) = post(&client, &small, registration(100)).await;
    assert_ne!(status, 413, "{v}");
    assert!(
        v["code"].is_string() && v["code"] != "PAYLOAD_TOO_LARGE",
        "{v}"
    );
    let list: Value = client
        .get(format!("{}/admin/backends", small.api_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["backends"].as_array().map(Vec::len), Some(0), "{list}");
}
