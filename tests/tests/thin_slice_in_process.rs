//! The thin slice in one process: two mock-openai servers, the control plane (`App`) and the
//! proxy (`Proxy`) as libraries on port 0 inside this test — no child process, no signal, no
//! port guessing. The process-based `thin_slice` tests stay for what needs processes (signals,
//! restarts); these show the same request path works when both are embedded.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use multiverse_control::app::App;
use multiverse_control::config::ControlConfig;
use multiverse_mocks::common::Running;
use multiverse_mocks::openai::{self, OpenAiArgs};
use multiverse_proxy::config::{ControlPlaneConfig, ProxyConfig};
use multiverse_proxy::{Proxy, Stop};
use multiverse_tests::stack::control::backend;
use multiverse_tests::{eventually, ScratchDir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// What one test runs: the mocks, the control plane's task and its stop switch, the proxy.
struct Slice {
    _dir: ScratchDir,
    mocks: Vec<Running>,
    control_stop: tokio::sync::oneshot::Sender<()>,
    control: tokio::task::JoinHandle<anyhow::Result<()>>,
    proxy: Proxy,
    client: reqwest::Client,
}

async fn mock(name: &str) -> Running {
    let args = OpenAiArgs::try_parse_from([
        "mock-openai",
        "--listen",
        "127.0.0.1:0",
        "--name",
        name,
        "--tokens",
        "5",
        "--chunk-interval-ms",
        "1",
    ])
    .expect("mock-openai arguments");
    openai::spawn(args).await.expect("mock-openai starts")
}

async fn slice() -> Slice {
    let dir = ScratchDir::new("slice-in-process").expect("scratch dir");
    let mocks = vec![mock("mock-a").await, mock("mock-b").await];
    let mut cfg = ControlConfig {
        id: Some("cp-in-process".into()),
        data_dir: Some(dir.path().join("control-data")),
        backends: vec![
            backend("mock-a", &mocks[0].url(), &["demo"]),
            backend("mock-b", &mocks[1].url(), &["demo"]),
        ],
        ..ControlConfig::default()
    };
    cfg.listen.api = "127.0.0.1:0".into();
    cfg.listen.discovery = "127.0.0.1:0".into();
    let app = App::build(cfg).await.expect("the control plane builds");
    let discovery = app.addrs().discovery;
    let (control_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(app.serve(async move {
        let _ = stopped.await;
    }));

    let mut pcfg = ProxyConfig {
        node_id: Some("proxy-in-process".into()),
        control_planes: vec![ControlPlaneConfig {
            url: format!("http://{discovery}"),
        }],
        ..ProxyConfig::default()
    };
    pcfg.listen.clients = "127.0.0.1:0".into();
    pcfg.listen.admin = "127.0.0.1:0".into();
    pcfg.server.threads = Some(1);
    let proxy = Proxy::start(&pcfg).expect("the proxy starts");

    // Ready means: the control plane's snapshot arrived with both backends healthy in it.
    eventually(WAIT, "a route with two healthy endpoints", || {
        let ready = proxy.is_ready()
            && proxy.state().table().route("demo").map(|r| r.available()) == Some(2);
        async move { ready.then_some(()) }
    })
    .await;
    Slice {
        _dir: dir,
        mocks,
        control_stop,
        control,
        proxy,
        client: reqwest::Client::new(),
    }
}

impl Slice {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.clients_addr())
    }

    async fn stop(self) {
        assert_eq!(
            self.proxy.stop(Stop::Graceful).await,
            0,
            "nothing left in flight"
        );
        let _ = self.control_stop.send(());
        self.control
            .await
            .expect("control task")
            .expect("the control plane stops cleanly");
        for m in self.mocks {
            m.stop().await.expect("mock stops");
        }
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_both_backends_through_an_embedded_control_plane_and_proxy() {
    let s = slice().await;
    let mut served = HashSet::new();
    for _ in 0..20 {
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .json(&chat(false))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let instance = resp.headers()["x-mock-instance"]
            .to_str()
            .expect("ascii")
            .to_string();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["object"], "chat.completion");
        served.insert(instance);
    }
    let want: HashSet<String> = ["mock-a", "mock-b"].iter().map(|s| s.to_string()).collect();
    assert_eq!(served, want, "both backends served");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_with_done_and_an_unknown_model_is_an_openai_404() {
    let s = slice().await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&chat(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let body = resp.text().await.expect("stream");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "stream: {body}");
    assert!(events.len() >= 6, "5 tokens and [DONE]: {body}");

    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    s.stop().await;
}
