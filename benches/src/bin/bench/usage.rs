//! The `usage` scenario: what asking a stream's usage for the client costs (issue 15,
//! `[usage] request_stream_usage`). The stack's proxy (on, the default) and a second proxy with
//! it off, interleaved on the `sse` scenario's stream (`"stream": true`, no `stream_options`):
//! with it on, the body is parsed and rewritten, the backend sends one more event (the usage
//! chunk, and `"usage": null` in every other), the proxy reads and hides it. The first event
//! shows the request side's cost (parse and rewrite); the whole stream also waits for the extra
//! event, which `mock-openai` paces like a token (`--chunk-interval-ms`), so there it adds about
//! one gap (a real backend sends the usage chunk right after the last one). Reading the usage
//! of responses and the request ids have no switch (always on), so their cost is in every
//! proxy row and cannot be told apart here: `benches/ab/usage-ids-cost.sh` measures it against
//! a knockout build (README, "Request ids and usage reading").

use multiverse_benches::load::report::Added;
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::stack::{routes, Addrs, Stack};
use multiverse_proxy::config::ProxyConfig;
use multiverse_testkit::{Launch, Proxy};
use serde::Serialize;

use crate::cli::Settings;
use crate::cpu::{generator_probe, mocks_probe, Probe};
use crate::latency::{measure, print_latency};
use crate::record::LatencyRecord;

const OFF: &str = "proxy-usage-off";

#[derive(Debug, Serialize)]
pub struct UsageRecord {
    pub latency: LatencyRecord,
    /// proxy (asking) − proxy-usage-off, time to first event, per percentile, µs.
    pub first_event_on_minus_off: Option<Added>,
    /// The same for the whole stream.
    pub stream_on_minus_off: Option<Added>,
}

pub fn usage_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<UsageRecord> {
    println!("== usage: the proxy asking streams' usage (default) vs {OFF}, sse");
    let mut config = ProxyConfig::default();
    config.usage.request_stream_usage = false;
    let off = Proxy::try_spawn_standalone(launch, OFF, config, &routes(&stack.mocks.addrs, 0))?;
    rt.block_on(off.try_wait_ready(client))?;
    let addrs = vec![
        ("direct".to_string(), stack.mocks.addrs),
        ("proxy".to_string(), Addrs::single(stack.proxy.listen)),
        (OFF.to_string(), Addrs::single(off.listen)),
    ];
    let probe = |label: &str, pid: u32| Probe {
        label: label.into(),
        pids: vec![pid],
        children: false,
        target: Some(label.into()),
    };
    let probes = [
        probe("proxy", stack.proxy.proc.pid()),
        probe(OFF, off.proc.pid()),
        mocks_probe(stack),
        generator_probe(),
    ];
    let mut latency = measure(rt, Latency::Sse, &addrs, s, &probes)?;
    latency.scenario = "usage";
    off.proc.ensure_running()?;
    let on_minus_off = |metric: &str| {
        let m = latency.metrics.iter().find(|m| m.metric == metric)?;
        Some(Added::between(m.target("proxy")?, m.target(OFF)?))
    };
    let first_event_on_minus_off = on_minus_off("first_event");
    let stream_on_minus_off = on_minus_off("latency");
    print_latency(&latency);
    for (what, d) in [
        ("first event", first_event_on_minus_off),
        ("whole stream", stream_on_minus_off),
    ] {
        if let Some(d) = d {
            println!(
                "   proxy − {OFF}, {what}: p50 {:+} µs, p99 {:+} µs",
                d.p50_us, d.p99_us
            );
        }
    }
    println!();
    Ok(UsageRecord {
        latency,
        first_event_on_minus_off,
        stream_on_minus_off,
    })
}
