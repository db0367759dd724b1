//! The control plane's routes for the UI: `GET /ui/config`, `POST /admin/backends/test`,
//! `GET /stats`, list filters and sorting.

use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

use super::*;

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
