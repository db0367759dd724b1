//! Engine-aware load (issue 14), as real processes on loopback: a control plane scrapes two
//! mock-openai endpoints' `/metrics` (one in vLLM style, one in SGLang style, told apart by
//! their metric names) and pushes their load to a proxy. While endpoint A reports a queue of
//! 50, `least_request` sends (nearly) everything to B; once A's metrics stop answering, its
//! last load goes stale (3 scrape intervals) and is ignored: traffic is balanced again. Load
//! updates never change the snapshot version the proxy runs.

use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(20);

/// `[[backends]]` named `name` at `mock` for model `m1`.
fn backend_toml(name: &str, mock: &MockOpenAi) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\nurl = \"{}\"\nmodels = [\"m1\"]\n",
        mock.url()
    )
}

/// How many of `n` sequential chat requests each endpoint served: (A's, B's).
async fn shares(c: &reqwest::Client, proxy: &Proxy, n: usize) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let r = c
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("the proxy answers");
        assert_eq!(r.status(), 200);
        match r
            .headers()
            .get("x-multiverse-endpoint")
            .and_then(|v| v.to_str().ok())
        {
            Some("load-a") => a += 1,
            Some("load-b") => b += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    (a, b)
}

/// Waits until `/config_dump` shows endpoint `id` of m1 with an `engine_load` that `ok` accepts.
async fn wait_load(
    c: &reqwest::Client,
    proxy: &Proxy,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(CONVERGE, what, || async {
        let dump = proxy.config_dump(c).await?;
        let load = dump["table"]["models"]["m1"]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id)?["engine_load"]
            .clone();
        ok(&load).then_some(load)
    })
    .await
}

/// The snapshot versions the proxy's table holds, by plane.
async fn versions(c: &reqwest::Client, proxy: &Proxy) -> Value {
    proxy.config_dump(c).await.expect("config_dump")["planes"].clone()
}

#[tokio::test]
async fn heavy_engine_load_moves_traffic_and_stale_load_is_ignored() {
    let dir = temp_dir("engine-load");
    let a = MockOpenAi::start(&dir, "mock-load-a", &["--model", "m1"]);
    let b = MockOpenAi::start(
        &dir,
        "mock-load-b",
        &["--model", "m1", "--engine", "sglang"],
    );
    let body = format!(
        "[admin]\napi_keys = [\"engine-load-key\"]\nallow_private_backends = true\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         [load]\nscrape_interval_ms = 500\ntimeout_ms = 450\n\
         {}{}[models.m1]\nlb = \"least_request\"\n",
        backend_toml("load-a", &a),
        backend_toml("load-b", &b),
    );
    let cp = Control::start(&dir, "cp-load", &body).await;
    let proxy = Proxy::start(&dir, "proxy-load", &[cp.discovery_url()]).await;
    let c = reqwest::Client::new();

    // Both endpoints are scraped and their engines told apart by their metric names.
    let lb = wait_load(&c, &proxy, "load-b", "load-b's engine load", |l| {
        l["engine"] == "sglang"
    })
    .await;
    assert_eq!(lb["stale"], false, "{lb}");
    wait_load(&c, &proxy, "load-a", "load-a's engine load", |l| {
        l["engine"] == "vllm" && l["stale"] == false
    })
    .await;
    let before = versions(&c, &proxy).await;

    // A reports a queue of 50: least request sends everything to B.
    let set = c
        .post(format!("{}/_mock/load", a.url()))
        .json(&json!({"waiting": 50}))
        .send()
        .await
        .expect("mock answers");
    assert_eq!(set.status(), 200);
    let la = wait_load(&c, &proxy, "load-a", "load-a waiting 50", |l| {
        l["waiting"] == 50 && l["stale"] == false
    })
    .await;
    assert!(la["cost"].as_f64().is_some_and(|c| c >= 50.0), "{la}");
    let (to_a, to_b) = shares(&c, &proxy, 60).await;
    eprintln!("A queues 50: A {to_a}, B {to_b} of 60");
    assert!(
        to_b >= 57,
        "B should take (nearly) everything while A queues 50: A {to_a}, B {to_b}"
    );

    // A's metrics stop answering: its last load ages past 3 intervals and is ignored.
    let off = c
        .post(format!("{}/_mock/load", a.url()))
        .json(&json!({"metrics": false}))
        .send()
        .await
        .expect("mock answers");
    assert_eq!(off.status(), 200);
    let la = wait_load(&c, &proxy, "load-a", "load-a's load stale", |l| {
        l["stale"] == true
    })
    .await;
    assert_eq!(la["waiting"], 50, "the last load is kept, but stale: {la}");
    assert_eq!(la["cost"], 0.0, "{la}");
    let (to_a, to_b) = shares(&c, &proxy, 100).await;
    eprintln!("A's load stale: A {to_a}, B {to_b} of 100");
    assert!(
        to_a >= 25 && to_b >= 25,
        "with A's load stale, traffic is balanced again: A {to_a}, B {to_b}"
    );

    // Load updates are not snapshots: the versions the proxy runs did not move.
    assert_eq!(versions(&c, &proxy).await, before);
}
