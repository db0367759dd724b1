//! Inference API keys and per-address limits end to end (issue 13): a control plane in keys mode issues, rotates,
//! updates and revokes keys through `/admin/keys`, and the proxy it feeds enforces each change
//! (401 / 403 in OpenAI's format, the key never forwarded upstream); secrets appear in no
//! listing, no state file, no `/snapshot`, no `/config_dump` and no log. `[limits] per_ip_rpm`
//! on the proxy and `[admin] per_ip_rpm` on the control plane answer 429 in each format.

use std::time::Duration;

use multiverse_tests::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The operator key (distinctive, so a leak would be visible).
const ADMIN: &str = "adm-key-keys-7d3e91";
/// How long the proxy gets to apply a change of the control plane.
const CONVERGE: Duration = Duration::from_secs(10);

struct Stack {
    client: reqwest::Client,
    control: Control,
    proxy: Proxy,
    _mock: MockOpenAi,
}

impl Stack {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.control.api_url()))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    /// A chat completion for `model` with `headers`; status, body and the credential headers
    /// the backend saw.
    async fn chat(&self, model: &str, headers: &[(&str, &str)]) -> (StatusCode, Value, String) {
        let mut req = self
            .client
            .post(format!("{}/v1/chat/completions", self.proxy.url()))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("proxy request");
        let status = resp.status();
        let seen = resp
            .headers()
            .get("x-mock-credentials")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, seen)
    }

    /// Waits until a request with `secret` for `model` answers `want`.
    async fn until(&self, secret: &str, model: &str, want: StatusCode) {
        let bearer = format!("Bearer {secret}");
        eventually(CONVERGE, &format!("{model} answering {want}"), || async {
            let (status, _, _) = self.chat(model, &[("authorization", &bearer)]).await;
            (status == want).then_some(())
        })
        .await;
    }
}

async fn stack(tag: &str) -> Stack {
    let dir = temp_dir(tag);
    let mock = MockOpenAi::start(&dir, "mock-k", &["--model", "demo", "--model", "other"]);
    let body = format!(
        "[admin]\napi_keys = [\"{ADMIN}\"]\n[inference_auth]\nmode = \"keys\"\n\
         [discovery]\ncoalesce_ms = 20\n\
         [[backends]]\nname = \"mock-k\"\nurl = \"{}\"\nmodels = [\"demo\", \"other\"]\n",
        mock.url()
    );
    let control = Control::start(&dir, "cp-keys", &body).await;
    let proxy = Proxy::start(&dir, "proxy-keys", &[control.discovery_url()]).await;
    let client = reqwest::Client::new();
    proxy.wait_ready(&client).await;
    Stack {
        client,
        control,
        proxy,
        _mock: mock,
    }
}

fn issued(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).expect("json");
    let id = v["id"].as_str().expect("id").to_string();
    let key = v["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("mv-") && key.len() >= 3 + 32, "{key}");
    (id, key)
}

#[tokio::test]
async fn keys_issued_by_the_control_plane_are_enforced_by_its_proxies() {
    use reqwest::Method;
    let s = stack("keys-lifecycle").await;

    // Keys mode from the first snapshot on: no key, no answer.
    let (status, body, _) = s.chat("demo", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");

    let (status, text) = s
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "team-a", "models": ["demo"], "owner": "ops"})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let (id, first) = issued(&text);
    let hash =
        multiverse_common::keys::to_hex(&multiverse_common::keys::hash_secret(first.as_bytes()));
    s.until(&first, "demo", StatusCode::OK).await;

    // Every credential header works, and none of them reaches the backend.
    for (name, value) in [
        ("authorization", format!("Bearer {first}")),
        ("api-key", first.clone()),
        ("x-api-key", first.clone()),
    ] {
        let (status, body, seen) = s.chat("demo", &[(name, &value)]).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(seen, "none", "{name}: the backend saw the client's key");
    }
    let bearer = format!("Bearer {first}");
    let (status, body, _) = s.chat("other", &[("authorization", &bearer)]).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (403, &json!("model_not_allowed")),
        "{body}"
    );
    let (status, body, _) = s.chat("demo", &[("authorization", "Bearer mv-0000")]).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (401, &json!("invalid_api_key")),
        "{body}"
    );
    // /v1/models lists the key's models only.
    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.proxy.url()))
        .bearer_auth(&first)
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let ids: Vec<_> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("demo")], "{models}");

    // Listings show the key, never its secret or hash.
    let (status, list) = s.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&list).expect("json");
    assert_eq!(v["mode"], "keys");
    assert_eq!(v["keys"][0]["id"], json!(id));
    assert_eq!(v["keys"][0]["owner"], "ops");
    let (status, one) = s
        .admin(Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, 200, "{one}");

    // Rotation: the old secret stops working, the new one works.
    let (status, text) = s
        .admin(Method::POST, &format!("/admin/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, 200, "{text}");
    let (same_id, second) = issued(&text);
    assert_eq!(same_id, id);
    s.until(&first, "demo", StatusCode::UNAUTHORIZED).await;
    s.until(&second, "demo", StatusCode::OK).await;

    // An update widens the models; the secret stays.
    let (status, text) = s
        .admin(
            Method::PUT,
            &format!("/admin/keys/{id}"),
            Some(json!({"name": "team-a", "models": []})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    s.until(&second, "other", StatusCode::OK).await;
    let (status, text) = s
        .admin(
            Method::PUT,
            &format!("/admin/keys/{id}"),
            Some(json!({"name": "", "rpm": 5})),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("VALIDATION_ERROR") && text.contains("name"),
        "{text}"
    );

    // Per-key metrics: requests by status, tokens; refusals without a key under "-".
    let metrics = s
        .client
        .get(format!("{}/metrics", s.proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let count = |key: &str, status: &str| -> u64 {
        let prefix =
            format!("multiverse_proxy_key_requests_total{{key=\"{key}\",status=\"{status}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count(&id, "200") >= 4, "{metrics}");
    assert!(count(&id, "403") >= 1, "{metrics}");
    assert!(count("-", "401") >= 2, "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "multiverse_proxy_key_tokens_total{{direction=\"out\",key=\"{id}\"}}"
        ))),
        "{metrics}"
    );

    // Where the secrets must never be.
    let hash2 =
        multiverse_common::keys::to_hex(&multiverse_common::keys::hash_secret(second.as_bytes()));
    let state = std::fs::read_to_string(
        std::path::Path::new(&s.control.config)
            .with_file_name("cp-keys-data")
            .join("state.toml"),
    )
    .expect("state file");
    assert!(state.contains(&hash2), "the state file keeps the hash");
    let snapshot = s
        .client
        .get(format!("{}/snapshot", s.control.api_url()))
        .send()
        .await
        .expect("snapshot")
        .text()
        .await
        .expect("text");
    let dump = s
        .client
        .get(format!("{}/config_dump", s.proxy.admin_url()))
        .send()
        .await
        .expect("dump")
        .text()
        .await
        .expect("text");
    assert!(dump.contains(&id), "/config_dump lists the key id");
    let (_, list) = s.admin(Method::GET, "/admin/keys", None).await;
    for (place, text) in [
        ("state.toml", &state),
        ("/snapshot", &snapshot),
        ("/config_dump", &dump),
        ("/metrics", &metrics),
        ("GET /admin/keys", &list),
        ("GET /admin/keys/{id}", &one),
        ("proxy log", &s.proxy.proc.tail_log()),
        ("control log", &s.control.proc.tail_log()),
    ] {
        for secret in [&first, &second] {
            assert!(!text.contains(secret.as_str()), "{place} holds a secret");
            assert!(
                !text.contains(&secret[3..]),
                "{place} holds a secret's random part"
            );
        }
        if place != "state.toml" {
            assert!(
                !text.contains(&hash) && !text.contains(&hash2),
                "{place} holds a hash"
            );
        }
    }

    // Revocation.
    let (status, _) = s
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, 204);
    s.until(&second, "demo", StatusCode::UNAUTHORIZED).await;
    let (status, text) = s
        .admin(Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, 404);
    assert!(text.contains("KEY_NOT_FOUND"), "{text}");
    // The key API needs the operator key like the rest of /admin.
    let anon = s
        .client
        .get(format!("{}/admin/keys", s.control.api_url()))
        .send()
        .await
        .expect("anon");
    assert_eq!(anon.status(), 401);
}

#[tokio::test]
async fn per_address_limits_answer_429_in_each_format_on_both_listeners() {
    let dir = temp_dir("per-ip");
    let mock = MockOpenAi::start(&dir, "mock-ip", &["--model", "demo"]);
    let routes = format!(
        "version = \"per-ip\"\n[[models]]\nname = \"demo\"\nkind = \"chat\"\n[[models.endpoints]]\nid = \"mock-ip\"\naddress = \"{}\"\n",
        mock.addr
    );
    let proxy =
        Proxy::start_standalone(&dir, "proxy-ip", &routes, "[limits]\nper_ip_rpm = 3\n").await;
    let client = reqwest::Client::new();
    let chat = || {
        client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(chat().await.expect("chat").status(), 200, "request {i}");
    }
    let refused = chat().await.expect("chat");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (1..=20).contains(&retry),
        "one request per 20 s at 3 rpm: {retry}"
    );
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    // TEI's format on a TEI route, a gRPC status on gRPC: the same address, still over.
    let tei = client
        .post(format!("{}/embed", proxy.url()))
        .json(&json!({"inputs": "hi"}))
        .send()
        .await
        .expect("tei");
    assert_eq!(tei.status(), 429);
    let body: Value = tei.json().await.expect("json");
    assert_eq!(body["error_type"], "rate_limit_exceeded", "{body}");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let grpc = h2
        .post(format!("{}/tei.v1.Embed/Embed", proxy.url()))
        .header("content-type", "application/grpc")
        .header("x-model", "demo")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("grpc");
    let status = grpc
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(
        status.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {:?}",
        grpc.headers()
    );

    // The operator API, likewise.
    let control = Control::start(
        &dir,
        "cp-ip",
        &format!("[admin]\napi_keys = [\"{ADMIN}\"]\nper_ip_rpm = 3\n"),
    )
    .await;
    // Readiness used some of the budget: count what is left, then expect the refusal.
    let mut answered = Vec::new();
    for _ in 0..4 {
        let r = client
            .get(format!("{}/proxies", control.api_url()))
            .send()
            .await
            .expect("api");
        answered.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["code"], "RATE_LIMITED", "{body}");
            break;
        }
    }
    assert_eq!(answered.last(), Some(&429), "{answered:?}");
}

/// The `lease.rpm` proxy `proxy`'s `/config_dump` shows for key `id` (None: no lease yet).
async fn lease_rpm(client: &reqwest::Client, proxy: &Proxy, id: &str) -> Option<u64> {
    let dump: Value = client
        .get(format!("{}/config_dump", proxy.admin_url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    dump["table"]["auth"]["keys"]
        .as_array()?
        .iter()
        .find(|k| k["id"] == id)?["lease"]["rpm"]
        .as_u64()
}

/// Sends chat completions with `secret` to `proxy` back to back for `run`; counts the 200s
/// (and fails on anything but 200 and 429).
async fn hammer(client: reqwest::Client, url: String, secret: String, run: Duration) -> u64 {
    let until = std::time::Instant::now() + run;
    let mut admitted = 0;
    while std::time::Instant::now() < until {
        let status = client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request")
            .status();
        match status.as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    admitted
}

#[tokio::test]
async fn two_proxies_share_one_keys_rpm_by_lease() {
    use reqwest::Method;
    let mut s = stack("keys-fleet").await;
    const RPM: u64 = 60;
    let (status, text) = s
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "fleet", "rpm": RPM})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let (id, secret) = issued(&text);
    let dir = temp_dir("keys-fleet-2");
    let second = Proxy::start(&dir, "proxy-keys-2", &[s.control.discovery_url()]).await;
    second.wait_ready(&s.client).await;
    // Both connected: half the limit each.
    for p in [&s.proxy, &second] {
        eventually(CONVERGE, "a lease of half the limit", || async {
            (lease_rpm(&s.client, p, &id).await == Some(RPM / 2)).then_some(())
        })
        .await;
    }

    // Both proxies driven flat out at once: together they admit about the limit's burst plus
    // its rate over the run, not twice that.
    let run = Duration::from_secs(6);
    let (a, b) = tokio::join!(
        hammer(s.client.clone(), s.proxy.url(), secret.clone(), run),
        hammer(s.client.clone(), second.url(), secret.clone(), run),
    );
    let total = a + b;
    // GCRA: a full minute's burst (60), then 1 a second across the fleet.
    let expected = RPM + run.as_secs() * RPM / 60;
    eprintln!("two proxies admitted {a} + {b} = {total} of rpm {RPM} in {run:?} (expected about {expected}; each proxy alone would allow {expected} itself)");
    assert!(
        total <= expected + 6,
        "fleet over the limit: {a} + {b} = {total}"
    );
    assert!(total >= expected - 6, "fleet starved: {a} + {b} = {total}");
    assert!(a >= 20 && b >= 20, "both proxies serve: {a} / {b}");

    // A proxy leaving gives its share to the one left.
    drop(second);
    eventually(CONVERGE, "the whole limit for the proxy left", || async {
        (lease_rpm(&s.client, &s.proxy, &id).await == Some(RPM)).then_some(())
    })
    .await;

    // The control plane unreachable: the last lease stays in force (not the key's whole
    // limit, which N proxies would each apply).
    let dir3 = temp_dir("keys-fleet-3");
    let third = Proxy::start(&dir3, "proxy-keys-3", &[s.control.discovery_url()]).await;
    third.wait_ready(&s.client).await;
    // Split again (by demand: the first proxy was busy a moment ago, so it keeps more).
    let (l1, l3) = eventually(CONVERGE, "the limit split again", || async {
        let l1 = lease_rpm(&s.client, &s.proxy, &id).await?;
        let l3 = lease_rpm(&s.client, &third, &id).await?;
        (l1 + l3 == RPM && l3 < RPM).then_some((l1, l3))
    })
    .await;
    s.control.proc.kill();
    for p in [&third, &s.proxy] {
        eventually(CONVERGE, "the proxy to see the plane gone", || async {
            let metrics = s
                .client
                .get(format!("{}/metrics", p.admin_url()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|l| {
                    l.starts_with("multiverse_proxy_control_plane_connected") && l.ends_with(" 0")
                })
                .then_some(())
        })
        .await;
    }
    assert_eq!(lease_rpm(&s.client, &third, &id).await, Some(l3));
    assert_eq!(lease_rpm(&s.client, &s.proxy, &id).await, Some(l1));
}

#[tokio::test]
async fn tokens_per_minute_count_usage_from_plain_and_streamed_responses() {
    let dir = temp_dir("keys-tpm");
    let mock = MockOpenAi::start(&dir, "mock-tpm", &["--model", "demo", "--tokens", "10"]);
    const TPM: u64 = 60;
    let random: [u8; 32] = rand::random();
    let secret = multiverse_common::keys::secret_from(&random);
    let hash =
        multiverse_common::keys::to_hex(&multiverse_common::keys::hash_secret(secret.as_bytes()));
    let routes = format!(
        "version = \"tpm\"\n[[models]]\nname = \"demo\"\nkind = \"chat\"\n[[models.endpoints]]\nid = \"mock-tpm\"\naddress = \"{}\"\n\
         [auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"tokens\"\nsha256 = \"{hash}\"\ntpm = {TPM}\n",
        mock.addr
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-tpm", &routes, "").await;
    let client = reqwest::Client::new();
    let chat = |stream: bool| {
        let mut body = json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(&secret)
            .json(&body)
            .send()
    };
    let remaining = |r: &reqwest::Response| -> u64 {
        r.headers()
            .get("x-ratelimit-remaining-tokens")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("x-ratelimit-remaining-tokens")
    };
    // A streamed response's final usage chunk is counted.
    let streamed = chat(true).await.expect("stream");
    assert_eq!(streamed.status(), 200);
    assert_eq!(
        streamed
            .headers()
            .get("x-ratelimit-limit-tokens")
            .and_then(|v| v.to_str().ok()),
        Some("60")
    );
    let text = streamed.text().await.expect("sse");
    let usage: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["usage"].is_object())
        .collect();
    let streamed_tokens = usage
        .last()
        .and_then(|v| v["usage"]["total_tokens"].as_u64())
        .expect("usage chunk");
    let next = chat(false).await.expect("chat");
    assert_eq!(next.status(), 200);
    let left = remaining(&next);
    assert!(
        left.abs_diff(TPM - streamed_tokens) <= 1,
        "{left} tokens left after {streamed_tokens} streamed"
    );
    let body: Value = next.json().await.expect("json");
    let mut used = streamed_tokens + body["usage"]["total_tokens"].as_u64().expect("usage");
    // Plain responses until the key is over: refused once the tokens used reach the limit.
    let refused = loop {
        let r = chat(false).await.expect("chat");
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        used += body["usage"]["total_tokens"].as_u64().expect("usage");
        assert!(used < TPM + 40, "never refused after {used} tokens");
    };
    assert!(used >= TPM - 1, "refused after only {used} of {TPM} tokens");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["type"].as_str()
        ),
        (Some("rate_limit_exceeded"), Some("tokens")),
        "{body}"
    );
}
