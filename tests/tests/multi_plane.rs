//! A proxy fed by two control planes: the union of their endpoints per model, what happens to
//! one plane's endpoints when it goes away (kept by default, withdrawn after a grace period
//! when configured).

use std::collections::HashSet;
use std::time::Duration;

use multiverse_tests::*;
use serde_json::json;

async fn served(client: &reqwest::Client, proxy: &Proxy, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let resp = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        if let Some(e) = resp.headers().get("x-multiverse-endpoint") {
            seen.insert(e.to_str().unwrap_or_default().to_string());
        }
    }
    seen
}

#[tokio::test]
async fn one_planes_endpoints_are_kept_or_withdrawn_after_the_grace() {
    let dir = temp_dir("multi-plane");
    let a = MockOpenAi::start(&dir, "mock-a", &[]);
    let b = MockOpenAi::start(&dir, "mock-b", &[]);
    let cp_a = Control::start(&dir, "cp-a", &backends_toml(&[&a], "demo")).await;
    let mut cp_b = Control::start(&dir, "cp-b", &backends_toml(&[&b], "demo")).await;
    let planes = [cp_a.discovery_url(), cp_b.discovery_url()];
    let keeping = Proxy::start(&dir, "proxy-keep", &planes).await;
    // This one withdraws a plane's routes 600 ms after losing it.
    let withdrawing = Proxy::start_with(
        &dir,
        "proxy-withdraw",
        &planes,
        "[discovery]\nwithdraw_after_ms = 600\n",
    )
    .await;
    let client = reqwest::Client::new();
    let both: HashSet<String> = ["mock-a".to_string(), "mock-b".to_string()].into();
    for proxy in [&keeping, &withdrawing] {
        proxy.wait_ready(&client).await;
        eventually(
            Duration::from_secs(10),
            "both planes' endpoints",
            || async { (served(&client, proxy, 20).await == both).then_some(()) },
        )
        .await;
    }

    cp_b.proc.kill();
    let only_a: HashSet<String> = ["mock-a".to_string()].into();
    eventually(
        Duration::from_secs(15),
        "cp-b's endpoints withdrawn",
        || async { (served(&client, &withdrawing, 10).await == only_a).then_some(()) },
    )
    .await;
    // The default proxy keeps routing to cp-b's backend, which is still up.
    assert_eq!(served(&client, &keeping, 20).await, both);
}
