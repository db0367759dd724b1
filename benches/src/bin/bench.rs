//! `bench`: Multiverse's benchmark suite, in one run on one machine.
//!
//! It starts the mock backends (`mock-openai`, `mock-tei` over HTTP and gRPC), a standalone
//! `multiverse-proxy` in front of them and, when an nginx binary is installed, nginx configured
//! as the same kind of proxy, then runs the selected scenarios:
//!
//! - latency (`chat`, `chat-h2c`, `sse`, `embed-http`, `grpc-unary`, `grpc-bidi`): open-loop
//!   constant-rate arrivals interleaved across the targets (direct to the mock, through the
//!   proxy, through nginx), latency from each request's intended send time into hdrhistograms;
//!   p50/p90/p99/p99.9/max per target and what each proxy adds over direct, per percentile.
//!   For SSE: time to first event, gaps between events, and the whole stream.
//! - `throughput`: closed loop, N workers per target taking turns slice by slice: the most
//!   requests per second each target sustains (chat over HTTP/1.1, gRPC unary).
//! - `propagation`: a control plane and N proxies fed by it; the time from a backend
//!   registration / deregistration at the operator API until every proxy routes by it, and
//!   failed requests through one proxy while 100 changes are pushed under load.
//! - `memory`: the proxy's RSS idle, under load and over a soak.
//! - `models-10k`: the proxy with 10 000 models in its table: RSS, and chat latency against the
//!   proxy with a small table in the same run.
//!
//! Output: a table per scenario as it finishes, a summary at the end, and with `--json FILE`
//! every number in one JSON document. Exit status: 0 when every scenario ran without a failed
//! request and every target has samples, 1 otherwise, 2 when the suite could not run.
//!
//! The binaries are found next to this executable (`cargo build --release --workspace --bins`;
//! `scripts/bench` does that and runs this) unless `--bin-dir` says otherwise. Children are
//! killed when it exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use multiverse_benches::load::engine::{self, ClosedPlan, Target, TargetStats};
use multiverse_benches::load::http::Http1Pool;
use multiverse_benches::load::machine::{
    command_line, parse_non_negative, parse_positive, Machine,
};
use multiverse_benches::load::process::{self, sibling_binary, ScratchDir};
use multiverse_benches::load::propagation::{self, AdminApi, BackendSpec, ControlPlane};
use multiverse_benches::load::report::{self, Added, Summary};
use multiverse_benches::load::rss;
use multiverse_benches::load::scenario::{self, Concurrency, Latency};
use multiverse_benches::load::schedule::{PacerStats, Plan};
use multiverse_benches::load::stack::{
    self, routes_toml, start_mock_openai, Addrs, Binaries, ProxyProcess, Stack, READY_TIMEOUT,
};
use multiverse_mocks::common::termination_signal;

/// A scenario `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// OpenAI chat, non-streaming, HTTP/1.1.
    Chat,
    /// OpenAI chat, non-streaming, h2c.
    ChatH2c,
    /// OpenAI chat, SSE stream: time to first event, inter-event gaps.
    Sse,
    /// TEI HTTP /embed.
    EmbedHttp,
    /// TEI gRPC unary Embed.
    GrpcUnary,
    /// TEI gRPC bidi EmbedStream, per-message round trip.
    GrpcBidi,
    /// Closed-loop maximum throughput (chat HTTP/1.1, gRPC unary).
    Throughput,
    /// Route propagation from the control plane to N proxies; changes under load.
    Propagation,
    /// Proxy RSS idle, under load, over a soak.
    Memory,
    /// A 10k-model routing table: RSS and chat latency.
    #[value(name = "models-10k")]
    #[serde(rename = "models-10k")]
    Models10k,
}

impl Scenario {
    fn latency(self) -> Option<Latency> {
        Some(match self {
            Scenario::Chat => Latency::Chat,
            Scenario::ChatH2c => Latency::ChatH2c,
            Scenario::Sse => Latency::Sse,
            Scenario::EmbedHttp => Latency::EmbedHttp,
            Scenario::GrpcUnary => Latency::GrpcUnary,
            Scenario::GrpcBidi => Latency::GrpcBidi,
            _ => return None,
        })
    }

    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// Multiverse's benchmark suite: latency, throughput, propagation and memory, side by side
/// with a direct connection and with nginx.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    long_about = "Starts the mock backends, a standalone multiverse-proxy and (when installed) \
                  nginx as the same kind of proxy, and measures: latency under open-loop load \
                  interleaved across direct / proxy / nginx (HTTP/1.1, h2c, SSE, TEI HTTP, gRPC \
                  unary and bidi), closed-loop throughput, route propagation from a control \
                  plane to N proxies (and failed requests while changes are pushed under \
                  load), and the proxy's memory (idle, under load, soak, 10k models). Exit \
                  status: 0 all good, 1 failed requests or missing samples, 2 could not run."
)]
struct Args {
    /// A short smoke run of every scenario (a second or two each, low rates); explicit flags
    /// win.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated or repeated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SCENARIO")]
    only: Vec<Scenario>,
    /// Write every result to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Open-loop arrivals per second per target in the latency scenarios [default: 2000; 100
    /// with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    rate: Option<f64>,
    /// SSE streams started per second per target [default: 100; 20 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    sse_rate: Option<f64>,
    /// Measured seconds per latency scenario [default: 15; 1 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    duration: Option<f64>,
    /// Seconds of load before measuring [default: 2; 0.3 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_non_negative)]
    warmup: Option<f64>,
    /// Pause between two SSE events of the mock, ms.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    chunk_interval_ms: u64,
    /// HTTP/1.1 keep-alive connections per target (the most requests in flight).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// HTTP/1.1 connections per target for SSE streams.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    sse_connections: u32,
    /// Requests in flight per target on the one h2c / gRPC connection.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    h2_in_flight: u32,
    /// Long-lived EmbedStream streams per target (grpc-bidi).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    bidi_streams: u32,
    /// Closed-loop workers per target (throughput).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Seconds of each closed-loop turn [default: 2; 0.5 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    slice: Option<f64>,
    /// Closed-loop turns per target [default: 3; 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: Option<u32>,
    /// Proxies fed by the control plane (propagation).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    proxies: u32,
    /// Changes timed one by one (propagation) [default: 20; 4 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    changes: Option<u32>,
    /// Changes pushed during load (propagation) [default: 100; 20 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    load_changes: Option<u32>,
    /// Chat requests per second through the proxy while changes are pushed [default: 500;
    /// 100 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    load_rate: Option<f64>,
    /// Pause between two changes pushed under load, ms.
    #[arg(long, value_name = "MS", default_value_t = 30)]
    change_interval_ms: u64,
    /// Seconds of the memory soak (600 for the 10-minute soak) [default: 120; 2 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    soak_secs: Option<f64>,
    /// Chat requests per second through the proxy during the soak [default: 1000; 100 with
    /// --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    soak_rate: Option<f64>,
    /// Models in the big routing table (models-10k).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    models: usize,
    /// Seconds after its intended send time a request counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_positive)]
    timeout: f64,
    /// Tokio worker threads of the open-loop generator (the pacer is one more thread).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Tokio worker threads of the closed-loop generator.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    closed_threads: u32,
    /// nginx worker processes [default: the number of CPUs, as the proxy's threads].
    #[arg(long, value_name = "N")]
    nginx_workers: Option<usize>,
    /// The nginx binary [default: `nginx` on PATH, or /usr/sbin/nginx].
    #[arg(long, value_name = "PATH")]
    nginx_bin: Option<PathBuf>,
    /// Leave nginx out even when installed.
    #[arg(long)]
    no_nginx: bool,
    /// Where mock-openai, mock-tei, multiverse-proxy and multiverse-control are [default: next
    /// to this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// The settings in force, as recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    quick: bool,
    scenarios: Vec<Scenario>,
    rate_per_target: f64,
    sse_rate_per_target: f64,
    duration_s: f64,
    warmup_s: f64,
    chunk_interval_ms: u64,
    concurrency: Concurrency,
    closed_concurrency: usize,
    closed_slice_s: f64,
    closed_rounds: u32,
    closed_warmup_s: f64,
    proxies: usize,
    changes: u32,
    load_changes: u32,
    load_rate: f64,
    change_interval_ms: u64,
    soak_s: f64,
    soak_rate: f64,
    models: usize,
    timeout_s: f64,
    generator_threads: u32,
    closed_generator_threads: u32,
    proxy_threads: String,
    nginx_workers: usize,
}

impl Settings {
    fn from_args(args: &Args) -> Self {
        let q = args.quick;
        let pick = |full: f64, quick: f64| if q { quick } else { full };
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut scenarios: Vec<Scenario> = if args.only.is_empty() {
            Scenario::value_variants().to_vec()
        } else {
            args.only.clone()
        };
        scenarios.sort();
        scenarios.dedup();
        Self {
            quick: q,
            scenarios,
            rate_per_target: args.rate.unwrap_or(pick(2000.0, 100.0)),
            sse_rate_per_target: args.sse_rate.unwrap_or(pick(100.0, 20.0)),
            duration_s: args.duration.unwrap_or(pick(15.0, 1.0)),
            warmup_s: args.warmup.unwrap_or(pick(2.0, 0.3)),
            chunk_interval_ms: args.chunk_interval_ms,
            concurrency: Concurrency {
                http1_connections: args.connections as usize,
                sse_connections: args.sse_connections as usize,
                h2_in_flight: args.h2_in_flight as usize,
                bidi_streams: args.bidi_streams as usize,
            },
            closed_concurrency: args.concurrency as usize,
            closed_slice_s: args.slice.unwrap_or(pick(2.0, 0.5)),
            closed_rounds: args.rounds.unwrap_or(if q { 1 } else { 3 }),
            closed_warmup_s: pick(1.0, 0.2),
            proxies: args.proxies as usize,
            changes: args.changes.unwrap_or(if q { 4 } else { 20 }),
            load_changes: args.load_changes.unwrap_or(if q { 20 } else { 100 }),
            load_rate: args.load_rate.unwrap_or(pick(500.0, 100.0)),
            change_interval_ms: args.change_interval_ms,
            soak_s: args.soak_secs.unwrap_or(pick(120.0, 2.0)),
            soak_rate: args.soak_rate.unwrap_or(pick(1000.0, 100.0)),
            models: args.models,
            timeout_s: args.timeout,
            generator_threads: args.threads,
            closed_generator_threads: args.closed_threads,
            proxy_threads: format!("default (number of CPUs: {nproc})"),
            nginx_workers: args.nginx_workers.unwrap_or(nproc).max(1),
        }
    }

    fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Serialize)]
struct Record {
    benchmark: &'static str,
    command: String,
    machine: Machine,
    /// /proc/loadavg before the run (1, 5, 15 min): other work on the machine.
    loadavg_before: String,
    /// /proc/loadavg after the run.
    loadavg_after: String,
    settings: Settings,
    nginx: NginxInfo,
    latency: Vec<LatencyRecord>,
    throughput: Vec<ThroughputRecord>,
    propagation: Option<PropagationRecord>,
    memory: Option<MemoryRecord>,
    models_10k: Option<ModelsRecord>,
    /// Everything that went wrong (failed requests, missing samples, children that died).
    failures: Vec<String>,
    ok: bool,
    elapsed_s: f64,
}

#[derive(Debug, Serialize, Default)]
struct NginxInfo {
    used: bool,
    version: Option<String>,
    note: Option<String>,
}

/// One metric of a latency scenario, all targets.
#[derive(Debug, Clone, Serialize)]
struct MetricRecord {
    /// "latency" (whole request or stream), "first_event", "gap".
    metric: &'static str,
    targets: Vec<Summary>,
    /// "<target> − direct" → per-percentile difference, µs.
    added: BTreeMap<String, Added>,
}

impl MetricRecord {
    fn new(
        metric: &'static str,
        stats: &[TargetStats],
        pick: fn(&TargetStats) -> &hdrhistogram::Histogram<u64>,
    ) -> Self {
        let targets: Vec<Summary> = stats
            .iter()
            .map(|s| Summary::new(&s.name, pick(s), s.errors, s.window))
            .collect();
        let mut added = BTreeMap::new();
        if let Some(direct) = targets.iter().find(|t| t.name == "direct") {
            for t in targets.iter().filter(|t| t.name != "direct") {
                added.insert(format!("{} − direct", t.name), Added::between(t, direct));
            }
        }
        Self {
            metric,
            targets,
            added,
        }
    }

    fn target(&self, name: &str) -> Option<&Summary> {
        self.targets.iter().find(|t| t.name == name)
    }

    fn table(&self) -> String {
        // In target order: proxy before nginx.
        let added: Vec<(String, Added)> = self
            .targets
            .iter()
            .filter_map(|t| {
                let key = format!("{} − direct", t.name);
                self.added.get(&key).map(|a| (format!("added ({key})"), *a))
            })
            .collect();
        report::table(&self.targets, &added)
    }
}

#[derive(Debug, Serialize)]
struct PacerRecord {
    arrivals: u64,
    measured_arrivals: u64,
    late_p99_us: u64,
    late_max_us: u64,
}

impl PacerRecord {
    fn new(p: &PacerStats) -> Self {
        Self {
            arrivals: p.ticks,
            measured_arrivals: p.measured_ticks,
            late_p99_us: p.lag_us.value_at_quantile(0.99),
            late_max_us: p.lag_us.max(),
        }
    }
}

/// One latency scenario.
#[derive(Debug, Serialize)]
struct LatencyRecord {
    scenario: &'static str,
    request: String,
    rate_per_target: f64,
    duration_s: f64,
    warmup_s: f64,
    metrics: Vec<MetricRecord>,
    warmup_errors: BTreeMap<String, u64>,
    pacer: PacerRecord,
    /// CPU the proxies (and the generator) used during the run.
    cpu: Vec<CpuRecord>,
    failures: Vec<String>,
}

/// A process whose CPU time a run measures.
#[derive(Debug, Clone)]
struct Probe {
    /// "proxy", "nginx", "generator".
    label: String,
    /// The process(es): several are summed (the three mocks).
    pids: Vec<u32>,
    /// Count their direct children too (nginx's workers).
    children: bool,
    /// The target whose requests it served (per-request cost), if any.
    target: Option<String>,
}

impl Probe {
    fn cpu(&self) -> Option<Duration> {
        self.pids
            .iter()
            .map(|&pid| {
                if self.children {
                    rss::cpu_time_with_children(pid)
                } else {
                    rss::cpu_time(pid)
                }
            })
            .sum()
    }
}

/// CPU used by one process during a run.
#[derive(Debug, Clone, Serialize)]
struct CpuRecord {
    process: String,
    cpu_ms: u64,
    /// CPU time ÷ wall time: cores kept busy on average.
    cores: f64,
    /// Requests it served (warm-up included).
    requests: Option<u64>,
    /// CPU µs per request served.
    us_per_request: Option<f64>,
}

/// CPU probes for the stack's proxy, nginx, the mocks (together) and this generator.
fn probes(stack: &Stack) -> Vec<Probe> {
    let mut probes = vec![Probe {
        label: "proxy".into(),
        pids: vec![stack.proxy.process.pid()],
        children: false,
        target: Some("proxy".into()),
    }];
    if let Ok(n) = &stack.nginx {
        probes.push(Probe {
            label: "nginx".into(),
            pids: vec![n.process.pid()],
            children: true,
            target: Some("nginx".into()),
        });
    }
    probes.push(mocks_probe(stack));
    probes.push(generator_probe());
    probes
}

fn mocks_probe(stack: &Stack) -> Probe {
    let m = &stack.mocks;
    Probe {
        label: "mocks".into(),
        pids: vec![m.openai.pid(), m.tei_http.pid(), m.tei_grpc.pid()],
        children: false,
        target: None,
    }
}

fn generator_probe() -> Probe {
    Probe {
        label: "generator".into(),
        pids: vec![std::process::id()],
        children: false,
        target: None,
    }
}

/// Runs `f`, measuring the CPU time of each probe; `requests` says how many requests a target
/// was sent.
fn with_cpu<T>(
    probes: &[Probe],
    f: impl FnOnce() -> anyhow::Result<T>,
    requests: impl Fn(&T, &str) -> Option<u64>,
) -> anyhow::Result<(T, Vec<CpuRecord>)> {
    let before: Vec<Option<Duration>> = probes.iter().map(Probe::cpu).collect();
    let started = Instant::now();
    let out = f()?;
    let wall = started.elapsed().as_secs_f64();
    let records = probes
        .iter()
        .zip(before)
        .filter_map(|(p, before)| {
            let used = p.cpu()?.saturating_sub(before?);
            let requests = p.target.as_deref().and_then(|t| requests(&out, t));
            Some(CpuRecord {
                process: p.label.clone(),
                cpu_ms: used.as_millis() as u64,
                cores: (used.as_secs_f64() / wall * 100.0).round() / 100.0,
                requests,
                us_per_request: requests
                    .filter(|&n| n > 0)
                    .map(|n| (used.as_secs_f64() * 1e6 / n as f64 * 10.0).round() / 10.0),
            })
        })
        .collect();
    Ok((out, records))
}

fn print_cpu(cpu: &[CpuRecord]) {
    if cpu.is_empty() {
        return;
    }
    let parts: Vec<String> = cpu
        .iter()
        .map(|c| match c.us_per_request {
            Some(us) => format!("{} {us:.1} µs/request ({:.2} cores)", c.process, c.cores),
            None => format!("{} {:.2} cores", c.process, c.cores),
        })
        .collect();
    println!("   CPU: {} (10 ms resolution)", parts.join(", "));
}

#[derive(Debug, Serialize)]
struct ThroughputRecord {
    scenario: &'static str,
    request: String,
    concurrency: usize,
    slice_s: f64,
    rounds: u32,
    /// Per target; `throughput_rps` is the closed-loop maximum.
    targets: Vec<Summary>,
    /// proxy req/s ÷ nginx req/s.
    proxy_over_nginx: Option<f64>,
    cpu: Vec<CpuRecord>,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ChangeRecord {
    kind: &'static str,
    model: String,
    /// The operator API's answer time, ms.
    api_ms: f64,
    /// From the API request being sent until every proxy routed by the change, ms.
    visible_all_ms: f64,
    /// The same per proxy, ms.
    visible_ms: Vec<f64>,
}

#[derive(Debug, Serialize, Default)]
struct MsSummary {
    count: usize,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    max_ms: f64,
}

impl MsSummary {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len(),
            min_ms: v[0],
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            max_ms: v[v.len() - 1],
        }
    }
}

#[derive(Debug, Serialize)]
struct PropagationRecord {
    proxies: usize,
    coalesce_ms: &'static str,
    changes: Vec<ChangeRecord>,
    /// Every change: API request sent → routed by every proxy.
    visible_all: MsSummary,
    visible_register: MsSummary,
    visible_deregister: MsSummary,
    api: MsSummary,
    under_load: Option<UnderLoadRecord>,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UnderLoadRecord {
    changes: u32,
    weight_updates: u32,
    registrations: u32,
    deregistrations: u32,
    rate: f64,
    requests: u64,
    failed_requests: u64,
    first_error: Option<String>,
    latency: Summary,
    version_before: String,
    versions_after: Vec<String>,
    elapsed_s: f64,
}

#[derive(Debug, Serialize)]
struct MemoryRecord {
    /// Right after start, before any request.
    idle_start_kib: Option<u64>,
    /// nginx master + workers right after start.
    nginx_idle_start_kib: Option<u64>,
    /// Idle again after the latency / throughput scenarios (when they ran).
    idle_after_load_kib: Option<u64>,
    nginx_idle_after_load_kib: Option<u64>,
    soak: Option<SoakRecord>,
}

#[derive(Debug, Serialize)]
struct SoakRecord {
    seconds: f64,
    rate: f64,
    /// (seconds into the soak, RSS KiB).
    samples: Vec<(f64, u64)>,
    /// The first sample after 10 % of the soak (warm, under load).
    under_load_kib: u64,
    end_kib: u64,
    max_kib: u64,
    /// end − under_load.
    growth_kib: i64,
    /// The least-squares slope of RSS over the second half of the soak, KiB per minute: still
    /// growing at the end (> 0) or flat (≈ 0).
    slope_kib_per_min: f64,
    after_soak_idle_kib: Option<u64>,
    latency: Summary,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ModelsRecord {
    models: usize,
    routes_file_bytes: usize,
    ready_ms: f64,
    idle_kib: Option<u64>,
    after_load_kib: Option<u64>,
    small_table_idle_kib: Option<u64>,
    latency: LatencyRecord,
    /// proxy-10k − proxy, per percentile, µs.
    big_minus_small: Option<Added>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn binaries(args: &Args) -> anyhow::Result<Binaries> {
    let find = |name: &str| match &args.bin_dir {
        Some(dir) => {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("{} not found", path.display())
            }
        }
        None => sibling_binary(name),
    };
    Ok(Binaries {
        mock_openai: find("mock-openai")?,
        mock_tei: find("mock-tei")?,
        proxy: find("multiverse-proxy")?,
        control: find("multiverse-control")?,
    })
}

fn runtime(threads: u32, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads as usize)
        .thread_name(name)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let settings = Settings::from_args(args);
    let bins = binaries(args)?;
    let rt = runtime(settings.generator_threads, "bench")?;

    // Children are spawned from this (the main) thread, which their PR_SET_PDEATHSIG is tied
    // to. On SIGINT/SIGTERM the process exits at once: the kernel kills the children, nginx's
    // process group is killed here, and the scratch directory removed.
    let scratch = ScratchDir::new("bench")?;
    let signal = {
        let _context = rt.enter();
        termination_signal()
    };
    let scratch_path = scratch.path().to_path_buf();
    rt.spawn(async move {
        signal.await;
        eprintln!("bench: interrupted");
        process::kill_process_groups();
        let _ = std::fs::remove_dir_all(&scratch_path);
        std::process::exit(130);
    });

    let mut record = Record {
        benchmark: "bench",
        command: command_line(),
        machine: Machine::detect(),
        loadavg_before: loadavg(),
        loadavg_after: String::new(),
        settings: settings.clone(),
        nginx: NginxInfo::default(),
        latency: Vec::new(),
        throughput: Vec::new(),
        propagation: None,
        memory: None,
        models_10k: None,
        failures: Vec::new(),
        ok: false,
        elapsed_s: 0.0,
    };
    print_header(&record);

    let needs_stack = settings
        .scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::Propagation));
    if needs_stack {
        let nginx_bin = stack::nginx_binary(args.nginx_bin.as_deref(), args.no_nginx);
        let mut stack = Stack::start(
            &bins,
            scratch.path(),
            settings.chunk_interval_ms,
            nginx_bin,
            settings.nginx_workers,
        )?;
        rt.block_on(stack.proxy.wait_ready())?;
        match &stack.nginx {
            Ok(n) => {
                record.nginx = NginxInfo {
                    used: true,
                    version: Some(n.version.clone()),
                    note: Some(format!(
                        "{} worker process(es); config: nginx.conf written by bench",
                        settings.nginx_workers
                    )),
                };
                println!(
                    "nginx:    {} ({} workers), compared as a third target",
                    n.version, settings.nginx_workers
                );
            }
            Err(why) => {
                record.nginx.note = Some(why.clone());
                println!("nginx:    not used: {why}; the nginx rows are left out");
            }
        }
        let mut memory = MemoryRecord {
            idle_start_kib: rss::rss_kib(stack.proxy.process.pid()),
            nginx_idle_start_kib: stack
                .nginx
                .as_ref()
                .ok()
                .and_then(|n| rss::rss_with_children_kib(n.process.pid())),
            idle_after_load_kib: None,
            nginx_idle_after_load_kib: None,
            soak: None,
        };
        println!(
            "memory:   proxy RSS idle at start {}",
            fmt_kib(memory.idle_start_kib)
        );
        println!();

        let mut loaded = false;
        for scenario in settings.scenarios.iter().filter_map(|s| s.latency()) {
            loaded = true;
            match latency_scenario(&rt, &stack, scenario, &settings) {
                Ok(r) => {
                    record.failures.extend(r.failures.iter().cloned());
                    record.latency.push(r);
                }
                Err(e) => record.failures.push(format!("{}: {e:#}", scenario.name())),
            }
            if let Err(e) = stack.ensure_running() {
                record.failures.push(format!("{e:#}"));
                break;
            }
        }
        if settings.has(Scenario::Throughput) && stack.ensure_running().is_ok() {
            loaded = true;
            let crt = runtime(settings.closed_generator_threads, "bench-closed")?;
            for scenario in [Latency::Chat, Latency::GrpcUnary] {
                match throughput_scenario(&crt, &stack, scenario, &settings) {
                    Ok(r) => {
                        record.failures.extend(r.failures.iter().cloned());
                        record.throughput.push(r);
                    }
                    Err(e) => record
                        .failures
                        .push(format!("throughput {}: {e:#}", scenario.name())),
                }
            }
            crt.shutdown_timeout(Duration::from_secs(1));
        }
        if loaded {
            // Let connections settle, then read the idle RSS again.
            std::thread::sleep(Duration::from_secs(1));
            memory.idle_after_load_kib = rss::rss_kib(stack.proxy.process.pid());
            memory.nginx_idle_after_load_kib = stack
                .nginx
                .as_ref()
                .ok()
                .and_then(|n| rss::rss_with_children_kib(n.process.pid()));
        }
        if settings.has(Scenario::Memory) && stack.ensure_running().is_ok() {
            match soak(&rt, &stack, &settings) {
                Ok(s) => {
                    record.failures.extend(s.failures.iter().cloned());
                    memory.soak = Some(s);
                }
                Err(e) => record.failures.push(format!("memory: {e:#}")),
            }
        }
        if settings.has(Scenario::Memory) || loaded {
            print_memory(&memory);
            record.memory = Some(memory);
        }
        if settings.has(Scenario::Models10k) && stack.ensure_running().is_ok() {
            match models_scenario(&rt, &bins, scratch.path(), &stack, &settings) {
                Ok(m) => {
                    record.failures.extend(m.latency.failures.iter().cloned());
                    record.models_10k = Some(m);
                }
                Err(e) => record.failures.push(format!("models-10k: {e:#}")),
            }
        }
        if let Err(e) = stack.ensure_running() {
            record.failures.push(format!("{e:#}"));
        }
        drop(stack);
    }

    if settings.has(Scenario::Propagation) {
        match propagation_scenario(&rt, &bins, scratch.path(), &settings) {
            Ok(p) => {
                record.failures.extend(p.failures.iter().cloned());
                record.propagation = Some(p);
            }
            Err(e) => record.failures.push(format!("propagation: {e:#}")),
        }
    }

    record.loadavg_after = loadavg();
    record.ok = record.failures.is_empty();
    record.elapsed_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    print_summary(&record);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&record)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("json:     {}", path.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(record.ok)
}

fn print_header(record: &Record) {
    let s = &record.settings;
    println!("bench: Multiverse benchmark suite (direct vs multiverse-proxy vs nginx, one run)");
    println!("command:  {}", record.command);
    println!("machine:  {}", record.machine.line());
    println!(
        "loadavg:  {} (before the run; the machine is shared)",
        record.loadavg_before
    );
    println!(
        "mode:     {}; scenarios: {}",
        if s.quick { "quick (smoke run)" } else { "full" },
        s.scenarios
            .iter()
            .map(|x| x.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "load:     open loop {} req/s per target ({} SSE streams/s), {} s warm-up + {} s \
         measured per scenario; generator {} thread(s) + pacer; proxy threads {}",
        s.rate_per_target,
        s.sse_rate_per_target,
        s.warmup_s,
        s.duration_s,
        s.generator_threads,
        s.proxy_threads
    );
    println!(
        "latency:  from each request's intended send time (coordinated omission corrected), µs"
    );
}

/// The first three fields of /proc/loadavg ("n/a" elsewhere).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", rss::mib(k)))
}

fn plan(rate_per_target: f64, targets: usize, s: &Settings) -> Plan {
    Plan {
        rate: rate_per_target * targets as f64,
        warmup: Duration::from_secs_f64(s.warmup_s),
        duration: Duration::from_secs_f64(s.duration_s),
    }
}

/// Builds the targets of `scenario` for `addrs` (in this order).
fn targets(
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

fn measure(
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

fn latency_scenario(
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

fn print_latency(r: &LatencyRecord) {
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

fn throughput_scenario(
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
    // Every worker gets its own connection (HTTP/1.1) or stream slot (h2).
    let c = Concurrency {
        http1_connections: s.closed_concurrency,
        sse_connections: s.closed_concurrency,
        h2_in_flight: s.closed_concurrency,
        bidi_streams: s.closed_concurrency,
    };
    let targets = targets(rt, scenario, &stack.targets(), &c)?;
    let plan = ClosedPlan {
        concurrency: s.closed_concurrency,
        slice: Duration::from_secs_f64(s.closed_slice_s),
        rounds: s.closed_rounds,
        warmup: Duration::from_secs_f64(s.closed_warmup_s),
    };
    let (stats, cpu) = with_cpu(
        &probes(stack),
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
    let ratio = match (rps("proxy"), rps("nginx")) {
        (Some(p), Some(n)) if n > 0.0 => Some((p / n * 100.0).round() / 100.0),
        _ => None,
    };
    if let Some(r) = ratio {
        println!("   proxy ÷ nginx throughput: {r:.2}");
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
        cpu,
        failures,
    })
}

/// Chat through the proxy alone for the soak, sampling its RSS.
fn soak(rt: &tokio::runtime::Runtime, stack: &Stack, s: &Settings) -> anyhow::Result<SoakRecord> {
    println!(
        "== memory soak: chat through the proxy, {} req/s open loop for {} s, RSS sampled",
        s.soak_rate, s.soak_s
    );
    let addrs = [("proxy".to_string(), Addrs::single(stack.proxy.listen))];
    let targets = targets(rt, Latency::Chat, &addrs, &s.concurrency)?;
    let plan = Plan {
        rate: s.soak_rate,
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(s.soak_s),
    };
    let pid = stack.proxy.process.pid();
    let done = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64((s.soak_s / 30.0).clamp(0.1, 10.0));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !done.load(Ordering::Acquire) {
                if let Some(kib) = rss::rss_kib(pid) {
                    samples.push(((start.elapsed().as_secs_f64() * 10.0).round() / 10.0, kib));
                }
                let next = Instant::now() + every;
                while Instant::now() < next && !done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            samples
        })
    };
    let result = engine::open_loop(rt, &plan, &targets, s.timeout(), None);
    done.store(true, Ordering::Release);
    let samples = sampler.join().unwrap_or_default();
    let result = result?;
    std::thread::sleep(Duration::from_secs(1));
    let after = rss::rss_kib(pid);
    anyhow::ensure!(
        !samples.is_empty(),
        "no RSS sample of the proxy (pid {pid})"
    );
    let warm_at = s.soak_s * 0.1;
    let under_load = samples
        .iter()
        .find(|(t, _)| *t >= warm_at)
        .unwrap_or(&samples[0])
        .1;
    let end = samples[samples.len() - 1].1;
    let max = samples.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let slope = slope_per_min(samples.iter().filter(|(t, _)| *t >= s.soak_s / 2.0));
    let t = &result.targets[0];
    let latency = Summary::new("proxy", &t.latency, t.errors, t.window);
    let failures: Vec<String> = t
        .failure()
        .map(|f| format!("memory soak: {f}"))
        .into_iter()
        .collect();
    print!("{}", report::table(std::slice::from_ref(&latency), &[]));
    println!();
    Ok(SoakRecord {
        seconds: s.soak_s,
        rate: s.soak_rate,
        samples,
        under_load_kib: under_load,
        end_kib: end,
        max_kib: max,
        growth_kib: end as i64 - under_load as i64,
        slope_kib_per_min: slope,
        after_soak_idle_kib: after,
        latency,
        failures,
    })
}

/// Least-squares slope of (seconds, KiB) points, in KiB per minute (0 with fewer than 2).
fn slope_per_min<'a>(points: impl Iterator<Item = &'a (f64, u64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.map(|&(t, k)| (t, k as f64)).collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_k = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_k)).sum();
    (cov / var * 60.0 * 10.0).round() / 10.0
}

fn print_memory(m: &MemoryRecord) {
    println!("== memory (proxy RSS from /proc/<pid>/status VmRSS)");
    println!("   idle at start:            {}", fmt_kib(m.idle_start_kib));
    if m.idle_after_load_kib.is_some() {
        println!(
            "   idle after the scenarios: {}",
            fmt_kib(m.idle_after_load_kib)
        );
    }
    if let Some(s) = &m.soak {
        println!(
            "   soak {} s at {} req/s:   under load {} → end {} (max {}, growth {:+.1} MiB, trend \
             {:+.0} KiB/min over the second half); idle after {}",
            s.seconds,
            s.rate,
            fmt_kib(Some(s.under_load_kib)),
            fmt_kib(Some(s.end_kib)),
            fmt_kib(Some(s.max_kib)),
            s.growth_kib as f64 / 1024.0,
            s.slope_kib_per_min,
            fmt_kib(s.after_soak_idle_kib)
        );
    }
    if m.nginx_idle_start_kib.is_some() {
        let after = m
            .nginx_idle_after_load_kib
            .map(|k| format!(", after the scenarios {}", fmt_kib(Some(k))))
            .unwrap_or_default();
        println!(
            "   nginx (master + workers): idle at start {}{after}",
            fmt_kib(m.nginx_idle_start_kib)
        );
    }
    println!();
}

/// A second proxy with `models` models in its table, against the small-table proxy.
fn models_scenario(
    rt: &tokio::runtime::Runtime,
    bins: &Binaries,
    scratch: &std::path::Path,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<ModelsRecord> {
    println!(
        "== models-10k: a proxy with {} models in its routing table vs the proxy with 3, chat",
        s.models + 3
    );
    let routes = routes_toml(&stack.mocks.addrs, s.models);
    let started = Instant::now();
    let mut big = ProxyProcess::standalone(bins, scratch, "proxy-10k", &routes)?;
    rt.block_on(big.wait_ready())?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss::rss_kib(big.process.pid());
    println!(
        "   routes file {:.1} MiB, ready after {:.0} ms, RSS idle {} (small table: {})",
        routes.len() as f64 / 1048576.0,
        ready_ms,
        fmt_kib(idle),
        fmt_kib(rss::rss_kib(stack.proxy.process.pid()))
    );
    let addrs = vec![
        ("direct".to_string(), stack.mocks.addrs),
        ("proxy".to_string(), Addrs::single(stack.proxy.listen)),
        ("proxy-10k".to_string(), Addrs::single(big.listen)),
    ];
    let probes = [
        Probe {
            label: "proxy".into(),
            pids: vec![stack.proxy.process.pid()],
            children: false,
            target: Some("proxy".into()),
        },
        Probe {
            label: "proxy-10k".into(),
            pids: vec![big.process.pid()],
            children: false,
            target: Some("proxy-10k".into()),
        },
        mocks_probe(stack),
        generator_probe(),
    ];
    let mut latency = measure(rt, Latency::Chat, &addrs, s, &probes)?;
    latency.scenario = "models-10k";
    let after = rss::rss_kib(big.process.pid());
    big.process.ensure_running()?;
    let m = latency.metrics.last().expect("a latency metric");
    let big_minus_small = match (m.target("proxy-10k"), m.target("proxy")) {
        (Some(b), Some(p)) => Some(Added::between(b, p)),
        _ => None,
    };
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
        routes_file_bytes: routes.len(),
        ready_ms: (ready_ms * 10.0).round() / 10.0,
        idle_kib: idle,
        after_load_kib: after,
        small_table_idle_kib: rss::rss_kib(stack.proxy.process.pid()),
        latency,
        big_minus_small,
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn propagation_scenario(
    rt: &tokio::runtime::Runtime,
    bins: &Binaries,
    scratch: &std::path::Path,
    s: &Settings,
) -> anyhow::Result<PropagationRecord> {
    println!(
        "== propagation: multiverse-control + {} proxies; {} changes timed one by one, then {} \
         changes under load",
        s.proxies, s.changes, s.load_changes
    );
    let dir = scratch.join("propagation");
    std::fs::create_dir_all(&dir)?;
    let mut mock_a = start_mock_openai(bins, &dir, "prop-mock-a", &["--tokens", "4"])?;
    let a = mock_a.wait_listening(READY_TIMEOUT)?;
    let mut mock_b = start_mock_openai(bins, &dir, "prop-mock-b", &["--tokens", "4"])?;
    let b = mock_b.wait_listening(READY_TIMEOUT)?;
    let mut control = ControlPlane::start(
        bins,
        &dir,
        &format!("[[backends]]\nname = \"base\"\nurl = \"http://{a}\"\nmodels = [\"demo\"]\n"),
    )?;
    rt.block_on(control.wait_ready())?;
    let mut proxies = Vec::new();
    for i in 0..s.proxies {
        proxies.push(ProxyProcess::with_control(
            bins,
            &dir,
            &format!("prop-proxy-{i}"),
            &control.discovery_url(),
        )?);
    }
    for p in &mut proxies {
        rt.block_on(p.wait_ready())?;
    }
    let api = AdminApi::new(control.api);
    let pools: Vec<Http1Pool> = proxies
        .iter()
        .map(|p| Http1Pool::new(p.listen, 1))
        .collect();
    let poll = Duration::from_millis(1);
    let limit = Duration::from_secs(10);
    let mut failures = Vec::new();

    // A second backend of `demo` (its weight and tags change under load).
    let second = BackendSpec {
        name: "second".into(),
        url: format!("http://{b}"),
        models: vec!["demo".into()],
        weight: 1,
        tags: serde_json::json!({}),
    };
    let second_id = rt.block_on(async {
        let id = api.register(&second).await?;
        propagation::wait_visible(&pools, "demo", true, Instant::now(), poll, limit).await?;
        anyhow::Ok(id)
    })?;

    // Changes one by one: register prop-k (model prop-k), then deregister it.
    let mut changes = Vec::new();
    let mut registered: Option<(String, String)> = None;
    for i in 0..s.changes {
        let result = rt.block_on(async {
            let t0 = Instant::now();
            let (kind, model, api_result, waits) = match registered.take() {
                None => {
                    let model = format!("prop-{i}");
                    let spec = BackendSpec {
                        name: model.clone(),
                        url: format!("http://{a}"),
                        models: vec![model.clone()],
                        weight: 1,
                        tags: serde_json::json!({}),
                    };
                    let (id, waits) = tokio::join!(
                        async {
                            let r = api.register(&spec).await;
                            (r, t0.elapsed())
                        },
                        propagation::wait_visible(&pools, &model, true, t0, poll, limit)
                    );
                    if let Ok(id) = &id.0 {
                        registered = Some((id.clone(), model.clone()));
                    }
                    ("register", model, id.0.map(|_| id.1), waits)
                }
                Some((id, model)) => {
                    let (r, waits) = tokio::join!(
                        async {
                            let r = api.deregister(&id).await;
                            (r, t0.elapsed())
                        },
                        propagation::wait_visible(&pools, &model, false, t0, poll, limit)
                    );
                    ("deregister", model, r.0.map(|_| r.1), waits)
                }
            };
            let api_time = api_result?;
            let waits = waits?;
            let all = waits.iter().copied().max().unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(50)).await;
            anyhow::Ok(ChangeRecord {
                kind,
                model,
                api_ms: ms(api_time),
                visible_all_ms: ms(all),
                visible_ms: waits.into_iter().map(ms).collect(),
            })
        });
        match result {
            Ok(c) => {
                println!(
                    "   {:<10} {:<8} API {:>7.2} ms, routed by all {} proxies after {:>7.2} ms \
                     ({})",
                    c.kind,
                    c.model,
                    c.api_ms,
                    s.proxies,
                    c.visible_all_ms,
                    c.visible_ms
                        .iter()
                        .map(|v| format!("{v:.1}"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
                changes.push(c);
            }
            Err(e) => {
                failures.push(format!("propagation change {i}: {e:#}"));
                break;
            }
        }
    }
    let visible_all = MsSummary::of(changes.iter().map(|c| c.visible_all_ms));
    let visible_register = MsSummary::of(
        changes
            .iter()
            .filter(|c| c.kind == "register")
            .map(|c| c.visible_all_ms),
    );
    let visible_deregister = MsSummary::of(
        changes
            .iter()
            .filter(|c| c.kind == "deregister")
            .map(|c| c.visible_all_ms),
    );
    let api_summary = MsSummary::of(changes.iter().map(|c| c.api_ms));
    println!(
        "   routed by every proxy after: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} changes \
         (API answer p50 {:.1} ms)",
        visible_all.p50_ms,
        visible_all.p90_ms,
        visible_all.max_ms,
        visible_all.count,
        api_summary.p50_ms
    );

    // Changes under load.
    let under_load = match changes_under_load(rt, &api, &second, &second_id, a, &proxies, s) {
        Ok(u) => {
            println!(
                "   under load: {} chat requests through prop-proxy-0 at {} req/s while {} \
                 changes were pushed ({} weight/tag updates of `demo`'s second backend, {} \
                 registrations, {} deregistrations): {} failed; p50 {} µs, p99 {} µs; version \
                 {} → {}",
                u.requests,
                u.rate,
                u.changes,
                u.weight_updates,
                u.registrations,
                u.deregistrations,
                u.failed_requests,
                u.latency.p50_us,
                u.latency.p99_us,
                u.version_before,
                u.versions_after.join(" / ")
            );
            if u.failed_requests > 0 {
                failures.push(format!(
                    "propagation under load: {} failed request(s); first: {}",
                    u.failed_requests,
                    u.first_error.clone().unwrap_or_default()
                ));
            }
            Some(u)
        }
        Err(e) => {
            failures.push(format!("propagation under load: {e:#}"));
            None
        }
    };
    for (name, child) in [("prop-mock-a", &mut mock_a), ("prop-mock-b", &mut mock_b)] {
        if let Err(e) = child.ensure_running() {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    if let Err(e) = control.process.ensure_running() {
        failures.push(format!("{e:#}"));
    }
    for p in &mut proxies {
        if let Err(e) = p.process.ensure_running() {
            failures.push(format!("{e:#}"));
        }
    }
    if changes.len() < s.changes as usize && failures.is_empty() {
        failures.push("propagation: not every change was measured".into());
    }
    for f in &failures {
        println!("   FAILED: {f}");
    }
    println!();
    Ok(PropagationRecord {
        proxies: s.proxies,
        coalesce_ms: "default (20)",
        changes,
        visible_all,
        visible_register,
        visible_deregister,
        api: api_summary,
        under_load,
        failures,
    })
}

/// Chat load through the first proxy while `s.load_changes` changes are pushed: every fourth
/// change registers an unrelated backend, every fourth deregisters it, the others update the
/// weight and tags of `demo`'s second backend.
fn changes_under_load(
    rt: &tokio::runtime::Runtime,
    api: &AdminApi,
    second: &BackendSpec,
    second_id: &str,
    churn_addr: std::net::SocketAddr,
    proxies: &[ProxyProcess],
    s: &Settings,
) -> anyhow::Result<UnderLoadRecord> {
    let first = &proxies[0];
    let version_before = rt.block_on(first.version());
    let addrs = [("proxy".to_string(), Addrs::single(first.listen))];
    let targets = targets(rt, Latency::Chat, &addrs, &s.concurrency)?;
    let stop = AtomicBool::new(false);
    let interval = Duration::from_millis(s.change_interval_ms);
    // Long enough for every change; the load stops when they are done.
    let plan = Plan {
        rate: s.load_rate,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(600),
    };
    let started = Instant::now();
    let (load, counts) = std::thread::scope(|scope| {
        let driver = scope.spawn(|| {
            let result = rt.block_on(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut counts = (0u32, 0u32, 0u32);
                let mut churn: Option<String> = None;
                for i in 0..s.load_changes {
                    match (i % 4, churn.take()) {
                        (1, None) => {
                            let spec = BackendSpec {
                                name: format!("churn-{i}"),
                                url: format!("http://{churn_addr}"),
                                models: vec![format!("churn-{i}")],
                                weight: 1,
                                tags: serde_json::json!({}),
                            };
                            churn = Some(api.register(&spec).await?);
                            counts.1 += 1;
                        }
                        (_, Some(id)) if i % 4 == 3 => {
                            api.deregister(&id).await?;
                            counts.2 += 1;
                        }
                        (_, kept) => {
                            churn = kept;
                            let mut spec = second.clone();
                            spec.weight = 1 + i % 3;
                            spec.tags = serde_json::json!({"rev": i.to_string()});
                            api.update(second_id, &spec).await?;
                            counts.0 += 1;
                        }
                    }
                    tokio::time::sleep(interval).await;
                }
                if let Some(id) = churn {
                    api.deregister(&id).await?;
                    counts.2 += 1;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                anyhow::Ok(counts)
            });
            stop.store(true, Ordering::Release);
            result
        });
        let load = engine::open_loop(rt, &plan, &targets, s.timeout(), Some(&stop));
        stop.store(true, Ordering::Release);
        let counts = driver
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the change driver panicked")));
        (load, counts)
    });
    let elapsed = started.elapsed();
    let load = load?;
    let (weight_updates, registrations, deregistrations) = counts?;
    // Every proxy converges on the same version.
    let versions_after = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut versions = Vec::new();
            for p in proxies {
                versions.push(p.version().await);
            }
            if versions.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
                return versions;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let t = &load.targets[0];
    Ok(UnderLoadRecord {
        changes: weight_updates + registrations + deregistrations,
        weight_updates,
        registrations,
        deregistrations,
        rate: s.load_rate,
        requests: t.latency.len() + t.errors,
        failed_requests: t.errors + t.warmup_errors,
        first_error: t.first_error.clone(),
        latency: Summary::new("proxy", &t.latency, t.errors, t.window),
        version_before,
        versions_after,
        elapsed_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
    })
}

fn signed(v: i64) -> String {
    format!("{v:+}")
}

fn print_summary(r: &Record) {
    println!("== summary ({:.0} s)", r.elapsed_s);
    println!("machine: {}", r.machine.line());
    println!("command: {}", r.command);
    println!(
        "loadavg: {} before, {} after",
        r.loadavg_before, r.loadavg_after
    );
    let nginx = r.nginx.used;
    if !r.latency.is_empty() {
        println!();
        println!(
            "latency, µs (open loop, {} req/s per target; SSE {} streams/s):",
            r.settings.rate_per_target, r.settings.sse_rate_per_target
        );
        let mut header = "| scenario | metric | direct p50 | proxy p50 |".to_string();
        if nginx {
            header.push_str(" nginx p50 |");
        }
        header.push_str(" direct p99 | proxy p99 |");
        if nginx {
            header.push_str(" nginx p99 |");
        }
        header.push_str(" proxy added p50 / p99 |");
        if nginx {
            header.push_str(" nginx added p50 / p99 |");
        }
        println!("{header}");
        let columns = header.matches('|').count() - 1;
        println!("|{}", "---|".repeat(columns));
        let get = |m: &MetricRecord, name: &str, f: fn(&Summary) -> u64| {
            m.target(name).map_or("–".to_string(), |t| f(t).to_string())
        };
        for l in &r.latency {
            for m in &l.metrics {
                let mut row = format!(
                    "| {} | {} | {} | {} |",
                    l.scenario,
                    metric_label(m.metric),
                    get(m, "direct", |t| t.p50_us),
                    get(m, "proxy", |t| t.p50_us)
                );
                if nginx {
                    row.push_str(&format!(" {} |", get(m, "nginx", |t| t.p50_us)));
                }
                row.push_str(&format!(
                    " {} | {} |",
                    get(m, "direct", |t| t.p99_us),
                    get(m, "proxy", |t| t.p99_us)
                ));
                if nginx {
                    row.push_str(&format!(" {} |", get(m, "nginx", |t| t.p99_us)));
                }
                let added = |name: &str| {
                    m.added
                        .get(&format!("{name} − direct"))
                        .map_or("–".to_string(), |a| {
                            format!("{} / {}", signed(a.p50_us), signed(a.p99_us))
                        })
                };
                row.push_str(&format!(" {} |", added("proxy")));
                if nginx {
                    row.push_str(&format!(" {} |", added("nginx")));
                }
                println!("{row}");
            }
        }
    }
    if !r.throughput.is_empty() {
        println!();
        println!(
            "throughput, closed loop, {} workers per target (req/s; p99 µs):",
            r.settings.closed_concurrency
        );
        println!("| scenario | direct | proxy | nginx | proxy ÷ nginx |");
        println!("|---|---|---|---|---|");
        for t in &r.throughput {
            let cell = |name: &str| {
                t.targets
                    .iter()
                    .find(|x| x.name == name)
                    .map_or("–".to_string(), |x| {
                        format!("{:.0} ({} µs)", x.throughput_rps, x.p99_us)
                    })
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                t.scenario,
                cell("direct"),
                cell("proxy"),
                cell("nginx"),
                t.proxy_over_nginx.map_or("–".into(), |x| format!("{x:.2}"))
            );
        }
    }
    if !r.latency.is_empty() || !r.throughput.is_empty() {
        println!();
        println!("CPU per request served, µs (and cores kept busy on average):");
        println!("| scenario | proxy | nginx | mocks cores | generator cores |");
        println!("|---|---|---|---|---|");
        let rows = r
            .latency
            .iter()
            .map(|l| (l.scenario.to_string(), &l.cpu))
            .chain(
                r.throughput
                    .iter()
                    .map(|t| (format!("throughput {}", t.scenario), &t.cpu)),
            );
        for (name, cpu) in rows {
            let cell = |process: &str| {
                cpu.iter()
                    .find(|c| c.process == process)
                    .map_or("–".to_string(), |c| match c.us_per_request {
                        Some(us) => format!("{us:.1} ({:.2})", c.cores),
                        None => format!("{:.2}", c.cores),
                    })
            };
            println!(
                "| {name} | {} | {} | {} | {} |",
                cell("proxy"),
                cell("nginx"),
                cell("mocks"),
                cell("generator")
            );
        }
    }
    if let Some(p) = &r.propagation {
        println!();
        println!(
            "propagation ({} proxies, coalesce_ms {}): routed by every proxy after p50 {:.1} ms, \
             p90 {:.1} ms, max {:.1} ms over {} changes (register p50 {:.1} / max {:.1}; \
             deregister p50 {:.1} / max {:.1}); API answer p50 {:.1} ms",
            p.proxies,
            p.coalesce_ms,
            p.visible_all.p50_ms,
            p.visible_all.p90_ms,
            p.visible_all.max_ms,
            p.visible_all.count,
            p.visible_register.p50_ms,
            p.visible_register.max_ms,
            p.visible_deregister.p50_ms,
            p.visible_deregister.max_ms,
            p.api.p50_ms
        );
        if let Some(u) = &p.under_load {
            println!(
                "changes under load: {} changes pushed during {} chat requests at {} req/s: {} \
                 failed",
                u.changes, u.requests, u.rate, u.failed_requests
            );
        }
    }
    if let Some(m) = &r.memory {
        println!();
        let mut line = format!(
            "memory (proxy RSS): idle at start {}",
            fmt_kib(m.idle_start_kib)
        );
        if m.idle_after_load_kib.is_some() {
            line.push_str(&format!(
                ", idle after the scenarios {}",
                fmt_kib(m.idle_after_load_kib)
            ));
        }
        if let Some(s) = &m.soak {
            line.push_str(&format!(
                ", soak {} s at {} req/s: {} → {} (growth {:+.1} MiB, second-half trend {:+.0} \
                 KiB/min, max {})",
                s.seconds,
                s.rate,
                fmt_kib(Some(s.under_load_kib)),
                fmt_kib(Some(s.end_kib)),
                s.growth_kib as f64 / 1024.0,
                s.slope_kib_per_min,
                fmt_kib(Some(s.max_kib))
            ));
        }
        println!("{line}");
        if m.nginx_idle_start_kib.is_some() {
            let after = m
                .nginx_idle_after_load_kib
                .map(|k| format!(", after the scenarios {}", fmt_kib(Some(k))))
                .unwrap_or_default();
            println!(
                "memory (nginx, master + workers): idle at start {}{after}",
                fmt_kib(m.nginx_idle_start_kib)
            );
        }
    }
    if let Some(m) = &r.models_10k {
        let lat = m.latency.metrics.last();
        let p99 = |name: &str| {
            lat.and_then(|l| l.target(name))
                .map_or("–".to_string(), |t| t.p99_us.to_string())
        };
        println!(
            "{} models: RSS idle {} (3 models: {}), after load {}; ready after {:.0} ms; chat p99 \
             direct {} / proxy {} / proxy-10k {} µs{}",
            m.models,
            fmt_kib(m.idle_kib),
            fmt_kib(m.small_table_idle_kib),
            fmt_kib(m.after_load_kib),
            m.ready_ms,
            p99("direct"),
            p99("proxy"),
            p99("proxy-10k"),
            m.big_minus_small
                .map(|d| format!(" (10k − 3: p50 {:+} µs, p99 {:+} µs)", d.p50_us, d.p99_us))
                .unwrap_or_default()
        );
    }
    println!();
    if r.failures.is_empty() {
        println!("result:   ok");
    } else {
        println!("result:   FAILED");
        for f in &r.failures {
            println!("  - {f}");
        }
    }
}

fn metric_label(metric: &str) -> &'static str {
    match metric {
        "first_event" => "TTFB (first event)",
        "gap" => "inter-event gap",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_rss_samples() {
        let flat = [(0.0, 100), (10.0, 100), (20.0, 100)];
        assert_eq!(slope_per_min(flat.iter()), 0.0);
        // 1 KiB per second.
        let rising = [(0.0, 100), (10.0, 110), (20.0, 120)];
        assert_eq!(slope_per_min(rising.iter()), 60.0);
        assert_eq!(slope_per_min([(1.0, 5)].iter()), 0.0);
    }

    #[test]
    fn ms_summary_nearest_rank() {
        let s = MsSummary::of((1..=20).map(f64::from));
        assert_eq!((s.count, s.min_ms, s.max_ms), (20, 1.0, 20.0));
        assert_eq!((s.p50_ms, s.p90_ms), (10.0, 18.0));
        assert_eq!(MsSummary::of(std::iter::empty()).count, 0);
    }

    #[test]
    fn scenario_names() {
        assert_eq!(Scenario::Models10k.name(), "models-10k");
        assert_eq!(Scenario::ChatH2c.name(), "chat-h2c");
        assert_eq!(Scenario::GrpcBidi.latency(), Some(Latency::GrpcBidi));
        assert_eq!(Scenario::Propagation.latency(), None);
        let args = Args::parse_from(["bench", "--only", "chat,models-10k", "--quick"]);
        let s = Settings::from_args(&args);
        assert_eq!(s.scenarios, vec![Scenario::Chat, Scenario::Models10k]);
        assert_eq!(s.rate_per_target, 100.0);
    }
}
