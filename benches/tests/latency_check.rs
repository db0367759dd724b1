//! Smoke test of `latency-check`: a `--quick --json` run must measure both targets (and, with
//! `--baseline-bin`, a second proxy interleaved) without a single failed request. It starts `mock-openai` and `multiverse-proxy` from the same target
//! directory, so `cargo build --workspace --bins` must have run first (scripts/test does).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[test]
fn quick_json_run_measures_both_targets() {
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_latency-check"))
        .args(["--quick", "--json"])
        .output()
        .expect("run latency-check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "latency-check failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    // --json prints exactly one line: the record.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got:\n{stdout}");
    let record: Value = serde_json::from_str(lines[0]).expect("the line is JSON");

    assert_eq!(record["ok"], true, "{record}");
    assert!(record["command"]
        .as_str()
        .is_some_and(|c| c.contains("--quick") && c.contains("--json")));
    assert!(record["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
    assert!(record["machine"]["cpu_model"].is_string());
    for name in ["direct", "proxy"] {
        let target = record["targets"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no target {name} in {record}"));
        assert!(target["count"].as_u64().is_some_and(|c| c > 0), "{target}");
        assert_eq!(target["errors"], 0, "{target}");
        assert_eq!(record["warmup_errors"][name], 0, "{record}");
        for p in ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"] {
            assert!(
                target[p].as_u64().is_some_and(|v| v > 0),
                "{name} {p}: {target}"
            );
        }
        assert!(target["p50_us"].as_u64() <= target["p99_us"].as_u64());
    }
    assert!(record["added_proxy_minus_direct"]["p50_us"].is_i64());
    // Quick mode really is quick: 0.5 s warm-up + 2 s measured, plus start-up.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn quick_ab_run_measures_a_baseline_proxy_interleaved() {
    let proxy = std::path::Path::new(env!("CARGO_BIN_EXE_latency-check"))
        .with_file_name("multiverse-proxy");
    let output = Command::new(env!("CARGO_BIN_EXE_latency-check"))
        .args(["--quick", "--json", "--baseline-bin"])
        .arg(&proxy)
        .output()
        .expect("run latency-check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "latency-check --baseline-bin failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let record: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(record["ok"], true, "{record}");
    let names: Vec<&str> = record["targets"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["direct", "proxy", "baseline"]);
    for t in record["targets"].as_array().into_iter().flatten() {
        assert!(t["count"].as_u64().is_some_and(|c| c > 0), "{t}");
        assert_eq!(t["errors"], 0, "{t}");
    }
    // Arrivals rotate over three targets: each gets a third of the rate.
    let per_target = record["settings"]["rate_per_target"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((per_target - 200.0 / 3.0).abs() < 1e-9, "{per_target}");
    assert!(record["proxy_minus_baseline"]["p50_us"].is_i64());
    assert!(record["added_baseline_minus_direct"]["p99_us"].is_i64());
}
