//! The `models-10k` scenario: a second proxy with a 10 000-model routing table, its RSS and
//! chat latency next to the proxy with a small table in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use multiverse_benches::load::report::Added;
use multiverse_benches::load::rss;
use multiverse_benches::load::stack::{routes, standalone_proxy, Stack};
use multiverse_testkit::{Launch, Proxy};

use crate::cli::Settings;
use crate::latency::{beside_proxy, print_latency};
use crate::memory::fmt_kib;
use crate::record::LatencyRecord;

#[derive(Debug, Serialize)]
pub struct ModelsRecord {
    pub models: usize,
    pub routes_file_bytes: usize,
    pub ready_ms: f64,
    pub idle_kib: Option<u64>,
    pub after_load_kib: Option<u64>,
    pub small_table_idle_kib: Option<u64>,
    pub latency: LatencyRecord,
    /// proxy-10k − proxy, per percentile, µs.
    pub big_minus_small: Option<Added>,
}

/// A second proxy with `models` models in its table, against the small-table proxy.
pub fn models_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<ModelsRecord> {
    println!(
        "== models-10k: a proxy with {} models in its routing table vs the proxy with 3, chat",
        s.models + 3
    );
    let routes = routes(&stack.mocks.addrs, s.models);
    let started = Instant::now();
    let big = standalone_proxy(launch, "proxy-10k", &routes)?;
    rt.block_on(big.try_wait_ready(client))?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    let routes_file = Proxy::routes_file(&launch.dir, "proxy-10k");
    let routes_file_bytes = std::fs::metadata(&routes_file)
        .with_context(|| format!("cannot read {}", routes_file.display()))?
        .len() as usize;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss::rss_kib(big.proc.pid());
    println!(
        "   routes file {:.1} MiB, ready after {:.0} ms, RSS idle {} (small table: {})",
        routes_file_bytes as f64 / 1048576.0,
        ready_ms,
        fmt_kib(idle),
        fmt_kib(rss::rss_kib(stack.proxy.proc.pid()))
    );
    let (latency, big_minus_small) = beside_proxy(
        rt,
        stack,
        s,
        "proxy-10k",
        big.proc.pid(),
        big.listen,
        "models-10k",
    )?;
    let after = rss::rss_kib(big.proc.pid());
    big.proc.ensure_running()?;
    print_latency(&latency);
    if let Some(d) = big_minus_small {
        println!(
            "   proxy-10k − proxy: p50 {:+} µs, p99 {:+} µs; RSS after load {}",
            d.p50_us,
            d.p99_us,
            fmt_kib(after)
        );
        println!();
    }
    Ok(ModelsRecord {
        models: s.models + 3,
        routes_file_bytes,
        ready_ms: (ready_ms * 10.0).round() / 10.0,
        idle_kib: idle,
        after_load_kib: after,
        small_table_idle_kib: rss::rss_kib(stack.proxy.proc.pid()),
        latency,
        big_minus_small,
    })
}
