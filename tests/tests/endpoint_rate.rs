//! `[limits] max_requests_per_sec` (issue 16), as real processes on loopback: a control plane
//! supervising mock-tei pushes each instance's fleet-wide rate, split among its connected
//! proxies; a proxy admits about the rate's burst and refuses the rest with 429 in the route
//! family's format (TEI on /embed, OpenAI on /v1/embeddings, gRPC RESOURCE_EXHAUSTED) with
//! `Retry-After`; a model with a second, unlimited instance spills to it instead; two proxies
//! together admit about the limit, not twice it, and one leaving gives the other its share.
//!
//! GCRA bounds every count: from a full cell, a window of `t` seconds admits at most
//! `burst + rate × t` (`burst` = one second's worth), so the assertions use the measured `t`.
//! Readiness is read from the proxies' `/config_dump` (the share each one holds), never from
//! requests that would spend the rate.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use multiverse_proto::tei::v1 as tei;
use multiverse_tests::*;
use serde_json::{json, Value};
use tei::embed_client::EmbedClient;
use tonic::transport::Channel;

const KEY: &str = "test-admin-key";
const WAIT: Duration = Duration::from_secs(20);

/// Twelve free, consecutive instance ports below the ephemeral range (distinct per `slot`;
/// an instance may take more than one).
fn ports(slot: u16) -> (u16, u16) {
    let start = (std::process::id() % 50) as u16 * 36 + slot * 12;
    (0..150u16)
        .map(|k| (start + k * 36) % 2400 + 30000)
        .find(|lo| (*lo..lo + 12).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .map(|lo| (lo, lo + 11))
        .expect("twelve free consecutive ports in 30000-32399")
}

fn control_body(ports: (u16, u16)) -> String {
    format!(
        "[admin]\napi_keys = [\"{KEY}\"]\n\
         [instances]\nbinary = \"{}\"\ngrpc_args = [\"--grpc\"]\nport_range = [{}, {}]\n\
         startup_probe_interval_ms = 100\nliveness_interval_ms = 200\nliveness_failures = 3\n\
         probe_timeout_ms = 1000\ndrain_ms = 100\nstop_grace_ms = 1000\n\
         [templates.limited]\nmodel_id = \"bge-t\"\nlimits = {{ max_requests_per_sec = 4 }}\n\
         [discovery]\ncoalesce_ms = 20\n",
        bin("mock-tei").display(),
        ports.0,
        ports.1
    )
}

struct Plane {
    cp: Control,
    client: reqwest::Client,
}

impl Plane {
    async fn start(dir: &Path, id: &str, slot: u16) -> Plane {
        let cp = Control::start(dir, id, &control_body(ports(slot))).await;
        Plane {
            cp,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.cp.api_url()))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> Value {
        let (status, v) = self.post("/instances", &body).await;
        assert_eq!(status, 201, "create {body}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.cp.api_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        r.json().await.unwrap_or(Value::Null)
    }
}

/// The `(health, max_requests_per_sec)` of every endpoint of `model` in `proxy`'s table.
async fn endpoints(c: &reqwest::Client, proxy: &Proxy, model: &str) -> Vec<(String, String, u64)> {
    let Some(dump) = proxy.config_dump(c).await else {
        return Vec::new();
    };
    dump["table"]["models"][model]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                e["health"].as_str().unwrap_or_default().to_string(),
                e["max_requests_per_sec"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Waits until `proxy` routes `model` to exactly `want` (id, rate share), all healthy.
async fn wait_routes(c: &reqwest::Client, proxy: &Proxy, model: &str, want: &[(&str, u64)]) {
    let mut want: Vec<(String, u64)> = want.iter().map(|(i, r)| (i.to_string(), *r)).collect();
    want.sort();
    eventually(
        WAIT,
        &format!("{} to route {model} to {want:?}", proxy.proc.name),
        || async {
            let got = endpoints(c, proxy, model).await;
            let mut ids: Vec<(String, u64)> = got
                .iter()
                .filter(|(_, h, _)| h == "healthy")
                .map(|(i, _, r)| (i.clone(), *r))
                .collect();
            ids.sort();
            (ids == want).then_some(())
        },
    )
    .await;
}

/// One TEI `/embed` answer: status, serving endpoint, `Retry-After`, `retry-after-ms`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    endpoint: String,
    retry_after: Option<String>,
    retry_after_ms: Option<u64>,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("the proxy answers");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (endpoint, retry_after, retry_after_ms) = (
        header("x-multiverse-endpoint").unwrap_or_default(),
        header("retry-after"),
        header("retry-after-ms").and_then(|v| v.parse().ok()),
    );
    let status = r.status().as_u16();
    Answer {
        status,
        endpoint,
        retry_after,
        retry_after_ms,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

fn embed(c: &reqwest::Client, proxy: &Proxy, model: &str) -> reqwest::RequestBuilder {
    c.post(format!("{}/embed", proxy.url()))
        .header("x-model", model)
        .json(&json!({"inputs": ["rate me"]}))
}

/// `n` concurrent `/embed` requests at each of `proxies`; the answers and how long it took.
async fn burst(
    c: &reqwest::Client,
    proxies: &[&Proxy],
    model: &str,
    n: usize,
) -> (Vec<Answer>, Duration) {
    let started = Instant::now();
    let all = proxies
        .iter()
        .flat_map(|p| (0..n).map(move |_| send(embed(c, p, model))));
    let answers = futures::future::join_all(all).await;
    (answers, started.elapsed())
}

/// GCRA's bound on admissions in `elapsed` from full cells of `rate` per second in total
/// (`cells` of them, one per proxy: each may round its last interval up).
fn bound(rate: u64, elapsed: Duration, cells: u64) -> usize {
    (rate as f64 * (1.0 + elapsed.as_secs_f64())).floor() as usize + cells as usize
}

#[track_caller]
fn assert_tei_refusal(a: &Answer) {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(
        a.body["error_type"], "rate_limit_exceeded",
        "TEI format: {a:?}"
    );
    assert!(a.body["error"].is_string(), "TEI format: {a:?}");
    let secs: u64 = a
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in whole seconds: {a:?}"));
    assert!((1..=2).contains(&secs), "{a:?}");
    let ms = a
        .retry_after_ms
        .unwrap_or_else(|| panic!("retry-after-ms: {a:?}"));
    assert!(
        (1..=1000).contains(&ms),
        "at 5/s the next request fits within 1 s: {a:?}"
    );
}

async fn metric(c: &reqwest::Client, proxy: &Proxy, line: &str) -> f64 {
    proxy.metric(c, line).await
}

#[tokio::test]
async fn an_instance_at_its_rate_gets_about_n_admitted_and_429s_in_each_format() {
    let dir = temp_dir("rate-one");
    let plane = Plane::start(&dir, "cp-rate", 0).await;
    let c = reqwest::Client::new();

    // Validation names the key; the limit is kept and shown.
    for bad in [json!(0), json!(2_000_000)] {
        let (status, v) = plane
            .post(
                "/instances",
                &json!({"name": "bad", "model_id": "bge", "limits": {"max_requests_per_sec": bad}}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("limits.max_requests_per_sec")),
            "{v}"
        );
    }
    plane
        .create(json!({"name": "bge-rl", "model_id": "bge", "limits": {"max_requests_per_sec": 5}}))
        .await;
    plane
        .create(json!({
            "name": "bge-grpc", "model_id": "bge-g", "protocol": "grpc",
            "limits": {"max_requests_per_sec": 2},
        }))
        .await;
    let shown = plane.get("/instances/bge-rl").await;
    assert_eq!(
        shown["spec"]["limits"]["max_requests_per_sec"], 5,
        "{shown}"
    );
    // From a control.toml template: its limit comes along.
    let (status, v) = plane
        .post(
            "/instances/from-template/limited",
            &json!({"name": "bge-tpl"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let shown = plane.get("/instances/bge-tpl").await;
    assert_eq!(
        shown["spec"]["limits"]["max_requests_per_sec"], 4,
        "{shown}"
    );

    let proxy = Proxy::start(&dir, "p-rate", &[plane.cp.discovery_url()]).await;
    proxy.wait_ready(&c).await;
    wait_routes(&c, &proxy, "bge", &[("bge-rl", 5)]).await;
    wait_routes(&c, &proxy, "bge-g", &[("bge-grpc", 2)]).await;
    wait_routes(&c, &proxy, "bge-t", &[("bge-tpl", 4)]).await;

    // TEI /embed: a burst of 20 from a full cell.
    let (answers, elapsed) = burst(&c, &[&proxy], "bge", 20).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        ok >= 5 && ok <= bound(5, elapsed, 1),
        "admitted {ok} of 20 in {elapsed:?} at 5/s: {answers:?}"
    );
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!refused.is_empty(), "{answers:?}");
    for a in &refused {
        assert_tei_refusal(a);
    }
    assert!(
        metric(
            &c,
            &proxy,
            "multiverse_proxy_endpoint_rate_sheds_total{endpoint=\"bge-rl\",model=\"bge\"}"
        )
        .await
            >= refused.len() as f64,
        "sheds counted by endpoint"
    );

    // OpenAI /v1/embeddings, right after: the same cell, refused in OpenAI's format.
    let openai = futures::future::join_all((0..10).map(|_| {
        send(
            c.post(format!("{}/v1/embeddings", proxy.url()))
                .json(&json!({"model": "bge", "input": "rate me"})),
        )
    }))
    .await;
    let refused: Vec<&Answer> = openai.iter().filter(|a| a.status == 429).collect();
    assert!(!refused.is_empty(), "{openai:?}");
    for a in refused {
        assert_eq!(a.body["error"]["code"], "rate_limit_exceeded", "{a:?}");
        assert_eq!(a.body["error"]["type"], "requests", "{a:?}");
        assert!(
            a.retry_after.is_some() && a.retry_after_ms.is_some(),
            "{a:?}"
        );
    }

    // gRPC: RESOURCE_EXHAUSTED beyond the burst of 2.
    let channel = Channel::from_shared(proxy.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let started = Instant::now();
    let calls = futures::future::join_all((0..8).map(|_| {
        let mut client = EmbedClient::new(channel.clone());
        async move {
            let mut req = tonic::Request::new(tei::EmbedRequest {
                inputs: "rate me".into(),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("x-model", "bge-g".parse().expect("ascii"));
            client.embed(req).await.map(|_| ()).map_err(|s| s.code())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = calls.iter().filter(|r| r.is_ok()).count();
    assert!(
        ok >= 2 && ok <= bound(2, elapsed, 1),
        "{ok} of 8 in {elapsed:?}: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .filter_map(|r| r.err())
            .all(|code| code == tonic::Code::ResourceExhausted),
        "{calls:?}"
    );
    assert!(calls.iter().any(|r| r.is_err()), "{calls:?}");
}

#[tokio::test]
async fn traffic_over_one_instances_rate_spills_to_the_models_other_instance() {
    let dir = temp_dir("rate-spill");
    let plane = Plane::start(&dir, "cp-spill", 1).await;
    let c = reqwest::Client::new();
    plane
        .create(json!({
            "name": "spill-a", "model_id": "m", "served_model_name": "spill",
            "limits": {"max_requests_per_sec": 2},
        }))
        .await;
    plane
        .create(json!({"name": "spill-b", "model_id": "m", "served_model_name": "spill"}))
        .await;
    let proxy = Proxy::start(&dir, "p-spill", &[plane.cp.discovery_url()]).await;
    proxy.wait_ready(&c).await;
    wait_routes(&c, &proxy, "spill", &[("spill-a", 2), ("spill-b", 0)]).await;

    let (answers, elapsed) = burst(&c, &[&proxy], "spill", 24).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "spilled, not refused: {answers:?}"
    );
    let on_a = answers.iter().filter(|a| a.endpoint == "spill-a").count();
    let on_b = answers.iter().filter(|a| a.endpoint == "spill-b").count();
    assert_eq!(on_a + on_b, 24, "{answers:?}");
    assert!(
        on_a <= bound(2, elapsed, 1),
        "spill-a took {on_a} in {elapsed:?} at 2/s"
    );
    assert!(on_b >= 24 - bound(2, elapsed, 1), "{on_b} on spill-b");
}

#[tokio::test]
async fn two_proxies_share_the_limit_and_one_leaving_gives_the_other_all_of_it() {
    let dir = temp_dir("rate-fleet");
    let plane = Plane::start(&dir, "cp-fleet", 2).await;
    let c = reqwest::Client::new();
    plane
        .create(json!({"name": "fleet", "model_id": "f", "limits": {"max_requests_per_sec": 6}}))
        .await;
    let p1 = Proxy::start(&dir, "p-fleet-1", &[plane.cp.discovery_url()]).await;
    p1.wait_ready(&c).await;
    wait_routes(&c, &p1, "f", &[("fleet", 6)]).await;
    let p2 = Proxy::start(&dir, "p-fleet-2", &[plane.cp.discovery_url()]).await;
    p2.wait_ready(&c).await;
    // Re-split when the second connects: 3 each.
    wait_routes(&c, &p1, "f", &[("fleet", 3)]).await;
    wait_routes(&c, &p2, "f", &[("fleet", 3)]).await;

    // 20 at each proxy at once: about 6 in all, not 12.
    let (answers, elapsed) = burst(&c, &[&p1, &p2], "f", 20).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        ok >= 6 && ok <= bound(6, elapsed, 2),
        "the fleet admitted {ok} of 40 in {elapsed:?} at 6/s: {answers:?}"
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(a.body["error_type"], "rate_limit_exceeded", "{a:?}");
    }

    // p2 leaves: p1 gets the whole limit again.
    drop(p2);
    wait_routes(&c, &p1, "f", &[("fleet", 6)]).await;
}

#[tokio::test]
async fn an_external_backend_registration_carries_the_same_limit() {
    let dir = temp_dir("rate-backend");
    let mock = MockOpenAi::start(&dir, "mock-rate", &["--model", "ext"]);
    let cp = Control::start(
        &dir,
        "cp-backend",
        &format!(
            "[admin]\nallow_private_backends = true\napi_keys = [\"{KEY}\"]\n\
             [discovery]\ncoalesce_ms = 20\n"
        ),
    )
    .await;
    let plane = Plane {
        cp,
        client: reqwest::Client::new(),
    };
    let (status, v) = plane
        .post(
            "/admin/backends",
            &json!({"name": "ext-0", "url": mock.url(), "max_requests_per_sec": 0}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("max_requests_per_sec"), "{v}");
    let (status, v) = plane
        .post(
            "/admin/backends",
            &json!({"name": "ext", "url": mock.url(), "max_requests_per_sec": 3}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["max_requests_per_sec"], 3, "{v}");

    let c = reqwest::Client::new();
    let proxy = Proxy::start(&dir, "p-backend", &[plane.cp.discovery_url()]).await;
    proxy.wait_ready(&c).await;
    wait_routes(&c, &proxy, "ext", &[("ext", 3)]).await;
    let started = Instant::now();
    let answers = futures::future::join_all((0..12).map(|_| {
        send(
            c.post(format!("{}/v1/chat/completions", proxy.url()))
                .json(&json!({"model": "ext", "messages": [{"role": "user", "content": "hi"}]})),
        )
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        ok >= 3 && ok <= bound(3, elapsed, 1),
        "{ok} of 12 in {elapsed:?}: {answers:?}"
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(a.body["error"]["code"], "rate_limit_exceeded", "{a:?}");
        assert!(a.retry_after.is_some(), "{a:?}");
    }
}

#[tokio::test]
async fn a_routes_file_endpoint_rate_limits_a_standalone_proxy() {
    let dir = temp_dir("rate-standalone");
    let mock = MockOpenAi::start(&dir, "mock-standalone", &["--model", "solo"]);
    let routes = format!(
        "[[models]]\nname = \"solo\"\nkind = \"chat\"\n\
         [[models.endpoints]]\nid = \"solo-1\"\naddress = \"{}\"\nmax_requests_per_sec = 3\n",
        mock.addr
    );
    let proxy = Proxy::start_standalone(&dir, "p-standalone", &routes, "").await;
    let c = reqwest::Client::new();
    wait_routes(&c, &proxy, "solo", &[("solo-1", 3)]).await;
    let started = Instant::now();
    let answers = futures::future::join_all((0..12).map(|_| {
        send(
            c.post(format!("{}/v1/chat/completions", proxy.url()))
                .json(&json!({"model": "solo", "messages": [{"role": "user", "content": "hi"}]})),
        )
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        ok >= 3 && ok <= bound(3, elapsed, 1),
        "{ok} of 12 in {elapsed:?}: {answers:?}"
    );
    assert!(ok < 12, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(a.body["error"]["code"], "rate_limit_exceeded", "{a:?}");
    }
}
