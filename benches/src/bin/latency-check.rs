//! `latency-check`: what the proxy adds to a request's latency, measured against a direct
//! connection to the same backend in the same run.
//!
//! It starts its own `mock-openai` (`--tokens 4 --latency-ms 0`) and a standalone
//! `multiverse-proxy` routing model `demo` to it, both on free loopback ports, then sends
//! `POST /v1/chat/completions` at a constant open-loop rate, alternating arrivals between the
//! mock directly (even arrivals) and the proxy (odd arrivals), so both targets share the same
//! machine noise. Each request's latency runs from its intended send time to the last byte of
//! the response (coordinated omission corrected) and goes into an hdrhistogram per target.
//!
//! Output: a table (count, errors, throughput, p50/p90/p99/p99.9/max in µs per target, and the
//! proxy − direct difference per percentile), then one JSON line with the same numbers, the
//! exact command line and the machine. `--json` prints only the JSON line. The exit status is
//! 0 when every request succeeded and both targets have samples, 1 otherwise, and 2 when the
//! check could not run (a binary missing, a child failing to start).
//!
//! With `--baseline-bin <PATH>` a second proxy (another build, e.g. the one before a change)
//! runs in front of the same mock, and arrivals rotate over three targets — direct, proxy,
//! baseline — so an A/B of two builds shares the same machine noise request by request; the
//! report adds `baseline − direct` and `proxy − baseline`.
//!
//! The children are found next to this executable (`cargo build --workspace --bins`, with
//! `--release` for numbers worth quoting) unless `--mock-bin` / `--proxy-bin` say otherwise,
//! are started by the test kit's stack launcher (the proxy's config and routes files written
//! from its own config types) and are killed when it exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::mpsc;

use multiverse_benches::load::http::{snippet, Http1Pool};
use multiverse_benches::load::machine::{
    command_line, parse_non_negative, parse_positive, Machine,
};
use multiverse_benches::load::report::{self, latency_histogram, Added, Summary};
use multiverse_benches::load::schedule::{self, Phase, Plan};
use multiverse_benches::load::stack::{admin_client, standalone_proxy};
use multiverse_mocks::common::termination_signal;
use multiverse_proxy::standalone::RoutesFile;
use multiverse_testkit::binaries::{MOCK_OPENAI, PROXY};
use multiverse_testkit::routes::{endpoint, model};
use multiverse_testkit::{Binaries, Launch, MockOpenAi, ScratchDir};

/// The request every arrival sends (to model `demo`).
const PATH: &str = "/v1/chat/completions";
const BODY: &[u8] =
    br#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
/// The mock's settings: four tokens, no artificial latency.
const MOCK_ARGS: [&str; 4] = ["--tokens", "4", "--latency-ms", "0"];
/// Target names (each cycle of arrivals visits every one once, shuffled: `Tick::target`); the
/// third only with `--baseline-bin`.
const TARGETS: [&str; 3] = ["direct", "proxy", "baseline"];
const ADDED_LABEL: &str = "added (proxy − direct)";
const BASELINE_LABEL: &str = "added (baseline − direct)";
const AB_LABEL: &str = "proxy − baseline";

/// Proxy vs direct latency in one open-loop run (hdrhistogram, p50/p99 and more).
#[derive(Debug, Parser)]
#[command(
    name = "latency-check",
    version,
    long_about = "Starts mock-openai and a standalone multiverse-proxy in front of it, sends \
                  POST /v1/chat/completions at a constant open-loop rate alternating between \
                  the mock (direct) and the proxy, and reports latency percentiles per target \
                  and what the proxy adds. Latency is measured from each request's intended \
                  send time. Exit status: 0 all requests succeeded, 1 errors or no samples, 2 \
                  the check could not run."
)]
struct Args {
    /// Arrivals per second, both targets together (each gets half) [default: 1000; 200 with
    /// --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    rate: Option<f64>,
    /// Measured seconds [default: 10; 2 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    duration: Option<f64>,
    /// Seconds of load before measuring (sent, not recorded) [default: 2; 0.5 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_non_negative)]
    warmup: Option<f64>,
    /// Keep-alive connections per target (also the most requests in flight per target).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// A short smoke run for CI: --rate 200 --duration 2 --warmup 0.5 (explicit flags win).
    #[arg(long)]
    quick: bool,
    /// Print only the JSON record.
    #[arg(long)]
    json: bool,
    /// Seconds after its intended send time a request counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_positive)]
    timeout: f64,
    /// Tokio worker threads of the load generator (the pacer is one more thread).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// The mock-openai binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    mock_bin: Option<PathBuf>,
    /// The multiverse-proxy binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    proxy_bin: Option<PathBuf>,
    /// A second multiverse-proxy binary to compare with (A/B): arrivals rotate over direct,
    /// proxy and this baseline.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
}

/// The settings in force, as recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    rate: f64,
    rate_per_target: f64,
    duration_s: f64,
    warmup_s: f64,
    connections_per_target: u32,
    timeout_s: f64,
    generator_threads: u32,
    quick: bool,
    request: String,
    mock: String,
}

impl Settings {
    fn from_args(args: &Args) -> Self {
        let targets = if args.baseline_bin.is_some() { 3 } else { 2 };
        let (rate, duration, warmup) = if args.quick {
            (200.0, 2.0, 0.5)
        } else {
            (1000.0, 10.0, 2.0)
        };
        let rate = args.rate.unwrap_or(rate);
        Self {
            rate,
            rate_per_target: rate / targets as f64,
            duration_s: args.duration.unwrap_or(duration),
            warmup_s: args.warmup.unwrap_or(warmup),
            connections_per_target: args.connections,
            timeout_s: args.timeout,
            generator_threads: args.threads,
            quick: args.quick,
            request: format!("POST {PATH} {}", String::from_utf8_lossy(BODY)),
            mock: format!("mock-openai {}", MOCK_ARGS.join(" ")),
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            rate: self.rate,
            warmup: Duration::from_secs_f64(self.warmup_s),
            duration: Duration::from_secs_f64(self.duration_s),
        }
    }
}

/// The machine-readable record (one JSON line).
#[derive(Debug, Serialize)]
struct Record {
    benchmark: &'static str,
    command: String,
    machine: Machine,
    settings: Settings,
    /// Measured-window results, one per target (`direct`, `proxy`, and `baseline` with
    /// `--baseline-bin`).
    targets: Vec<Summary>,
    /// Proxy minus direct, per percentile, µs.
    added_proxy_minus_direct: Added,
    /// With `--baseline-bin`: baseline minus direct, and proxy minus baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    added_baseline_minus_direct: Option<Added>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_minus_baseline: Option<Added>,
    /// Failed requests during the warm-up (not in `targets[].errors`), per target.
    warmup_errors: BTreeMap<String, u64>,
    pacer: PacerRecord,
    /// True when every request succeeded, both targets have samples and neither child died.
    ok: bool,
}

/// How well the load generator kept to its schedule.
#[derive(Debug, Serialize)]
struct PacerRecord {
    arrivals: u64,
    measured_arrivals: u64,
    late_p99_us: u64,
    late_max_us: u64,
}

/// One finished request.
struct Outcome {
    target: usize,
    phase: Phase,
    result: Result<Duration, String>,
}

/// What the collector gathered for one target.
struct TargetResults {
    hist: Histogram<u64>,
    errors: u64,
    warmup_errors: u64,
    first_error: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("latency-check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let settings = Settings::from_args(args);
    let plan = settings.plan();
    plan.validate().map_err(anyhow::Error::msg)?;
    let mut bins = Binaries::beside_exe();
    if let Some(path) = &args.mock_bin {
        bins = bins.with(MOCK_OPENAI, path);
    }
    if let Some(path) = &args.proxy_bin {
        bins = bins.with(PROXY, path);
    }
    bins.check(&[MOCK_OPENAI, PROXY])?;
    let baseline_bins = match &args.baseline_bin {
        Some(path) => {
            let bins = bins.clone().with(PROXY, path);
            bins.check(&[PROXY])?;
            Some(bins)
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .thread_name("latency-check")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    // Children are spawned from this (the main) thread, which their PR_SET_PDEATHSIG is tied
    // to, and are dropped — killed — before `scratch` is removed. On SIGINT/SIGTERM the process
    // exits at once: the kernel kills the children, and the scratch directory is removed here.
    let scratch = ScratchDir::new("latency-check")?;
    let signal = {
        let _context = runtime.enter();
        termination_signal()
    };
    let scratch_path = scratch.path().to_path_buf();
    runtime.spawn(async move {
        signal.await;
        eprintln!("latency-check: interrupted");
        let _ = std::fs::remove_dir_all(&scratch_path);
        std::process::exit(130);
    });
    let launch = Launch::new(bins, scratch.path());
    let mock = MockOpenAi::try_start(&launch, "mock", &MOCK_ARGS)?;
    let mut proxies = vec![standalone_proxy(
        &launch,
        "multiverse-proxy",
        &routes(mock.addr),
    )?];
    if let Some(bins) = baseline_bins {
        let launch = Launch::new(bins, scratch.path());
        proxies.push(standalone_proxy(
            &launch,
            "baseline-proxy",
            &routes(mock.addr),
        )?);
    }
    let targets = &TARGETS[..1 + proxies.len()];

    let connections = args.connections as usize;
    let pools: Arc<Vec<Http1Pool>> = Arc::new(
        std::iter::once(mock.addr)
            .chain(proxies.iter().map(|p| p.listen))
            .map(|addr| Http1Pool::new(addr, connections))
            .collect(),
    );
    let client = admin_client()?;
    runtime.block_on(async {
        for proxy in &proxies {
            proxy.try_wait_ready(&client).await?;
        }
        for (i, (name, pool)) in targets.iter().zip(pools.iter()).enumerate() {
            pool.warm()
                .await
                .with_context(|| format!("cannot open connections to {name}"))?;
            let excerpt = i
                .checked_sub(1)
                .map(|p| proxies[p].proc.log_excerpt())
                .unwrap_or_default();
            check_once(name, pool, i > 0)
                .await
                .map_err(|e| anyhow::anyhow!("{e}{excerpt}"))?;
        }
        anyhow::Ok(())
    })?;

    // The measurement: the pacer runs on this thread and spawns one task per arrival.
    let timeout = Duration::from_secs_f64(settings.timeout_s);
    let (tx, rx) = mpsc::unbounded_channel::<Outcome>();
    let collector = runtime.spawn(collect(rx, targets.len()));
    let pacer = schedule::run(&plan, |tick| {
        let target = tick.target(targets.len());
        let pools = Arc::clone(&pools);
        let tx = tx.clone();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::from_std(tick.intended + timeout);
            let result =
                match tokio::time::timeout_at(deadline, pools[target].send(request())).await {
                    Ok(Ok(response)) if response.status() == StatusCode::OK => {
                        Ok(tick.intended.elapsed())
                    }
                    Ok(Ok(response)) => Err(format!(
                        "HTTP {}: {}",
                        response.status(),
                        snippet(response.body())
                    )),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no response within {timeout:?} of the send time")),
                };
            let _ = tx.send(Outcome {
                target,
                phase: tick.phase,
                result,
            });
        });
    });
    drop(tx);
    let results = runtime
        .block_on(async { tokio::time::timeout(timeout + Duration::from_secs(5), collector).await })
        .context("requests still running long after their timeout")?
        .context("the result collector failed")?;
    drop(runtime);
    // A child that died during the run fails it, after the report of what was measured.
    let died: Vec<String> = proxies
        .iter()
        .map(|p| &p.proc)
        .chain([&mock.proc])
        .filter_map(|child| child.ensure_running().err())
        .map(|e| format!("{e:#}"))
        .collect();

    // The report.
    let window = plan.duration;
    let names = targets;
    let targets: Vec<Summary> = names
        .iter()
        .zip(&results)
        .map(|(name, r)| Summary::new(name, &r.hist, r.errors, window))
        .collect();
    let added = Added::between(&targets[1], &targets[0]);
    let baseline = targets.get(2).map(|b| {
        (
            Added::between(b, &targets[0]),
            Added::between(&targets[1], b),
        )
    });
    let ok = died.is_empty()
        && results
            .iter()
            .all(|r| r.errors == 0 && r.warmup_errors == 0 && !r.hist.is_empty());
    let record = Record {
        benchmark: "latency-check",
        command: command_line(),
        machine: Machine::detect(),
        settings: settings.clone(),
        targets: targets.clone(),
        added_proxy_minus_direct: added,
        added_baseline_minus_direct: baseline.map(|b| b.0),
        proxy_minus_baseline: baseline.map(|b| b.1),
        warmup_errors: names
            .iter()
            .zip(&results)
            .map(|(name, r)| (name.to_string(), r.warmup_errors))
            .collect(),
        pacer: PacerRecord {
            arrivals: pacer.ticks,
            measured_arrivals: pacer.measured_ticks,
            late_p99_us: pacer.lag_us.value_at_quantile(0.99),
            late_max_us: pacer.lag_us.max(),
        },
        ok,
    };

    if !args.json {
        print_human(&record);
    }
    println!("{}", serde_json::to_string(&record)?);
    for (name, r) in names.iter().zip(&results) {
        if let Some(e) = &r.first_error {
            eprintln!(
                "latency-check: {name}: {} failed request(s) ({} in warm-up); first: {e}",
                r.errors + r.warmup_errors,
                r.warmup_errors
            );
        }
        if r.hist.is_empty() {
            eprintln!("latency-check: {name}: no successful request was measured");
        }
    }
    for e in died {
        eprintln!("latency-check: {e}");
    }
    Ok(ok)
}

fn print_human(record: &Record) {
    let s = &record.settings;
    let ab = record.proxy_minus_baseline.is_some();
    println!(
        "latency-check: proxy {}vs direct to mock-openai, one open-loop run",
        if ab { "and baseline proxy " } else { "" }
    );
    println!("command:  {}", record.command);
    println!("machine:  {}", record.machine.line());
    println!(
        "load:     {} req/s open loop, arrivals rotating over {} ({} req/s each), {} s \
         warm-up + {} s measured, {} keep-alive connections per target, {} generator thread(s)",
        s.rate,
        if ab {
            "direct/proxy/baseline"
        } else {
            "direct/proxy"
        },
        s.rate_per_target,
        s.warmup_s,
        s.duration_s,
        s.connections_per_target,
        s.generator_threads
    );
    println!("request:  {}", s.request);
    println!(
        "backend:  {} (proxy: standalone, one endpoint, http1)",
        s.mock
    );
    println!("latency:  from each request's intended send time to its last response byte, µs");
    println!();
    let mut rows = vec![(ADDED_LABEL.to_string(), record.added_proxy_minus_direct)];
    if let (Some(b), Some(ab)) = (
        record.added_baseline_minus_direct,
        record.proxy_minus_baseline,
    ) {
        rows.push((BASELINE_LABEL.to_string(), b));
        rows.push((AB_LABEL.to_string(), ab));
    }
    print!("{}", report::table(&record.targets, &rows));
    println!();
    println!(
        "pacer:    {} arrivals ({} measured), fired late by p99 {} µs, max {} µs",
        record.pacer.arrivals,
        record.pacer.measured_arrivals,
        record.pacer.late_p99_us,
        record.pacer.late_max_us
    );
    for (name, n) in &record.warmup_errors {
        if *n > 0 {
            println!("warm-up:  {name}: {n} failed request(s)");
        }
    }
    println!("result:   {}", if record.ok { "ok" } else { "FAILED" });
}

/// The standalone routes file: model `demo` on one endpoint, the mock.
fn routes(mock: std::net::SocketAddr) -> RoutesFile {
    RoutesFile {
        version: Some("latency-check".into()),
        models: vec![model(
            "demo",
            "chat",
            vec![endpoint("mock", mock, "http1", "healthy")],
        )],
        auth: None,
    }
}

fn request() -> Request<Full<Bytes>> {
    Request::post(PATH)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("a valid request")
}

/// One request before the run, so a broken setup fails with its cause instead of as a wall of
/// errors.
/// Through the proxy, the response must name the mock endpoint in `x-multiverse-endpoint`.
async fn check_once(name: &str, pool: &Http1Pool, via_proxy: bool) -> anyhow::Result<()> {
    let response = pool
        .send(request())
        .await
        .with_context(|| format!("{name}: the first request failed"))?;
    if response.status() != StatusCode::OK {
        bail!(
            "{name}: the first request got HTTP {}: {}",
            response.status(),
            snippet(response.body())
        );
    }
    let endpoint = response.headers().get("x-multiverse-endpoint");
    if via_proxy && endpoint.is_none_or(|v| v != "mock") {
        bail!("{name}: the response did not come from endpoint `mock` (x-multiverse-endpoint: {endpoint:?})");
    }
    Ok(())
}

/// Gathers outcomes until every request task has finished (all senders dropped).
async fn collect(mut rx: mpsc::UnboundedReceiver<Outcome>, targets: usize) -> Vec<TargetResults> {
    let mut results: Vec<TargetResults> = (0..targets)
        .map(|_| TargetResults {
            hist: latency_histogram(),
            errors: 0,
            warmup_errors: 0,
            first_error: None,
        })
        .collect();
    while let Some(outcome) = rx.recv().await {
        let r = &mut results[outcome.target];
        match (outcome.result, outcome.phase) {
            (Ok(latency), Phase::Measure) => report::record(&mut r.hist, latency),
            (Ok(_), Phase::Warmup) => {}
            (Err(e), phase) => {
                if phase == Phase::Measure {
                    r.errors += 1;
                } else {
                    r.warmup_errors += 1;
                }
                r.first_error.get_or_insert(e);
            }
        }
    }
    results
}
