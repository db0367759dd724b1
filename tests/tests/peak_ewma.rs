//! `lb = "peak_ewma"` (issue 14), as real processes on loopback: of two mock-openai endpoints,
//! one answers 150 ms later than the other; with peak EWMA the slow one gets a small share of a
//! model's requests after its first answers, where least-request (the same endpoints, another
//! model) splits them about evenly.

use multiverse_tests::*;
use serde_json::json;

fn model(name: &str, lb: &str, fast: &MockOpenAi, slow: &MockOpenAi) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nkind = \"chat\"\nlb = \"{lb}\"\n\
         [[models.endpoints]]\nid = \"{name}-fast\"\naddress = \"{}\"\n\
         [[models.endpoints]]\nid = \"{name}-slow\"\naddress = \"{}\"\n",
        fast.addr, slow.addr
    )
}

/// How many of `n` sequential requests for `model` the slow endpoint served.
async fn slow_share(c: &reqwest::Client, proxy: &Proxy, model: &str, n: usize) -> usize {
    let mut slow = 0;
    for _ in 0..n {
        let r = c
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("the proxy answers");
        assert_eq!(r.status(), 200);
        let endpoint = r
            .headers()
            .get("x-multiverse-endpoint")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if endpoint.ends_with("-slow") {
            slow += 1;
        }
    }
    slow
}

#[tokio::test]
async fn peak_ewma_moves_traffic_off_the_slow_endpoint() {
    let dir = temp_dir("peak-ewma");
    let models = ["--model", "pe", "--model", "lr"];
    let fast = MockOpenAi::start(&dir, "mock-fast", &models);
    let mut slow_args = models.to_vec();
    slow_args.extend(["--latency-ms", "150"]);
    let slow = MockOpenAi::start(&dir, "mock-slow", &slow_args);
    let routes =
        model("pe", "peak_ewma", &fast, &slow) + &model("lr", "least_request", &fast, &slow);
    let proxy = Proxy::start_standalone(&dir, "proxy-ewma", &routes, "").await;
    let c = reqwest::Client::new();

    let dump = proxy.config_dump(&c).await.expect("config_dump");
    assert_eq!(
        dump["table"]["models"]["pe"]["policy"]["lb"], "peak_ewma",
        "{dump}"
    );
    // 40 requests take about a second: the slow endpoint is tried once or twice, then avoided.
    let pe = slow_share(&c, &proxy, "pe", 40).await;
    assert!(
        pe <= 3,
        "peak_ewma sent {pe} of 40 requests to the slow endpoint"
    );
    // The same endpoints by least-request: sequential requests find both idle and split.
    let lr = slow_share(&c, &proxy, "lr", 20).await;
    assert!(
        lr >= 3,
        "least_request sent {lr} of 20 to the slow endpoint (expected ~10)"
    );
}
