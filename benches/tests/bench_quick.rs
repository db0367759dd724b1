//! Smoke test of `bench`: a `--quick` run must finish successfully and every scenario must
//! report samples (nginx and haproxy rows only when they are installed). It starts the mocks,
//! `multiverse-proxy` and `multiverse-control` from the same target directory, so
//! `cargo build --workspace --bins` must have run first (scripts/test does).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn target<'a>(targets: &'a Value, name: &str) -> Option<&'a Value> {
    targets
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
}

fn assert_measured(what: &str, t: &Value) {
    assert!(t["count"].as_u64().is_some_and(|c| c > 0), "{what}: {t}");
    assert_eq!(t["errors"], 0, "{what}: {t}");
    assert!(t["p50_us"].as_u64().is_some_and(|v| v > 0), "{what}: {t}");
    assert!(t["p50_us"].as_u64() <= t["p99_us"].as_u64(), "{what}: {t}");
}

#[test]
fn quick_run_reports_every_scenario() {
    let json = std::env::temp_dir().join(format!("bench-quick-{}.json", std::process::id()));
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --quick failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let text = std::fs::read_to_string(&json).expect("the JSON file");
    let _ = std::fs::remove_file(&json);
    let r: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["failures"], serde_json::json!([]));
    assert!(r["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
    assert!(r["command"].as_str().is_some_and(|c| c.contains("--quick")));
    let nginx = r["nginx"]["used"] == true;
    let mut names = vec!["direct", "proxy"];
    if nginx {
        names.push("nginx");
    }
    let haproxy = r["haproxy"]["used"] == true;
    if haproxy {
        names.push("haproxy");
    } else {
        assert!(r["haproxy"]["note"].is_string(), "why no haproxy: {r}");
    }

    // Every latency scenario, every target, every metric.
    let latency = r["latency"].as_array().expect("latency results");
    let scenarios: Vec<&str> = latency
        .iter()
        .filter_map(|l| l["scenario"].as_str())
        .collect();
    assert_eq!(
        scenarios,
        [
            "chat",
            "chat-h2c",
            "sse",
            "embed-http",
            "grpc-unary",
            "grpc-bidi"
        ]
    );
    for l in latency {
        let metrics = l["metrics"].as_array().expect("metrics");
        let expected = if l["scenario"] == "sse" { 3 } else { 1 };
        assert_eq!(metrics.len(), expected, "{l}");
        for m in metrics {
            for name in &names {
                let what = format!("{} {} {name}", l["scenario"], m["metric"]);
                let t = target(&m["targets"], name).unwrap_or_else(|| panic!("{what}: missing"));
                assert_measured(&what, t);
            }
            assert!(m["added"]["proxy − direct"]["p99_us"].is_i64(), "{m}");
        }
    }

    // Closed-loop throughput.
    let throughput = r["throughput"].as_array().expect("throughput results");
    assert_eq!(throughput.len(), 2);
    for t in throughput {
        for name in &names {
            let what = format!("throughput {} {name}", t["scenario"]);
            let s = target(&t["targets"], name).unwrap_or_else(|| panic!("{what}: missing"));
            assert_measured(&what, s);
            assert!(
                s["throughput_rps"].as_f64().is_some_and(|x| x > 0.0),
                "{what}"
            );
        }
    }

    // Rates: chat at each quick rate, then closed loops at 1 and 2 threads; every target.
    let rates = &r["rates"];
    let open = rates["open_loop"].as_array().expect("rates open loop");
    let rate_list: Vec<f64> = open
        .iter()
        .filter_map(|l| l["rate_per_target"].as_f64())
        .collect();
    assert_eq!(rate_list, [50.0, 500.0], "{rates}");
    for l in open {
        for name in &names {
            let what = format!("rates {} {name}", l["rate_per_target"]);
            let m = &l["metrics"][0];
            let t = target(&m["targets"], name).unwrap_or_else(|| panic!("{what}: missing"));
            assert_measured(&what, t);
        }
    }
    let closed = rates["closed_loop"].as_array().expect("rates closed loop");
    let threads: Vec<u64> = closed
        .iter()
        .filter_map(|c| c["threads"].as_u64())
        .collect();
    assert_eq!(threads, [1, 2], "{rates}");
    for c in closed {
        for name in &names {
            let what = format!("rates closed {}t {name}", c["threads"]);
            let t = &c["throughput"]["targets"];
            let s = target(t, name).unwrap_or_else(|| panic!("{what}: missing"));
            assert_measured(&what, s);
            assert!(
                s["throughput_rps"].as_f64().is_some_and(|x| x > 0.0),
                "{what}"
            );
        }
        assert_eq!(
            c["throughput"]["proxy_over_haproxy"].is_f64(),
            haproxy,
            "{c}"
        );
    }

    // Propagation: every change seen on every proxy; nothing failed under load.
    let p = &r["propagation"];
    let changes = p["changes"].as_array().expect("changes");
    assert!(!changes.is_empty(), "{p}");
    for c in changes {
        assert_eq!(
            c["visible_ms"].as_array().map(Vec::len),
            p["proxies"].as_u64().map(|n| n as usize),
            "{c}"
        );
        assert!(c["visible_all_ms"].as_f64().is_some_and(|x| x > 0.0), "{c}");
    }
    let u = &p["under_load"];
    assert_eq!(u["failed_requests"], 0, "{u}");
    assert!(u["requests"].as_u64().is_some_and(|n| n > 0), "{u}");
    assert!(u["changes"].as_u64().is_some_and(|n| n > 0), "{u}");

    // Memory: idle and soak numbers.
    let m = &r["memory"];
    assert!(m["idle_start_kib"].as_u64().is_some_and(|k| k > 0), "{m}");
    assert!(m["soak"]["end_kib"].as_u64().is_some_and(|k| k > 0), "{m}");
    assert!(!m["soak"]["samples"].as_array().expect("samples").is_empty());
    assert_measured("soak", &m["soak"]["latency"]);

    // The big table: its own proxy, measured next to the small one.
    let big = &r["models_10k"];
    assert!(big["models"].as_u64().is_some_and(|n| n >= 10_000), "{big}");
    assert!(big["idle_kib"].as_u64().is_some_and(|k| k > 0), "{big}");
    let metric = &big["latency"]["metrics"][0];
    for name in ["direct", "proxy", "proxy-10k"] {
        let t = target(&metric["targets"], name).unwrap_or_else(|| panic!("10k {name}"));
        assert_measured(&format!("models-10k {name}"), t);
    }

    // Asking streams' usage: the proxy beside one that does not, every stream metric.
    let usage = &r["usage"];
    for metric in usage["latency"]["metrics"]
        .as_array()
        .expect("usage metrics")
    {
        for name in ["direct", "proxy", "proxy-usage-off"] {
            let t = target(&metric["targets"], name).unwrap_or_else(|| panic!("usage {name}"));
            assert_measured(&format!("usage {} {name}", metric["metric"]), t);
        }
    }
    assert!(
        usage["first_event_on_minus_off"]["p50_us"].is_i64(),
        "{usage}"
    );
    // Arrow batch embedding: every arm embedded every row.
    let arrow = &r["arrow"];
    let arms = arrow["arms"].as_array().expect("arrow arms");
    assert_eq!(arms.len(), 3, "{arrow}");
    for a in arms {
        assert_eq!(a["failed_rows"], 0, "{a}");
        assert!(a["rows_per_s"].as_f64().is_some_and(|x| x > 0.0), "{a}");
    }

    // Hedging: both arms measured, without failures.
    let hedge = &r["hedge"]["arms"];
    for name in ["off", "hedged"] {
        let t = target(hedge, name).unwrap_or_else(|| panic!("hedge {name}: {hedge}"));
        assert_measured(&format!("hedge {name}"), t);
    }

    // Routing policies: every policy's proxy measured and compared with least_request; both
    // slow-endpoint arms measured, every measured request counted on one of its endpoints.
    let policies = &r["policies"];
    let metric = &policies["hot_path"]["metrics"][0];
    let policy_names = [
        "least_request",
        "round_robin",
        "weighted",
        "peak_ewma",
        "prefix_affinity",
        "least_request+queue",
    ];
    for name in std::iter::once("direct").chain(policy_names) {
        let t = target(&metric["targets"], name).unwrap_or_else(|| panic!("policies {name}"));
        assert_measured(&format!("policies {name}"), t);
    }
    for name in &policy_names[1..] {
        let d = &policies["minus_least_request"][name];
        assert!(d["p99_us"].is_i64(), "policies {name}: {policies}");
    }
    let arms = policies["slow"]["arms"].as_array().expect("slow arms");
    assert_eq!(arms.len(), 2, "{policies}");
    for arm in arms {
        assert_measured(&format!("policies slow {}", arm["lb"]), &arm["latency"]);
        let counted: u64 = arm["per_endpoint"]
            .as_object()
            .expect("per endpoint")
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(Some(counted), arm["latency"]["count"].as_u64(), "{arm}");
        let share = arm["slow_share"].as_f64().expect("slow share");
        assert!((0.0..=1.0).contains(&share), "{arm}");
    }

    // Quick really is quick.
    assert!(started.elapsed() < Duration::from_secs(180));
}
