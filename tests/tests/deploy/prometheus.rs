//! A real Prometheus (Debian's package) with the shipped scrape config and alert rules,
//! scraping a proxy and a control plane.

use multiverse_tests::*;

use crate::{require, root};

/// A real Prometheus with the shipped prometheus.yml and alerts.yml (scrape and evaluation
/// every second instead of 15 s, targets files pointing at this test's processes) scrapes a
/// proxy and a control plane; the test reads a series of each back through the HTTP API.
#[tokio::test]
async fn prometheus_scrapes_both_planes() {
    let prometheus = require("prometheus");
    let dir = temp_dir("prometheus");
    let client = reqwest::Client::new();
    let mock = MockOpenAi::start(&dir, "mock-prom", &["--model", "demo"]);
    let control = Control::start(&dir, "cp-prom", &backends_toml(&[&mock], "demo")).await;
    let proxy = Proxy::start(&dir, "proxy-prom", &[control.discovery_url()]).await;
    proxy.wait_ready(&client).await;
    let chat = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(
            &serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(chat.status(), 200);

    let conf_dir = dir.join("prometheus");
    std::fs::create_dir_all(conf_dir.join("targets")).expect("mkdir");
    let shipped =
        std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).expect("config");
    let fast = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("scrape_timeout: 5s", "scrape_timeout: 1s");
    assert!(fast.contains("scrape_interval: 1s") && fast.contains("evaluation_interval: 1s"));
    std::fs::write(conf_dir.join("prometheus.yml"), fast).expect("write config");
    std::fs::copy(
        root().join("deploy/prometheus/alerts.yml"),
        conf_dir.join("alerts.yml"),
    )
    .expect("copy rules");
    std::fs::write(
        conf_dir.join("targets/proxies.yml"),
        format!("- targets: [\"{}\"]\n", proxy.admin),
    )
    .expect("targets");
    std::fs::write(
        conf_dir.join("targets/control-planes.yml"),
        format!("- targets: [\"{}\"]\n", control.api),
    )
    .expect("targets");

    let web = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        format!(
            "--config.file={}",
            conf_dir.join("prometheus.yml").display()
        ),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={web}"),
        "--log.level=warn".into(),
    ];
    let prom = Proc::spawn("prometheus", &prometheus, &args, &dir, false);
    wait_ok(
        &client,
        &format!("http://{web}/-/ready"),
        READY_TIMEOUT,
        &prom,
    )
    .await;

    let query = |q: &'static str| {
        let (client, web) = (client.clone(), web.clone());
        async move {
            let v: serde_json::Value = client
                .get(format!("http://{web}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let result = v["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        }
    };
    let proxied = eventually(READY_TIMEOUT, "the proxy's request counter in Prometheus", || {
        query(r#"multiverse_proxy_requests_total{job="multiverse-proxy",model="demo",status="200"}"#)
    })
    .await;
    assert_eq!(proxied[0]["metric"]["endpoint"], "mock-prom", "{proxied:?}");
    assert_eq!(proxied[0]["value"][1], "1", "{proxied:?}");
    let backends = eventually(
        READY_TIMEOUT,
        "the control plane's backends gauge in Prometheus",
        || query(r#"multiverse_control_backends{job="multiverse-control"}"#),
    )
    .await;
    assert_eq!(backends[0]["value"][1], "1", "{backends:?}");
    assert_eq!(
        backends[0]["metric"]["instance"],
        control.api.to_string().as_str(),
        "{backends:?}"
    );
    let acked = eventually(
        READY_TIMEOUT,
        "the proxy's ACKed version in Prometheus",
        || query(r#"multiverse_control_proxy_acked_version{node="proxy-prom"}"#),
    )
    .await;
    assert!(
        acked[0]["value"][1].as_str().is_some_and(|v| v != "0"),
        "{acked:?}"
    );

    // Both jobs up, and the shipped rules loaded and evaluating without errors.
    let up = eventually(READY_TIMEOUT, "both targets up", || async {
        let r = query("up == 1").await?;
        (r.len() == 2).then_some(r)
    })
    .await;
    let jobs: Vec<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    assert!(
        jobs.contains(&"multiverse-proxy") && jobs.contains(&"multiverse-control"),
        "{jobs:?}"
    );
    let rules = eventually(READY_TIMEOUT, "the alert rules evaluated", || {
        let (client, web) = (client.clone(), web.clone());
        async move {
            let v: serde_json::Value = client
                .get(format!("http://{web}/api/v1/rules"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let rules: Vec<serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules
                .iter()
                .all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .then_some(rules)
        }
    })
    .await;
    assert_eq!(rules.len(), 13, "{rules:?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // Nothing is wrong with this stack, so no alert fires.
    let firing: Vec<&serde_json::Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:?}");
    drop(prom);
}
