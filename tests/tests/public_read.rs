//! `[admin] public_read`: the reads that show host detail (`/gpus` lists process ids,
//! `/snapshot` every endpoint's address, `/proxies` the proxies) need the admin key unless
//! the operator opens them; health, metrics and the OpenAPI document stay open either way.

use multiverse_tests::*;
use serde_json::Value;

const KEY: &str = "read-key-0123456789";
const READS: [&str; 3] = ["/gpus", "/snapshot", "/proxies"];

async fn get(client: &reqwest::Client, url: String, key: Option<&str>) -> (u16, Value) {
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_detail_needs_the_key_unless_public_read() {
    let dir = temp_dir("public-read");
    let client = reqwest::Client::new();
    let closed = Control::start(
        &dir,
        "cp-closed",
        &format!("[admin]\napi_keys = [\"{KEY}\"]\npublic_read = false\n"),
    )
    .await;
    for path in READS {
        let url = || format!("{}{path}", closed.api_url());
        let (status, body) = get(&client, url(), None).await;
        assert_eq!(status, 401, "{path} without a key: {body}");
        assert_eq!(body["code"], "UNAUTHORIZED", "{path}: {body}");
        assert!(
            body["error"].is_string() && body["timestamp"].is_string(),
            "{body}"
        );
        let (status, body) = get(&client, url(), Some("wrong-key-0000000")).await;
        assert_eq!(status, 403, "{path} with a wrong key: {body}");
        let (status, body) = get(&client, url(), Some(KEY)).await;
        assert_eq!(status, 200, "{path} with the key: {body}");
    }
    for path in ["/health", "/metrics", "/openapi.json"] {
        let r = client
            .get(format!("{}{path}", closed.api_url()))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path} stays open");
    }

    let open = Control::start(
        &dir,
        "cp-open",
        &format!("[admin]\napi_keys = [\"{KEY}\"]\npublic_read = true\n"),
    )
    .await;
    for path in READS {
        let (status, body) = get(&client, format!("{}{path}", open.api_url()), None).await;
        assert_eq!(status, 200, "{path} with public_read: {body}");
    }
}
