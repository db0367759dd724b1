//! OTLP span export through real processes (issue 15): a proxy and a control plane with
//! `[tracing] otlp_endpoint` pointed at the test kit's trace sink ([`OtlpSink`]). The proxy's
//! request spans carry the client's trace id (or the one it started, the one sent upstream)
//! and the request's model, endpoint, status and id; the control plane's API spans carry the
//! request id; a TEI instance it starts gets `--otlp-endpoint` and `--otlp-service-name`.
//!
//! The children export every 100 ms (`OTEL_BSP_SCHEDULE_DELAY`) so the waits are short; each
//! wait ends when the sink has received what it waits for.

use std::time::{Duration, Instant};

use multiverse_control::config::ControlConfig;
use multiverse_tests::*;
use serde_json::{json, Value};

/// How long spans may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(20);
const KEY: &str = "otlp-admin-key";

/// A test's launch whose children export spans every 100 ms.
fn launch(dir: &std::path::Path) -> Launch {
    let mut launch = Launch::for_tests(dir);
    launch
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    launch
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn named<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.trace_id == trace && s.name == name)
}

const PHASES: [&str; 5] = [
    "proxy.request",
    "proxy.route",
    "proxy.upstream.connect",
    "proxy.upstream.first_byte",
    "proxy.response",
];

#[tokio::test]
async fn proxy_spans_arrive_in_the_clients_trace_with_the_requests_attributes() {
    let dir = temp_dir("otlp-proxy");
    let sink = OtlpSink::start().await.expect("sink");
    let mock = MockOpenAi::start(&dir, "mock-otlp", &["--echo-headers"]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-otlp", mock.addr, "healthy")],
    );
    let file = Proxy::routes_file(&dir, "proxy-otlp");
    std::fs::write(&file, &routes).expect("routes file");
    let mut config = config_file::overlay(
        &Proxy::test_config(&[]),
        &format!("[tracing]\notlp_endpoint = \"{}\"\n", sink.endpoint()),
    )
    .expect("config");
    config.standalone.routes_file = Some(file);
    let proxy = Proxy::try_spawn(&launch(&dir), "proxy-otlp", config).expect("spawn");
    let client = reqwest::Client::new();
    proxy.try_wait_ready(&client).await.expect("ready");
    let chat = json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let mut req = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&chat);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };

    // Unsampled (flag 00): no spans; sent before the sampled ones, so they would be exported
    // no later than those.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let r = post(vec![(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    )])
    .await
    .expect("unsampled");
    assert_eq!(r.status(), 200);

    // The client's sampled trace: joined.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = post(vec![
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "otlp-req-1"),
    ])
    .await
    .expect("sampled");
    assert_eq!(r.status(), 200);
    let upstream = header(&r, "x-mock-seen-traceparent");

    // No traceparent: started (sample_ratio 1.0), its trace the one sent upstream.
    let r = post(vec![]).await.expect("started");
    assert_eq!(r.status(), 200);
    let started_tp = header(&r, "x-mock-seen-traceparent");
    let started: Vec<&str> = started_tp.split('-').collect();
    assert_eq!(started.len(), 4, "{started_tp}");
    let (started_trace, started_span) = (started[1].to_string(), started[2].to_string());

    let (ok, spans) = sink
        .wait_for(ARRIVAL, |s| {
            PHASES.iter().all(|p| named(s, trace, p).is_some())
                && named(s, &started_trace, "proxy.request").is_some()
        })
        .await;
    assert!(ok, "the phases' spans arrive: {spans:#?}");

    let root = named(&spans, trace, "proxy.request").expect("request span");
    assert_eq!(root.service, "multiverse-proxy");
    assert_eq!(
        root.parent_span_id, "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    let a = &root.attributes;
    assert_eq!(a["multiverse.request_id"], "otlp-req-1");
    assert_eq!(a["multiverse.model"], "demo");
    assert_eq!(a["multiverse.endpoint"], "mock-otlp");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["url.path"], "/v1/chat/completions");
    // Upstream saw the same trace, with the proxy's request span as its parent.
    assert_eq!(
        upstream,
        format!("00-{trace}-{}-01", root.span_id),
        "the backend's parent is the proxy's span"
    );
    for phase in &PHASES[1..] {
        let s = named(&spans, trace, phase).expect("phase span");
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{phase} under the request span"
        );
    }
    assert_eq!(
        named(&spans, trace, "proxy.upstream.connect")
            .expect("connect")
            .attributes["multiverse.endpoint"],
        "mock-otlp"
    );

    let started_root = named(&spans, &started_trace, "proxy.request").expect("started span");
    assert_eq!(
        started_root.parent_span_id, "",
        "a started trace's request span is its root"
    );
    assert_eq!(
        started_root.span_id, started_span,
        "and the parent sent upstream"
    );

    assert!(
        spans.iter().all(|s| s.trace_id != unsampled),
        "an unsampled trace exports nothing: {spans:#?}"
    );
}

/// A port range of two free ports (an instance takes one and its Prometheus port one).
fn free_pair() -> (u16, u16) {
    let base = 30000 + (std::process::id() % 1000) as u16 * 2;
    (base..base + 2000)
        .step_by(2)
        .find(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", *p + 1)).is_ok()
        })
        .map(|p| (p, p + 1))
        .expect("two free ports")
}

#[tokio::test]
async fn control_plane_api_spans_arrive_and_tei_instances_get_the_endpoint() {
    let dir = temp_dir("otlp-control");
    let sink = OtlpSink::start().await.expect("sink");
    let (lo, hi) = free_pair();
    let body = format!(
        "[admin]\napi_keys = [\"{KEY}\"]\n\
         [instances]\nbinary = \"{}\"\nport_range = [{lo}, {hi}]\nstartup_probe_interval_ms = 100\n\
         [tracing]\notlp_endpoint = \"{}\"\n",
        bin("mock-tei").display(),
        sink.endpoint()
    );
    let mut base = ControlConfig::default();
    base.admin.public_read = true;
    let config = config_file::overlay(&base, &body).expect("config");
    let (api, discovery) = (
        try_free_addr().expect("addr"),
        try_free_addr().expect("addr"),
    );
    let cp =
        Control::try_spawn_on(&launch(&dir), "cp-otlp", config, api, discovery).expect("spawn");
    let client = reqwest::Client::new();
    cp.try_wait_ready(&client).await.expect("ready");
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{}{path}", cp.api_url()))
            .header("authorization", format!("Bearer {KEY}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };

    // An API request in the caller's trace.
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = client
        .get(format!("{}/health", cp.api_url()))
        .header(
            "traceparent",
            "00-5bf92f3577b34da6a3ce929d0e0e4737-10f067aa0ba902b8-01",
        )
        .header("x-request-id", "otlp-op-1")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);

    // A TEI instance: started with the collector and its own name as the service.
    let r = send(
        reqwest::Method::POST,
        "/instances",
        Some(json!({"name": "emb-otlp", "model_id": "BAAI/bge-small-en-v1.5"})),
    )
    .await
    .expect("create");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let deadline = Instant::now() + ARRIVAL;
    let lines = loop {
        let v: Value = send(reqwest::Method::GET, "/instances/emb-otlp/logs", None)
            .await
            .expect("logs")
            .json()
            .await
            .unwrap_or(Value::Null);
        let lines: Vec<String> = v["lines"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if lines.iter().any(|l| l.contains("OTLP export configured")) || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let line = lines
        .iter()
        .find(|l| l.contains("OTLP export configured"))
        .unwrap_or_else(|| panic!("mock-tei logged its OTLP flags: {lines:#?}"));
    assert!(
        line.contains(&format!("otlp_endpoint={}", sink.endpoint())),
        "{line}"
    );
    assert!(line.contains("otlp_service_name=emb-otlp"), "{line}");

    let (ok, spans) = sink
        .wait_for(ARRIVAL, |s| named(s, trace, "control.api").is_some())
        .await;
    assert!(ok, "the API span arrives: {spans:#?}");
    let span = named(&spans, trace, "control.api").expect("api span");
    assert_eq!(span.service, "multiverse-control");
    assert_eq!(span.parent_span_id, "10f067aa0ba902b8");
    assert_eq!(span.attributes["multiverse.request_id"], "otlp-op-1");
    assert_eq!(span.attributes["url.path"], "/health");
    assert_eq!(span.attributes["http.response.status_code"], "200");
    // Requests without a traceparent are traced too (sample_ratio 1.0): the create's span.
    let (ok, spans) = sink
        .wait_for(ARRIVAL, |s| {
            s.iter().any(|s| {
                s.name == "control.api"
                    && s.attributes.get("url.path").map(String::as_str) == Some("/instances")
                    && s.attributes
                        .get("http.response.status_code")
                        .map(String::as_str)
                        == Some("201")
            })
        })
        .await;
    assert!(ok, "the create's span arrives: {spans:#?}");

    let r = send(reqwest::Method::DELETE, "/instances/emb-otlp", None)
        .await
        .expect("delete");
    assert!(r.status().is_success(), "{}", r.status());
}
