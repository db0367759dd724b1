//! `request-cost`: what one proxied request costs `multiverse-proxy`, and nginx doing the same
//! job, in numbers that do not depend on how loaded the machine is (issue 18). Wall-clock
//! latency and throughput on a shared 2-core machine are noise; these are counts:
//!
//! - instructions per request, and calls of the allocator per request, from valgrind's
//!   callgrind ([`callgrind`]): counters zeroed after a family's warm-up, dumped after its
//!   measured requests;
//! - syscalls per request, by name, from `strace -c -f` attached for the measured requests
//!   only ([`strace`]);
//! - context switches per request (voluntary and involuntary, all threads, from /proc), and,
//!   for a proxy that counts its allocations (debug builds, or `--features alloc-count`), its
//!   allocations per request as the allocator itself counted them;
//! - CPU time per request (user and system, [`cputime`]), which with the same run's callgrind
//!   instructions gives instructions per user-CPU µs: what turns an instruction count into time.
//!
//! Each target (`multiverse-proxy` with one worker thread; `proxy-keys`, the same in keys mode
//! with the 1 000-key table of `bench --only keys`, its requests carrying the rpm-limited bench
//! key, HTTP families only; nginx as one process with one worker's configuration) is started
//! twice: natively for the /proc counts and strace, and
//! under callgrind. Per family it opens one connection, sends `--warmup` requests, then
//! `--requests` closed-loop requests one after another (each answer checked), measured. The
//! requests are those of `bench`'s latency scenarios (`multiverse_benches::load::scenario`),
//! against the same mocks.
//!
//! Output: a table per target and family, and with `--json FILE` every number. `--check` also
//! compares the proxy's allocations and syscalls per request with the budgets of
//! `multiverse_benches::load::budget` and exits with status 1 when one is exceeded. `--keep DIR`
//! keeps the callgrind dumps (one per target and family, function-level, a few hundred KiB
//! each) for `callgrind_annotate --inclusive=yes`. Needs valgrind, strace and (for the nginx
//! rows) nginx; exit status 0 when every measurement ran (and, with `--check`, every budget
//! held), 1 when a budget was exceeded, 2 when a measurement could not run.

mod callgrind;
mod cputime;
mod strace;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use multiverse_benches::load::budget;
use multiverse_benches::load::engine::Caller;
use multiverse_benches::load::machine::{command_line, Machine};
use multiverse_benches::load::scenario::{self, Concurrency, Latency};
use multiverse_benches::load::stack::{admin_client, Mocks};
use multiverse_mocks::common::termination_signal;
use multiverse_testkit::binaries::{MOCK_OPENAI, MOCK_TEI, PROXY};
use multiverse_testkit::{kill_process_groups, Binaries, Launch, ScratchDir};

use callgrind::Callgrind;
use target::{Kind, Running};

/// Per-request instructions, allocations, syscalls and context switches of the proxy and nginx.
#[derive(Debug, Parser)]
#[command(name = "request-cost", version)]
struct Args {
    /// Measured requests per family and target.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Requests per family before measuring (connections open and pooled, caches warm).
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    /// Families, comma-separated: chat, chat-h2c, sse, embed-http, grpc-unary, grpc-bidi.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chat,sse,embed-http,grpc-unary,chat-h2c"
    )]
    only: Vec<String>,
    /// What to measure: `native` (context switches; the proxy's allocation counter), `strace`,
    /// `callgrind`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "native,strace,callgrind"
    )]
    measure: Vec<Measure>,
    /// Targets: `proxy`, `proxy-keys` (keys mode: what checking a key costs), `nginx`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "proxy,nginx")]
    targets: Vec<Kind>,
    /// Directory of the mocks and the proxy [default: next to this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The proxy binary to measure, e.g. an older build for a before/after comparison
    /// [default: multiverse-proxy from the binaries' directory].
    #[arg(long, value_name = "FILE")]
    proxy_bin: Option<PathBuf>,
    /// nginx binary [default: `nginx` on PATH or /usr/sbin/nginx].
    #[arg(long, value_name = "FILE")]
    nginx: Option<PathBuf>,
    /// Keep the callgrind dumps in DIR (default: removed with the scratch directory).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Seconds of idle time measured under callgrind after the families (background work).
    #[arg(long, default_value_t = 1.0)]
    idle_secs: f64,
    /// Every number as JSON too.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Fail (exit status 1) when the proxy exceeds a budget of
    /// `multiverse_benches::load::budget` (allocations from callgrind, syscalls from strace).
    #[arg(long)]
    check: bool,
    /// With `strace`: also log every syscall (with fds and sizes) of a few more requests per
    /// family into DIR (`<target>-<family>.syscalls`), to see which reads and writes a request
    /// makes.
    #[arg(long, value_name = "DIR")]
    syscall_log: Option<PathBuf>,
}

/// Requests per family in a `--syscall-log`.
const SYSCALL_LOG_REQUESTS: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Measure {
    Native,
    Strace,
    Callgrind,
}

/// Everything measured for one target and family, per request.
#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    target: String,
    family: String,
    requests: u64,
    /// callgrind: instructions (all threads).
    instructions: Option<f64>,
    /// callgrind: calls of `__rust_alloc`, `__rust_alloc_zeroed`, `__rust_realloc`.
    rust_allocs: Option<f64>,
    /// callgrind: calls of libc's malloc, calloc, realloc.
    libc_allocs: Option<f64>,
    /// callgrind: instructions in memcpy itself (part of `instructions`; see callgrind.rs).
    memcpy_instructions: Option<f64>,
    /// strace: all syscalls.
    syscalls: Option<f64>,
    /// strace: by syscall.
    syscalls_by_name: BTreeMap<String, f64>,
    /// /proc: voluntary context switches (all threads).
    voluntary_switches: Option<f64>,
    /// /proc: involuntary context switches (all threads; depend on the machine's load).
    involuntary_switches: Option<f64>,
    /// The proxy's own counter: `alloc` + `realloc` calls.
    counted_allocs: Option<f64>,
    /// The proxy's own counter: bytes requested.
    counted_bytes: Option<f64>,
    /// /proc: CPU µs (all threads), user and user + system ([`cputime`]).
    user_cpu_us: Option<f64>,
    cpu_us: Option<f64>,
    /// The callgrind dump (when kept).
    dump: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    command: String,
    machine: Machine,
    proxy_bin: PathBuf,
    nginx: Option<String>,
    requests: u64,
    warmup: u64,
    rows: Vec<Row>,
    /// callgrind: instructions per second of an idle target, by target.
    idle_instructions_per_second: BTreeMap<String, f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("request-cost: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn families(names: &[String]) -> anyhow::Result<Vec<Latency>> {
    names
        .iter()
        .map(|n| {
            Latency::ALL
                .into_iter()
                .find(|l| l.name() == n)
                .with_context(|| format!("--only: unknown family {n:?}"))
        })
        .collect()
}

/// Runs the measurements; `Ok(false)` when `--check` found a budget exceeded.
fn run(args: &Args) -> anyhow::Result<bool> {
    let families = families(&args.only)?;
    let bins = match &args.bin_dir {
        Some(dir) => Binaries::in_dir(dir),
        None => Binaries::beside_exe(),
    };
    bins.check(&[MOCK_OPENAI, MOCK_TEI])?;
    let proxy_bin = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => bins.path(PROXY)?,
    };
    let nginx_bin = if args.targets.contains(&Kind::Nginx) {
        let bin = multiverse_benches::load::stack::nginx_binary(args.nginx.as_deref(), false)
            .map_err(anyhow::Error::msg)?;
        Some(bin)
    } else {
        None
    };
    // One thread: children are spawned from it (their parent-death signal is tied to it),
    // and the requests are sent one after another anyway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let scratch = ScratchDir::new("request-cost")?;
    let signal = {
        let _context = rt.enter();
        termination_signal()
    };
    let scratch_path = scratch.path().to_path_buf();
    rt.spawn(async move {
        signal.await;
        eprintln!("request-cost: interrupted");
        kill_process_groups();
        let _ = std::fs::remove_dir_all(&scratch_path);
        std::process::exit(130);
    });

    let launch = Launch::new(bins, scratch.path());
    let mocks = Mocks::start(&launch, 0)?;
    let cg_dir = args
        .keep
        .clone()
        .unwrap_or_else(|| scratch.path().join("callgrind"));
    let cg = Callgrind::new(&cg_dir)?;
    let client = admin_client()?;
    let start = |kind: Kind, wrapper: &[String]| -> anyhow::Result<Running> {
        let running = match kind {
            Kind::Proxy | Kind::ProxyKeys => Running::proxy(
                &launch,
                &proxy_bin,
                &mocks.addrs,
                kind == Kind::ProxyKeys,
                wrapper,
            )?,
            Kind::Nginx => {
                let bin = nginx_bin.as_deref().context("no nginx")?;
                Running::nginx(&launch, bin, &mocks.addrs, wrapper)?
            }
        };
        rt.block_on(running.wait_ready(&client))?;
        Ok(running)
    };

    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut idle = BTreeMap::new();
    for &kind in &args.targets {
        let name = kind.name();
        // Requests are built per call: they carry the key while the keyed proxy is measured.
        scenario::send_bench_key(kind == Kind::ProxyKeys);
        let families: Vec<Latency> = families
            .iter()
            .copied()
            .filter(|&f| kind.measures(f))
            .collect();
        let native = args.measure.contains(&Measure::Native);
        let traced = args.measure.contains(&Measure::Strace);
        if native || traced {
            let running = start(kind, &[])?;
            let pid = running.pid();
            for &family in &families {
                let row = row(&mut rows, name, family, args.requests);
                let call = rt.block_on(connect(family, name, &running))?;
                rt.block_on(send(&call, args.warmup))?;
                if native {
                    let switches = strace::context_switches(pid)?;
                    let counted = running.allocations();
                    let cpu = cputime::CpuTime::of(pid)?;
                    rt.block_on(send(&call, args.requests))?;
                    let after = strace::context_switches(pid)?;
                    let (user, total) =
                        cputime::CpuTime::of(pid)?.per_request_since(&cpu, args.requests);
                    (row.user_cpu_us, row.cpu_us) = (Some(user), Some(total));
                    let n = args.requests as f64;
                    row.voluntary_switches = Some((after.0 - switches.0) as f64 / n);
                    row.involuntary_switches = Some((after.1 - switches.1) as f64 / n);
                    if let (Some(before), Some(after)) = (counted, running.allocations()) {
                        let d = after.since(&before);
                        row.counted_allocs = Some(d.allocations() as f64 / n);
                        row.counted_bytes = Some(d.bytes as f64 / n);
                    }
                }
                if traced {
                    let attached = strace::Attached::attach(
                        pid,
                        &format!("{name}-{}", family.name()),
                        scratch.path(),
                    )?;
                    rt.block_on(send(&call, args.requests))?;
                    let calls = attached.finish()?;
                    let n = args.requests as f64;
                    row.syscalls = Some(calls.values().sum::<u64>() as f64 / n);
                    row.syscalls_by_name =
                        calls.into_iter().map(|(k, v)| (k, v as f64 / n)).collect();
                    if let Some(dir) = &args.syscall_log {
                        std::fs::create_dir_all(dir)?;
                        let log = format!("{name}-{}", family.name());
                        let attached = strace::Attached::attach_with(
                            pid,
                            &log,
                            scratch.path(),
                            &["-tt", "-e", "trace=!epoll_wait,clock_nanosleep"],
                        )?;
                        rt.block_on(send(&call, SYSCALL_LOG_REQUESTS))?;
                        let file = attached.finish_log()?;
                        let kept = dir.join(format!("{log}.syscalls"));
                        std::fs::copy(&file, &kept)
                            .with_context(|| format!("cannot write {}", kept.display()))?;
                    }
                }
            }
            running.ensure_running()?;
        }
        if args.measure.contains(&Measure::Callgrind) {
            let running = start(kind, &cg.wrapper(name))?;
            let pid = running.pid();
            cg.instrument(pid)?;
            for &family in &families {
                let call = rt.block_on(connect(family, name, &running))?;
                rt.block_on(send(&call, args.warmup))?;
                cg.zero(pid)?;
                rt.block_on(send(&call, args.requests))?;
                let (dump, file) = cg.dump(name, pid, family.name())?;
                let row = row(&mut rows, name, family, args.requests);
                let n = args.requests as f64;
                row.instructions = Some(dump.instructions as f64 / n);
                row.rust_allocs = Some(dump.rust_allocs as f64 / n);
                row.libc_allocs = Some(dump.libc_allocs as f64 / n);
                row.memcpy_instructions = Some(dump.memcpy_instructions as f64 / n);
                row.dump = args.keep.is_some().then_some(file);
            }
            if args.idle_secs > 0.0 {
                cg.zero(pid)?;
                std::thread::sleep(Duration::from_secs_f64(args.idle_secs));
                let (dump, _) = cg.dump(name, pid, "idle")?;
                idle.insert(name.to_string(), dump.instructions as f64 / args.idle_secs);
            }
            running.ensure_running()?;
        }
    }
    scenario::send_bench_key(false);
    let report = Report {
        benchmark: "request-cost",
        command: command_line(),
        machine: Machine::detect(),
        proxy_bin,
        nginx: nginx_bin
            .as_deref()
            .map(multiverse_benches::load::nginx::version),
        requests: args.requests,
        warmup: args.warmup,
        rows: rows.into_values().collect(),
        idle_instructions_per_second: idle,
    };
    print(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let over = over_budget(&report.rows);
    for line in &over {
        println!("  OVER BUDGET: {line}");
    }
    Ok(!args.check || over.is_empty())
}

/// The proxy's rows that exceed their family's budget, described.
fn over_budget(rows: &[Row]) -> Vec<String> {
    let mut over = Vec::new();
    for r in rows.iter().filter(|r| r.target == Kind::Proxy.name()) {
        let Some(b) = Latency::ALL
            .into_iter()
            .find(|l| l.name() == r.family)
            .and_then(budget::of)
        else {
            continue;
        };
        if let Some(a) = r.rust_allocs.filter(|&a| a > b.allocations_release) {
            over.push(format!(
                "{}: {a:.2} allocations/request, budget {}",
                r.family, b.allocations_release
            ));
        }
        if let Some(s) = r.syscalls.filter(|&s| s > b.syscalls) {
            over.push(format!(
                "{}: {s:.2} syscalls/request, budget {}",
                r.family, b.syscalls
            ));
        }
    }
    over
}

fn row<'a>(
    rows: &'a mut BTreeMap<(String, String), Row>,
    target: &str,
    family: Latency,
    requests: u64,
) -> &'a mut Row {
    rows.entry((target.to_string(), family.name().to_string()))
        .or_insert_with(|| Row {
            target: target.to_string(),
            family: family.name().to_string(),
            requests,
            ..Row::default()
        })
}

/// The family's caller on one connection (or one in-flight request on one HTTP/2 connection);
/// it sends one checked request on the way.
async fn connect(family: Latency, name: &str, running: &Running) -> anyhow::Result<Caller> {
    let one = Concurrency {
        http1_connections: 1,
        sse_connections: 1,
        h2_in_flight: 1,
        bidi_streams: 1,
    };
    scenario::caller(family, name, &running.addrs(), &one).await
}

/// `n` requests, one after another; any failure ends the run.
async fn send(call: &Caller, n: u64) -> anyhow::Result<()> {
    for i in 0..n {
        if let Err(e) = call().await {
            bail!("request {i} failed: {e}");
        }
    }
    Ok(())
}

/// Per family measured by both `proxy` and `proxy-keys`: what keys mode adds per request.
fn keys_minus_open(rows: &[Row]) -> Vec<String> {
    let find = |target: &str, family: &str| {
        rows.iter()
            .find(|r| r.target == target && r.family == family)
    };
    let diff = |a: Option<f64>, b: Option<f64>, decimals: usize| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.decimals$}", a - b),
        _ => "-".into(),
    };
    rows.iter()
        .filter(|r| r.target == Kind::ProxyKeys.name())
        .filter_map(|keyed| {
            let open = find(Kind::Proxy.name(), &keyed.family)?;
            Some(format!(
                "proxy-keys − proxy {}: instructions {}, allocations {} (counted {}), syscalls {}",
                keyed.family,
                diff(keyed.instructions, open.instructions, 0),
                diff(keyed.rust_allocs, open.rust_allocs, 2),
                diff(keyed.counted_allocs, open.counted_allocs, 2),
                diff(keyed.syscalls, open.syscalls, 2),
            ))
        })
        .collect()
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn print(report: &Report) {
    println!(
        "request-cost: {} requests per family after {} warm-up, one connection, closed loop ({})",
        report.requests,
        report.warmup,
        report.machine.line()
    );
    println!(
        "{:<10} {:<11} {:>12} {:>10} {:>11} {:>9} {:>10} {:>11} {:>12}",
        "target",
        "family",
        "instr/req",
        "memcpy",
        "allocs/req",
        "libc/req",
        "sysc/req",
        "ctxsw/req",
        "counted/req"
    );
    for r in &report.rows {
        let switches = match (r.voluntary_switches, r.involuntary_switches) {
            (Some(v), Some(n)) => format!("{v:.2}+{n:.2}"),
            _ => "-".into(),
        };
        println!(
            "{:<10} {:<11} {:>12} {:>10} {:>11} {:>9} {:>10} {:>11} {:>12}",
            r.target,
            r.family,
            fmt(r.instructions, 0),
            fmt(r.memcpy_instructions, 0),
            fmt(r.rust_allocs, 2),
            fmt(r.libc_allocs, 2),
            fmt(r.syscalls, 2),
            switches,
            fmt(r.counted_allocs, 2),
        );
    }
    for r in report
        .rows
        .iter()
        .filter(|r| !r.syscalls_by_name.is_empty())
    {
        let parts: Vec<String> = r
            .syscalls_by_name
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        println!("  {} {} syscalls: {}", r.target, r.family, parts.join(", "));
    }
    for line in keys_minus_open(&report.rows) {
        println!("  {line}");
    }
    for r in &report.rows {
        if let (Some(user), Some(total)) = (r.user_cpu_us, r.cpu_us) {
            let rate = r.instructions.map(|i| i / user);
            println!(
                "  {} {} cpu: {user:.1} µs user + {:.1} µs system per request; {} instructions per user µs",
                r.target, r.family, total - user, fmt(rate, 0)
            );
        }
    }
    for (target, ips) in &report.idle_instructions_per_second {
        println!("  {target} idle: {ips:.0} instructions/s");
    }
}
