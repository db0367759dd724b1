//! `bench`: Multiverse's benchmark suite, in one run on one machine.
//!
//! It starts the mock backends (`mock-openai`, `mock-tei` over HTTP and gRPC), a standalone
//! `multiverse-proxy` in front of them and, when installed, nginx and haproxy configured as the
//! same kind of proxy, then runs the selected scenarios:
//!
//! - latency (`chat`, `chat-h2c`, `sse`, `embed-http`, `grpc-unary`, `grpc-bidi`): open-loop
//!   constant-rate arrivals interleaved across the targets (direct to the mock, through the
//!   proxy, through nginx), latency from each request's intended send time into hdrhistograms;
//!   p50/p90/p99/p99.9/max per target and what each proxy adds over direct, per percentile.
//!   For SSE: time to first event, gaps between events, and the whole stream.
//! - `throughput`: closed loop, N workers per target taking turns slice by slice: the most
//!   requests per second each target sustains (chat over HTTP/1.1, gRPC unary).
//! - `rates`: chat latency at each `--rates` rate (50, 1000, 5000 req/s per target), and
//!   closed-loop chat with the proxy, nginx and haproxy at 1 and at 2 threads each.
//! - `propagation`: a control plane and N proxies fed by it; the time from a backend
//!   registration / deregistration at the operator API until every proxy routes by it, and
//!   failed requests through one proxy while 100 changes are pushed under load.
//! - `memory`: the proxy's RSS idle, under load and over a soak.
//! - `models-10k`: the proxy with 10 000 models in its table: RSS, and chat latency against the
//!   proxy with a small table in the same run.
//! - `keys`: a proxy in keys mode (1 000 keys) against the open proxy: chat latency, what the
//!   key check adds.
//! - `prefix`: prefix-cache hit rate and TTFT, least_request vs prefix_affinity (4 endpoints
//!   with simulated prefix caches, 2 proxies per arm, interleaved), and prefix_affinity's
//!   hot-path cost beside the proxy.
//! - `usage`: the proxy asking streams' usage for their clients (the default) against a proxy
//!   with `[usage] request_stream_usage = false`: sse latency, what asking and hiding add.
//! - `arrow`: rows/s for 10k short texts, one `BatchEmbed/EmbedArrow` call against `/embed`
//!   calls of 1 and of max_client_batch_size texts, through the same proxy.
//! - `hedge`: /v1/embeddings p50/p99 with one of two endpoints stalling 5 % of its requests,
//!   hedging off vs `hedge_after_ms = 50` (one proxy per arm, interleaved).
//! - `policies`: each routing policy's hot-path cost against least_request (one fresh proxy
//!   per policy, interleaved), and least_request vs peak_ewma with one slow endpoint of two.
//!
//! Output: a table per scenario as it finishes, a summary at the end, and with `--json FILE`
//! every number in one JSON document. Exit status: 0 when every scenario ran without a failed
//! request and every target has samples, 1 otherwise, 2 when the suite could not run.
//!
//! The binaries are found next to this executable (`cargo build --release --workspace --bins`;
//! `scripts/bench` does that and runs this) unless `--bin-dir` says otherwise. Children are
//! killed when it exits.

//!
//! Modules, one per part of the run: [`cli`] (command line and settings), [`latency`],
//! [`throughput`], [`rates`], [`memory`], [`models`], [`keys`], [`prefix`], [`policies`], [`usage`] and [`propagation`] (the scenarios, each with its
//! record), [`cpu`] (CPU per request), [`record`] (the JSON document) and [`summary`] (the
//! header and the closing tables).

mod arrow;
mod cli;
mod cpu;
mod hedge;
mod keys;
mod latency;
mod memory;
mod models;
mod policies;
mod prefix;
mod propagation;
mod rates;
mod record;
mod summary;
mod throughput;
mod usage;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use multiverse_benches::load::machine::{command_line, Machine};
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::stack::{self, admin_client, Others, Stack};
use multiverse_benches::load::{haproxy, rss};
use multiverse_mocks::common::termination_signal;
use multiverse_testkit::binaries::{CONTROL, MOCK_OPENAI, MOCK_TEI, PROXY};
use multiverse_testkit::{kill_process_groups, Binaries, Launch, ScratchDir};

use cli::{Args, Scenario, Settings};
use memory::{fmt_kib, MemoryRecord};
use record::{NginxInfo, Record};

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

/// The binaries, all checked to be there before anything starts.
fn binaries(args: &Args) -> anyhow::Result<Binaries> {
    let bins = match &args.bin_dir {
        Some(dir) => Binaries::in_dir(dir),
        None => Binaries::beside_exe(),
    };
    bins.check(&[MOCK_OPENAI, MOCK_TEI, PROXY, CONTROL])?;
    Ok(bins)
}

pub fn runtime(threads: u32, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
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
    let client = admin_client()?;

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
        kill_process_groups();
        let _ = std::fs::remove_dir_all(&scratch_path);
        std::process::exit(130);
    });

    let mut record = Record {
        benchmark: "bench",
        command: command_line(),
        machine: Machine::detect(),
        loadavg_before: summary::loadavg(),
        loadavg_after: String::new(),
        settings: settings.clone(),
        nginx: NginxInfo::default(),
        haproxy: NginxInfo::default(),
        latency: Vec::new(),
        throughput: Vec::new(),
        rates: None,
        propagation: None,
        memory: None,
        models_10k: None,
        keys: None,
        prefix: None,
        usage: None,
        arrow: None,
        hedge: None,
        policies: None,
        failures: Vec::new(),
        ok: false,
        elapsed_s: 0.0,
    };
    summary::print_header(&record);

    let needs_stack = settings
        .scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::Propagation | Scenario::Arrow));
    if needs_stack {
        let others = Others {
            nginx_bin: stack::nginx_binary(args.nginx_bin.as_deref(), args.no_nginx),
            nginx_workers: settings.nginx_workers,
            haproxy_bin: haproxy::binary(args.haproxy_bin.as_deref(), args.no_haproxy),
            haproxy_threads: settings.haproxy_threads,
        };
        let launch = Launch::new(bins.clone(), scratch.path());
        let stack = Stack::start(&launch, settings.chunk_interval_ms, &others)?;
        rt.block_on(stack.proxy.try_wait_ready(&client))?;
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
        match &stack.haproxy {
            Ok(h) => {
                record.haproxy = NginxInfo {
                    used: true,
                    version: Some(h.version.clone()),
                    note: Some(format!(
                        "nbthread {}; config: haproxy.cfg written by bench",
                        h.threads
                    )),
                };
                println!(
                    "haproxy:  {} ({} threads), compared as a fourth target",
                    h.version, h.threads
                );
            }
            Err(why) => {
                record.haproxy.note = Some(why.clone());
                println!("haproxy:  not used: {why}; the haproxy rows are left out");
            }
        }
        let mut memory = MemoryRecord {
            idle_start_kib: rss::rss_kib(stack.proxy.proc.pid()),
            nginx_idle_start_kib: stack
                .nginx
                .as_ref()
                .ok()
                .and_then(|n| rss::rss_with_children_kib(n.proc.pid())),
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
            match latency::latency_scenario(&rt, &stack, scenario, &settings) {
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
                match throughput::throughput_scenario(&crt, &stack, scenario, &settings) {
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
        if settings.has(Scenario::Rates) && stack.ensure_running().is_ok() {
            loaded = true;
            match rates::rates_scenario(&rt, &launch, &client, &stack, &others, &settings) {
                Ok(r) => {
                    record.failures.extend(r.failures.iter().cloned());
                    record.rates = Some(r);
                }
                Err(e) => record.failures.push(format!("rates: {e:#}")),
            }
        }
        if loaded {
            // Let connections settle, then read the idle RSS again.
            std::thread::sleep(Duration::from_secs(1));
            memory.idle_after_load_kib = rss::rss_kib(stack.proxy.proc.pid());
            memory.nginx_idle_after_load_kib = stack
                .nginx
                .as_ref()
                .ok()
                .and_then(|n| rss::rss_with_children_kib(n.proc.pid()));
        }
        if settings.has(Scenario::Memory) && stack.ensure_running().is_ok() {
            match memory::soak(&rt, &stack, &settings) {
                Ok(s) => {
                    record.failures.extend(s.failures.iter().cloned());
                    memory.soak = Some(s);
                }
                Err(e) => record.failures.push(format!("memory: {e:#}")),
            }
        }
        if settings.has(Scenario::Memory) || loaded {
            memory::print_memory(&memory);
            record.memory = Some(memory);
        }
        if settings.has(Scenario::Models10k) && stack.ensure_running().is_ok() {
            match models::models_scenario(&rt, &launch, &client, &stack, &settings) {
                Ok(m) => {
                    record.failures.extend(m.latency.failures.iter().cloned());
                    record.models_10k = Some(m);
                }
                Err(e) => record.failures.push(format!("models-10k: {e:#}")),
            }
        }
        if settings.has(Scenario::Keys) && stack.ensure_running().is_ok() {
            match keys::keys_scenario(&rt, &launch, &client, &stack, &settings) {
                Ok(k) => {
                    record.failures.extend(k.latency.failures.iter().cloned());
                    record.keys = Some(k);
                }
                Err(e) => record.failures.push(format!("keys: {e:#}")),
            }
        }
        if settings.has(Scenario::Prefix) && stack.ensure_running().is_ok() {
            match prefix::prefix_scenario(&rt, &launch, &client, &stack, &settings) {
                Ok(p) => {
                    record.failures.extend(p.hot_path.failures.iter().cloned());
                    for arm in &p.arms {
                        if arm.failures > 0 || arm.measured == 0 {
                            record.failures.push(format!(
                                "prefix {}: {} failed, {} measured",
                                arm.lb, arm.failures, arm.measured
                            ));
                        }
                    }
                    record.prefix = Some(p);
                }
                Err(e) => record.failures.push(format!("prefix: {e:#}")),
            }
        }
        if settings.has(Scenario::Usage) && stack.ensure_running().is_ok() {
            match usage::usage_scenario(&rt, &launch, &client, &stack, &settings) {
                Ok(u) => {
                    record.failures.extend(u.latency.failures.iter().cloned());
                    record.usage = Some(u);
                }
                Err(e) => record.failures.push(format!("usage: {e:#}")),
            }
        }
        if settings.has(Scenario::Hedge) && stack.ensure_running().is_ok() {
            match hedge::hedge_scenario(&rt, &launch, &client, &settings) {
                Ok(h) => {
                    for arm in &h.arms {
                        if arm.errors > 0 || arm.count == 0 {
                            record.failures.push(format!(
                                "hedge {}: {} failed, {} measured",
                                arm.name, arm.errors, arm.count
                            ));
                        }
                    }
                    record.hedge = Some(h);
                }
                Err(e) => record.failures.push(format!("hedge: {e:#}")),
            }
        }
        if settings.has(Scenario::Policies) && stack.ensure_running().is_ok() {
            match policies::policies_scenario(&rt, &launch, &client, &stack, &settings) {
                Ok(p) => {
                    record.failures.extend(p.hot_path.failures.iter().cloned());
                    for arm in &p.slow.arms {
                        let l = &arm.latency;
                        if l.errors > 0 || l.count == 0 {
                            record.failures.push(format!(
                                "policies slow {}: {} failed, {} measured",
                                arm.lb, l.errors, l.count
                            ));
                        }
                    }
                    record.policies = Some(p);
                }
                Err(e) => record.failures.push(format!("policies: {e:#}")),
            }
        }
        if let Err(e) = stack.ensure_running() {
            record.failures.push(format!("{e:#}"));
        }
        drop(stack);
    }

    if settings.has(Scenario::Arrow) {
        let launch = Launch::new(bins.clone(), scratch.path());
        match arrow::arrow_scenario(&rt, &launch, &client, settings.arrow_rows) {
            Ok(a) => {
                arrow::print_arrow(&a);
                for arm in &a.arms {
                    if arm.failed_rows > 0 {
                        record.failures.push(format!(
                            "arrow {}: {} rows failed",
                            arm.arm, arm.failed_rows
                        ));
                    }
                }
                record.arrow = Some(a);
            }
            Err(e) => record.failures.push(format!("arrow: {e:#}")),
        }
    }

    if settings.has(Scenario::Propagation) {
        let launch = Launch::new(bins, scratch.path());
        match propagation::propagation_scenario(&rt, &launch, &client, &settings) {
            Ok(p) => {
                record.failures.extend(p.failures.iter().cloned());
                record.propagation = Some(p);
            }
            Err(e) => record.failures.push(format!("propagation: {e:#}")),
        }
    }

    record.loadavg_after = summary::loadavg();
    record.ok = record.failures.is_empty();
    record.elapsed_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    summary::print_summary(&record);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&record)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("json:     {}", path.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(record.ok)
}
