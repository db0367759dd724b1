//! Models' routing policies through the control plane (issue 14, phase 1), as real processes on
//! loopback: `[models.<name>]` in control.toml (round robin alternates strictly, and wins over
//! a backend's own policy), a backend's `policy` (weighted follows weights), the operator API
//! (`/admin/models/{name}/policy`: a pushed first-byte timeout turns a slow mock's answer into
//! an OpenAI-format 504, bad values are `INVALID_POLICY`, the policy is persisted and
//! documented), two control planes that disagree (the lowest plane id's policy is used; the
//! conflict is in `/config_dump`, a gauge and one log line), and admission settings pushed from
//! control.toml (a backend's `max_concurrent`, a model's `queue_max`).

use std::time::Duration;

use multiverse_tests::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "policy-admin-key-7d1f";
const CONVERGE: Duration = Duration::from_secs(10);

/// A control plane's config: private backends allowed, fast checks, then `extra` tables.
fn control_body(extra: &str) -> String {
    format!(
        "[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         [discovery]\ncoalesce_ms = 20\n{extra}\n"
    )
}

/// `[[backends]]` named `name` at `mock` for `models`, with optional `weight` and inline policy.
fn backend_toml(name: &str, mock: &MockOpenAi, models: &[&str], rest: &str) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[backends]]\nname = \"{name}\"\nurl = \"{}\"\nmodels = [{}]\n{rest}\n",
        mock.url(),
        models.join(", ")
    )
}

/// One chat completion: status, `x-multiverse-endpoint`, body.
async fn chat(c: &reqwest::Client, proxy: &Proxy, model: &str) -> (u16, String, Value) {
    let r = c
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("the proxy answers");
    let status = r.status().as_u16();
    let endpoint = r
        .headers()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, endpoint, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the proxy's table has `model` with `n` endpoints; returns its route.
async fn wait_model(c: &reqwest::Client, proxy: &Proxy, model: &str, n: usize) -> Value {
    eventually(
        CONVERGE,
        &format!("{model} with {n} endpoints in /config_dump"),
        || async {
            let dump = proxy.config_dump(c).await?;
            let route = dump["table"]["models"][model].clone();
            (route["endpoints"].as_array()?.len() == n).then_some(route)
        },
    )
    .await
}

/// Waits until `/config_dump` shows `model`'s policy with `field` equal to `value`.
async fn wait_policy(c: &reqwest::Client, proxy: &Proxy, model: &str, field: &str, value: Value) {
    eventually(
        CONVERGE,
        &format!("{model}'s policy.{field} = {value} in /config_dump"),
        || async {
            let dump = proxy.config_dump(c).await?;
            (dump["table"]["models"][model]["policy"][field] == value).then_some(())
        },
    )
    .await;
}

/// A request to the operator API with the admin key: status and JSON body (Null if none).
async fn admin(
    c: &reqwest::Client,
    cp: &Control,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c
        .request(method, format!("{}{path}", cp.api_url()))
        .bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("the control plane answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The version of `plane` the proxy's table holds (Null if none).
async fn plane_version(c: &reqwest::Client, proxy: &Proxy, plane: &str) -> Value {
    proxy
        .config_dump(c)
        .await
        .map(|d| d["planes"][plane]["version"].clone())
        .unwrap_or(Value::Null)
}

fn assert_api_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        got.1
    );
    assert!(got.1["timestamp"].is_string(), "{}", got.1);
}

#[tokio::test]
async fn control_toml_round_robin_alternates_and_backend_weighted_follows_weights() {
    let dir = temp_dir("policy-lb");
    let args = ["--model", "m1", "--model", "m2"];
    let a = MockOpenAi::start(&dir, "mock-a", &args);
    let b = MockOpenAi::start(&dir, "mock-b", &args);
    // m1: the model section says round_robin; one of its backends asks for weighted and
    // loses. m2: no section; a backend's policy asks for weighted, over weights 1 and 4.
    let body = control_body(
        &[
            backend_toml(
                "rr-a",
                &a,
                &["m1"],
                "policy = { lb = \"weighted\", max_retries = 1 }",
            ),
            backend_toml("rr-b", &b, &["m1"], ""),
            backend_toml(
                "w-a",
                &a,
                &["m2"],
                "weight = 1\npolicy = { lb = \"weighted\" }",
            ),
            backend_toml("w-b", &b, &["m2"], "weight = 4"),
            "[models.m1]\nlb = \"round_robin\"\n".to_string(),
        ]
        .concat(),
    );
    let cp = Control::start(&dir, "cp-lb", &body).await;
    let proxy = Proxy::start(&dir, "proxy-lb", &[cp.discovery_url()]).await;
    let c = reqwest::Client::new();

    let m1 = wait_model(&c, &proxy, "m1", 2).await;
    assert_eq!(
        m1["policy"]["lb"], "round_robin",
        "the model section wins: {m1}"
    );
    assert_eq!(
        m1["policy"]["max_retries"], 1,
        "a field the section leaves unset comes from the backend: {m1}"
    );
    let mut seen = Vec::new();
    for _ in 0..12 {
        let (status, endpoint, body) = chat(&c, &proxy, "m1").await;
        assert_eq!(status, 200, "{body}");
        seen.push(endpoint);
    }
    for pair in seen.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "round robin alternates strictly: {seen:?}"
        );
    }
    assert_eq!(seen.iter().filter(|e| *e == "rr-a").count(), 6, "{seen:?}");

    let m2 = wait_model(&c, &proxy, "m2", 2).await;
    assert_eq!(m2["policy"]["lb"], "weighted", "{m2}");
    let n = 200;
    let mut heavy = 0;
    for _ in 0..n {
        let (status, endpoint, body) = chat(&c, &proxy, "m2").await;
        assert_eq!(status, 200, "{body}");
        if endpoint == "w-b" {
            heavy += 1;
        }
    }
    // Weight 4 of 5: 80 % (binomial sd 2.8 %); round robin or P2C would give ~50 %.
    let share = f64::from(heavy) / f64::from(n);
    assert!(
        (0.7..=0.9).contains(&share),
        "w-b (weight 4 of 5) took {share:.2} of m2's requests"
    );

    // The snapshot the control plane pushes carries the same policy.
    let snap: Value = c
        .get(format!("{}/snapshot", cp.api_url()))
        .send()
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("json");
    let pushed = snap["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "m1"))
        .map(|m| m["policy"].clone());
    assert_eq!(
        pushed,
        Some(
            json!({"lb": "round_robin", "max_retries": 1, "connect_timeout_ms": null,
                    "first_byte_timeout_ms": null, "idle_timeout_ms": null,
                    "hedge_after_ms": null})
        ),
        "{snap}"
    );
}

#[tokio::test]
async fn an_api_first_byte_timeout_is_pushed_applied_persisted_and_removable() {
    let dir = temp_dir("policy-api");
    let slow = MockOpenAi::start(
        &dir,
        "mock-slow",
        &["--model", "m3", "--latency-ms", "1500"],
    );
    let cp = Control::start(
        &dir,
        "cp-api",
        &control_body(&backend_toml("slow", &slow, &["m3"], "")),
    )
    .await;
    let proxy = Proxy::start(&dir, "proxy-api", &[cp.discovery_url()]).await;
    let c = reqwest::Client::new();
    let route = wait_model(&c, &proxy, "m3", 1).await;
    assert_eq!(
        route["policy"]["first_byte_timeout"],
        Value::Null,
        "{route}"
    );
    let (status, _, body) = chat(&c, &proxy, "m3").await;
    assert_eq!(status, 200, "no policy: the slow answer arrives: {body}");

    // Nothing set yet.
    let path = "/admin/models/m3/policy";
    assert_api_error(
        &admin(&c, &cp, reqwest::Method::GET, path, None).await,
        404,
        "POLICY_NOT_FOUND",
    );
    // Bad values are refused with a stable code, naming the field; nothing is stored.
    for (bad, field) in [
        (json!({"lb": "fastest"}), "lb"),
        (json!({"first_byte_timeout_ms": 0}), "first_byte_timeout_ms"),
        (json!({"max_retries": 50}), "max_retries"),
    ] {
        let got = admin(&c, &cp, reqwest::Method::PUT, path, Some(bad.clone())).await;
        assert_api_error(&got, 400, "INVALID_POLICY");
        assert!(
            got.1["error"].as_str().unwrap_or_default().contains(field),
            "{bad} → {}",
            got.1
        );
    }
    assert_api_error(
        &admin(&c, &cp, reqwest::Method::PUT, path, Some(json!({"lb": 3}))).await,
        400,
        "VALIDATION_ERROR",
    );
    assert_api_error(
        &admin(&c, &cp, reqwest::Method::GET, path, None).await,
        404,
        "POLICY_NOT_FOUND",
    );

    let (status, view) = admin(
        &c,
        &cp,
        reqwest::Method::PUT,
        path,
        Some(json!({"first_byte_timeout_ms": 300})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["model"], "m3");
    assert_eq!(view["api"]["first_byte_timeout_ms"], 300, "{view}");
    assert_eq!(view["config"], Value::Null, "{view}");
    wait_policy(&c, &proxy, "m3", "first_byte_timeout", json!(300)).await;
    let (status, _, body) = chat(&c, &proxy, "m3").await;
    assert_eq!(status, 504, "the pushed first-byte timeout applies: {body}");
    assert!(
        body["error"]["message"].is_string() && body["error"]["type"].is_string(),
        "an OpenAI-format error: {body}"
    );

    // Persisted in the durable state.
    let state =
        std::fs::read_to_string(dir.join("cp-api-data").join("state.toml")).expect("state.toml");
    assert!(
        state.contains("[policies.m3]") && state.contains("first_byte_timeout_ms = 300"),
        "{state}"
    );
    let (status, doc) = admin(&c, &cp, reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for method in ["get", "put", "delete"] {
        assert!(
            doc["paths"]["/admin/models/{name}/policy"][method]["tags"][0] == "models",
            "{method} documented and tagged"
        );
    }

    let del = c
        .delete(format!("{}{path}", cp.api_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    wait_policy(&c, &proxy, "m3", "first_byte_timeout", Value::Null).await;
    let (status, _, body) = chat(&c, &proxy, "m3").await;
    assert_eq!(status, 200, "the default again: {body}");
    assert_api_error(
        &admin(&c, &cp, reqwest::Method::DELETE, path, None).await,
        404,
        "POLICY_NOT_FOUND",
    );
    let unauthorized = c
        .put(format!("{}{path}", cp.api_url()))
        .json(&json!({}))
        .send()
        .await
        .expect("answer");
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn two_planes_disagreeing_the_lowest_id_wins_and_the_conflict_is_reported_once() {
    let dir = temp_dir("policy-conflict");
    let a = MockOpenAi::start(&dir, "mock-a", &["--model", "m1"]);
    let b = MockOpenAi::start(&dir, "mock-b", &["--model", "m1"]);
    // "cp-b" says round_robin, "cp-a" weighted: cp-a's id is lower, so weighted is used.
    let cp_b = Control::start(
        &dir,
        "cp-b",
        &control_body(&format!(
            "{}[models.m1]\nlb = \"round_robin\"\n",
            backend_toml("from-b", &b, &["m1"], "")
        )),
    )
    .await;
    let cp_a = Control::start(
        &dir,
        "cp-a",
        &control_body(&format!(
            "{}[models.m1]\nlb = \"weighted\"\n",
            backend_toml("from-a", &a, &["m1"], "")
        )),
    )
    .await;
    let proxy = Proxy::start(
        &dir,
        "proxy-conflict",
        &[cp_b.discovery_url(), cp_a.discovery_url()],
    )
    .await;
    let c = reqwest::Client::new();
    let route = wait_model(&c, &proxy, "m1", 2).await;
    assert_eq!(route["policy"]["lb"], "weighted", "cp-a's policy: {route}");
    let dump = proxy.config_dump(&c).await.expect("config_dump");
    assert_eq!(
        dump["table"]["policy_conflicts"]["m1"],
        json!({"used": "cp-a", "ignored": ["cp-b"]}),
        "{dump}"
    );
    let metrics = c
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l == "multiverse_proxy_policy_conflicts{model=\"m1\"} 1"),
        "{metrics}"
    );
    // A new table while the conflict lasts (cp-b changes m1 but still disagrees): still one
    // log line.
    let before = plane_version(&c, &proxy, "cp-b").await;
    assert!(!before.is_null(), "{dump}");
    let (status, body) = admin(
        &c,
        &cp_b,
        reqwest::Method::PUT,
        "/admin/models/m1/policy",
        Some(json!({"max_retries": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(CONVERGE, "a new cp-b version in the proxy", || async {
        let now = plane_version(&c, &proxy, "cp-b").await;
        (now != before && !now.is_null()).then_some(())
    })
    .await;
    let dump = proxy.config_dump(&c).await.expect("config_dump");
    assert_eq!(
        dump["table"]["policy_conflicts"]["m1"]["used"], "cp-a",
        "{dump}"
    );
    // cp-b now also agrees with cp-a: the conflict ends and the gauge goes.
    let (status, body) = admin(
        &c,
        &cp_b,
        reqwest::Method::PUT,
        "/admin/models/m1/policy",
        Some(json!({"lb": "weighted"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(CONVERGE, "the conflict to end in /config_dump", || async {
        let dump = proxy.config_dump(&c).await?;
        dump["table"]["policy_conflicts"].is_null().then_some(())
    })
    .await;
    let metrics = c
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.contains("multiverse_proxy_policy_conflicts{model=\"m1\"} 1"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&proxy.proc.log).expect("proxy log");
    let lines = log
        .lines()
        .filter(|l| l.contains("different routing policies"))
        .count();
    assert_eq!(lines, 1, "the conflict is logged once: {log}");
}

#[tokio::test]
async fn a_backend_max_concurrent_and_a_model_queue_from_control_toml_admit_and_shed() {
    let dir = temp_dir("policy-admission");
    let slow = MockOpenAi::start(
        &dir,
        "mock-slow",
        &["--model", "m4", "--latency-ms", "1000"],
    );
    let body = control_body(&format!(
        "{}[models.m4]\nqueue_max = 1\nqueue_timeout_ms = 5000\nhedge_after_ms = 75\n",
        backend_toml("slow", &slow, &["m4"], "max_concurrent = 1")
    ));
    let cp = Control::start(&dir, "cp-admit", &body).await;
    let proxy = Proxy::start(&dir, "proxy-admit", &[cp.discovery_url()]).await;
    let c = reqwest::Client::new();
    let route = wait_model(&c, &proxy, "m4", 1).await;
    assert_eq!(route["endpoints"][0]["max_concurrent"], 1, "{route}");
    assert_eq!(route["policy"]["queue_max"], 1, "{route}");
    assert_eq!(route["policy"]["queue_timeout"], 5000, "{route}");
    // Pushed like every policy key (its effect: tests/hedge.rs).
    assert_eq!(route["policy"]["hedge_after"], 75, "{route}");

    let gauge = |name: &'static str| {
        let (c, admin) = (c.clone(), proxy.admin_url());
        async move {
            let text = c
                .get(format!("{admin}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    let spawn = || {
        let (c, url) = (c.clone(), proxy.url());
        tokio::spawn(async move {
            let r = c
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "m4", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .expect("answer");
            r.status().as_u16()
        })
    };
    let first = spawn();
    eventually(CONVERGE, "the first request in flight", || async {
        (gauge("multiverse_proxy_in_flight_requests").await? == 1.0).then_some(())
    })
    .await;
    let second = spawn();
    eventually(CONVERGE, "the second request queued", || async {
        (gauge("multiverse_proxy_queue_depth{model=\"m4\"}").await? == 1.0).then_some(())
    })
    .await;
    let (status, _, body) = chat(&c, &proxy, "m4").await;
    assert_eq!(status, 429, "slot taken, queue full: {body}");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    assert_eq!(first.await.expect("first"), 200);
    assert_eq!(
        second.await.expect("second"),
        200,
        "sent when the slot freed"
    );
}
