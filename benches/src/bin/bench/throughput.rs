//! The `throughput` scenario: closed-loop workers per target taking turns, the most requests
//! per second each target sustains (chat over HTTP/1.1, gRPC unary).

use std::time::Duration;

use serde::Serialize;

use multiverse_benches::load::engine::{self, ClosedPlan, TargetStats};
use multiverse_benches::load::report::{self, Summary};
use multiverse_benches::load::scenario::{Concurrency, Latency};
use multiverse_benches::load::stack::{Addrs, Stack};

use crate::cli::Settings;
use crate::cpu::{print_cpu, probes, with_cpu, CpuRecord, Probe};
use crate::latency::targets;

#[derive(Debug, Serialize)]
pub struct ThroughputRecord {
    pub scenario: &'static str,
    pub request: String,
    pub concurrency: usize,
    pub slice_s: f64,
    pub rounds: u32,
    /// Per target; `throughput_rps` is the closed-loop maximum.
    pub targets: Vec<Summary>,
    /// proxy req/s ÷ nginx req/s.
    pub proxy_over_nginx: Option<f64>,
    /// proxy req/s ÷ haproxy req/s.
    pub proxy_over_haproxy: Option<f64>,
    pub cpu: Vec<CpuRecord>,
    pub failures: Vec<String>,
}

pub fn throughput_scenario(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    scenario: Latency,
    s: &Settings,
) -> anyhow::Result<ThroughputRecord> {
    println!(
        "== throughput {}: closed loop, {} workers per target, {} × {} s turns per target",
        scenario.name(),
        s.closed_concurrency,
        s.closed_rounds,
        s.closed_slice_s
    );
    closed(rt, scenario, &stack.targets(), &probes(stack), s)
}

/// Closed-loop throughput of `addrs` (targets named "proxy", "nginx", "haproxy" get the
/// ratios), with the CPU of `probes`; prints its table.
pub fn closed(
    rt: &tokio::runtime::Runtime,
    scenario: Latency,
    addrs: &[(String, Addrs)],
    probes: &[Probe],
    s: &Settings,
) -> anyhow::Result<ThroughputRecord> {
    // Every worker gets its own connection (HTTP/1.1) or stream slot (h2).
    let c = Concurrency {
        http1_connections: s.closed_concurrency,
        sse_connections: s.closed_concurrency,
        h2_in_flight: s.closed_concurrency,
        bidi_streams: s.closed_concurrency,
    };
    let targets = targets(rt, scenario, addrs, &c)?;
    let plan = ClosedPlan {
        concurrency: s.closed_concurrency,
        slice: Duration::from_secs_f64(s.closed_slice_s),
        rounds: s.closed_rounds,
        warmup: Duration::from_secs_f64(s.closed_warmup_s),
    };
    let (stats, cpu) = with_cpu(
        probes,
        || Ok(engine::closed_loop(rt, &plan, &targets, s.timeout())),
        |stats, name| {
            stats
                .iter()
                .find(|t| t.name == name)
                .map(TargetStats::requests)
        },
    )?;
    let summaries: Vec<Summary> = stats
        .iter()
        .map(|t| Summary::new(&t.name, &t.latency, t.errors, t.window))
        .collect();
    print!("{}", report::table(&summaries, &[]));
    let rps = |name: &str| {
        summaries
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.throughput_rps)
    };
    let over = |other: &str| match (rps("proxy"), rps(other)) {
        (Some(p), Some(n)) if n > 0.0 => Some((p / n * 100.0).round() / 100.0),
        _ => None,
    };
    let (ratio, over_haproxy) = (over("nginx"), over("haproxy"));
    if let Some(r) = ratio {
        println!("   proxy ÷ nginx throughput: {r:.2}");
    }
    if let Some(r) = over_haproxy {
        println!("   proxy ÷ haproxy throughput: {r:.2}");
    }
    print_cpu(&cpu);
    let failures: Vec<String> = stats
        .iter()
        .filter_map(|t| t.failure())
        .map(|f| format!("throughput {}: {f}", scenario.name()))
        .collect();
    for f in &failures {
        println!("   FAILED: {f}");
    }
    println!();
    Ok(ThroughputRecord {
        scenario: scenario.name(),
        request: scenario.describe(),
        concurrency: s.closed_concurrency,
        slice_s: s.closed_slice_s,
        rounds: s.closed_rounds,
        targets: summaries,
        proxy_over_nginx: ratio,
        proxy_over_haproxy: over_haproxy,
        cpu,
        failures,
    })
}
