//! The latency scenarios (`chat`, `chat-h2c`, `sse`, `embed-http`, `grpc-unary`,
//! `grpc-bidi`): open-loop arrivals interleaved across the targets, per-target percentiles and
//! what each proxy adds over direct ([`measure`]), and their tables.

use std::time::Duration;

use multiverse_benches::load::engine::{self, Target};
use multiverse_benches::load::report::Added;
use multiverse_benches::load::scenario::{self, Concurrency, Latency};
use multiverse_benches::load::schedule::Plan;
use multiverse_benches::load::stack::{Addrs, Stack};

use crate::cli::Settings;
use crate::cpu::{generator_probe, mocks_probe, print_cpu, probes, with_cpu, Probe};
use crate::record::{LatencyRecord, MetricRecord, PacerRecord};

pub fn plan(rate_per_target: f64, targets: usize, s: &Settings) -> Plan {
    Plan {
        rate: rate_per_target * targets as f64,
        warmup: Duration::from_secs_f64(s.warmup_s),
        duration: Duration::from_secs_f64(s.duration_s),
    }
}

/// Builds the targets of `scenario` for `addrs` (in this order).
pub fn targets(
    rt: &tokio::runtime::Runtime,
    scenario: Latency,
    addrs: &[(String, Addrs)],
    c: &Concurrency,
) -> anyhow::Result<Vec<Target>> {
    rt.block_on(async {
        let mut out = Vec::new();
        for (name, a) in addrs {
            out.push(Target {
                name: name.clone(),
                call: scenario::caller(scenario, name, a, c).await?,
            });
        }
        anyhow::Ok(out)
    })
}

pub fn measure(
    rt: &tokio::runtime::Runtime,
    scenario: Latency,
    addrs: &[(String, Addrs)],
    s: &Settings,
    probes: &[Probe],
) -> anyhow::Result<LatencyRecord> {
    let targets = targets(rt, scenario, addrs, &s.concurrency)?;
    let rate = if scenario.is_sse() {
        s.sse_rate_per_target
    } else {
        s.rate_per_target
    };
    let plan = plan(rate, targets.len(), s);
    let (result, cpu) = with_cpu(
        probes,
        || engine::open_loop(rt, &plan, &targets, s.timeout(), None),
        |r, name| {
            r.targets
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.requests())
        },
    )?;
    let mut metrics = Vec::new();
    if scenario.is_sse() {
        metrics.push(MetricRecord::new("first_event", &result.targets, |t| {
            &t.first_event
        }));
        metrics.push(MetricRecord::new("gap", &result.targets, |t| &t.gaps));
    }
    metrics.push(MetricRecord::new("latency", &result.targets, |t| {
        &t.latency
    }));
    let failures = result
        .targets
        .iter()
        .filter_map(|t| t.failure())
        .map(|f| format!("{}: {f}", scenario.name()))
        .collect();
    Ok(LatencyRecord {
        scenario: scenario.name(),
        request: scenario.describe(),
        rate_per_target: rate,
        duration_s: s.duration_s,
        warmup_s: s.warmup_s,
        metrics,
        warmup_errors: result
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.warmup_errors))
            .collect(),
        pacer: PacerRecord::new(&result.pacer),
        cpu,
        failures,
    })
}

/// Chat latency of the stack's proxy and a second proxy `label` (process `pid`, client port
/// `listen`) interleaved in one run, with the CPU of each: the record (named `scenario`) and
/// `label − proxy` per percentile. The scenarios that compare a variant of the proxy with the
/// plain one (`models-10k`, `keys`) share it.
pub fn beside_proxy(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    s: &Settings,
    label: &str,
    pid: u32,
    listen: std::net::SocketAddr,
    scenario: &'static str,
) -> anyhow::Result<(LatencyRecord, Option<Added>)> {
    let base = Side {
        label: "proxy",
        pid: stack.proxy.proc.pid(),
        listen: stack.proxy.listen,
    };
    let subject = Side { label, pid, listen };
    two_proxies(rt, stack, s, &base, &subject, scenario)
}

/// One proxy of a [`two_proxies`] comparison: its target label, process and client port.
pub struct Side<'a> {
    pub label: &'a str,
    pub pid: u32,
    pub listen: std::net::SocketAddr,
}

/// Chat latency of `base` and `subject` (and direct) interleaved in one run, with the CPU of
/// each: the record (named `scenario`) and `subject − base` per percentile.
pub fn two_proxies(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    s: &Settings,
    base: &Side<'_>,
    subject: &Side<'_>,
    scenario: &'static str,
) -> anyhow::Result<(LatencyRecord, Option<Added>)> {
    let addrs = vec![
        ("direct".to_string(), stack.mocks.addrs),
        (base.label.to_string(), Addrs::single(base.listen)),
        (subject.label.to_string(), Addrs::single(subject.listen)),
    ];
    let probe = |side: &Side<'_>| Probe {
        label: side.label.into(),
        pids: vec![side.pid],
        children: false,
        target: Some(side.label.into()),
    };
    let probes = [
        probe(base),
        probe(subject),
        mocks_probe(stack),
        generator_probe(),
    ];
    let mut latency = measure(rt, Latency::Chat, &addrs, s, &probes)?;
    latency.scenario = scenario;
    let m = latency.metrics.last().expect("a latency metric");
    let diff = match (m.target(subject.label), m.target(base.label)) {
        (Some(other), Some(p)) => Some(Added::between(other, p)),
        _ => None,
    };
    Ok((latency, diff))
}

pub fn latency_scenario(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    scenario: Latency,
    s: &Settings,
) -> anyhow::Result<LatencyRecord> {
    let addrs = stack.targets();
    println!("== {}: {}", scenario.name(), scenario.describe());
    let r = measure(rt, scenario, &addrs, s, &probes(stack))?;
    print_latency(&r);
    Ok(r)
}

pub fn print_latency(r: &LatencyRecord) {
    println!(
        "   open loop {} req/s per target, interleaved, {} s warm-up + {} s measured; pacer late \
         p99 {} µs, max {} µs",
        r.rate_per_target, r.warmup_s, r.duration_s, r.pacer.late_p99_us, r.pacer.late_max_us
    );
    for m in &r.metrics {
        let title = match m.metric {
            "first_event" => "time to first event (TTFB), µs",
            "gap" => "gap between events, µs (count = gaps)",
            _ => "whole request, µs",
        };
        println!("-- {title}");
        print!("{}", m.table());
    }
    print_cpu(&r.cpu);
    if r.pacer.late_p99_us > 1000 {
        println!(
            "   NOTE: arrivals fired late by {} µs at p99: the generator was starved of CPU (a \
             saturated or busy machine); every target's latency includes that",
            r.pacer.late_p99_us
        );
    }
    for f in &r.failures {
        println!("   FAILED: {f}");
    }
    println!();
}
