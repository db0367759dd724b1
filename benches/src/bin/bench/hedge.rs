//! The `hedge` scenario (issue 15): what `hedge_after_ms` does for the tail of an idempotent
//! route when one endpoint stalls now and then.
//!
//! Two arms in one run, their arrivals interleaved: `off` and `hedged` (`hedge_after_ms =
//! 50`), each with two mock-openai endpoints of its own, one of which holds every 20th request
//! it gets (5 %) for 1 s (`--stall-every 20 --stall-ms 1000`), behind a standalone proxy of its
//! own (`lb = "round_robin"`, so the staller gets half the requests). Traffic: `/v1/embeddings`,
//! open loop at `--hedge-rate` requests per second per arm. Reported per arm: latency p50/p99 from
//! the intended send time, after the warm-up, and the failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use multiverse_benches::load::report::Summary;
use multiverse_benches::load::stack::standalone_proxy;
use multiverse_proxy::standalone::RoutesFile;
use multiverse_testkit::routes::{endpoint, model};
use multiverse_testkit::{Launch, MockOpenAi, Proxy};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::cli::Settings;

const STALL_EVERY: &str = "20";
const STALL_MS: &str = "1000";
const HEDGE_AFTER_MS: u32 = 50;
const MODEL: &str = "hedge-embed";

#[derive(Debug, Serialize)]
pub struct HedgeRecord {
    pub rate_per_arm: f64,
    pub stall_every: u64,
    pub stall_ms: u64,
    pub hedge_after_ms: u32,
    /// `off`, then `hedged`.
    pub arms: Vec<Summary>,
}

struct Arm {
    name: &'static str,
    _mocks: Vec<MockOpenAi>,
    proxy: Proxy,
}

fn start_arm(launch: &Launch, name: &'static str, hedge: bool) -> anyhow::Result<Arm> {
    let staller = MockOpenAi::try_start(
        launch,
        &format!("{name}-stall"),
        &[
            "--model",
            MODEL,
            "--stall-every",
            STALL_EVERY,
            "--stall-ms",
            STALL_MS,
        ],
    )?;
    let steady = MockOpenAi::try_start(launch, &format!("{name}-steady"), &["--model", MODEL])?;
    let mocks = vec![staller, steady];
    let mut entry = model(
        MODEL,
        "embedding",
        mocks
            .iter()
            .map(|m| endpoint(&m.name, m.addr, "http1", "healthy"))
            .collect(),
    );
    entry.lb = Some("round_robin".into());
    entry.max_retries = Some(0);
    if hedge {
        entry.hedge_after_ms = HEDGE_AFTER_MS;
    }
    let file = RoutesFile {
        version: None,
        models: vec![entry],
        auth: None,
    };
    let proxy = standalone_proxy(launch, &format!("proxy-hedge-{name}"), &file)?;
    Ok(Arm {
        name,
        _mocks: mocks,
        proxy,
    })
}

pub fn hedge_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    s: &Settings,
) -> anyhow::Result<HedgeRecord> {
    println!(
        "== hedge: /v1/embeddings at {} rps per arm, 2 mock-openai per arm (one holds every \
         {STALL_EVERY}th request it gets for {STALL_MS} ms), round robin; hedging off vs \
         hedge_after_ms = {HEDGE_AFTER_MS}, interleaved",
        s.hedge_rate
    );
    let arms = [
        start_arm(launch, "off", false)?,
        start_arm(launch, "hedged", true)?,
    ];
    for arm in &arms {
        rt.block_on(arm.proxy.try_wait_ready(client))?;
    }
    let tallies = rt.block_on(generate(&arms, s))?;
    let window = Duration::from_secs_f64(s.duration_s);
    let mut summaries = Vec::new();
    for (arm, (hist, failures)) in arms.iter().zip(tallies) {
        let summary = Summary::new(arm.name, &hist, failures, window);
        println!(
            "   {:<8} p50 {} µs, p99 {} µs, max {} µs; {} measured, {} failed",
            arm.name, summary.p50_us, summary.p99_us, summary.max_us, summary.count, failures
        );
        arm.proxy.proc.ensure_running()?;
        summaries.push(summary);
    }
    println!();
    Ok(HedgeRecord {
        rate_per_arm: s.hedge_rate,
        stall_every: STALL_EVERY.parse().unwrap_or(0),
        stall_ms: STALL_MS.parse().unwrap_or(0),
        hedge_after_ms: HEDGE_AFTER_MS,
        arms: summaries,
    })
}

/// One arm's latencies (µs) and failed requests.
type Tally = (Histogram<u64>, u64);

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Open loop: request `i` is due at `i / (2 × hedge_rate)`, arms alternating. Latency counts from
/// the due time, only for requests due after the warm-up.
async fn generate(arms: &[Arm; 2], s: &Settings) -> anyhow::Result<Vec<Tally>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(s.timeout())
        .build()?;
    let total = ((s.warmup_s + s.duration_s) * s.hedge_rate * 2.0).ceil() as usize;
    let interval = Duration::from_secs_f64(1.0 / (2.0 * s.hedge_rate));
    let warmup = Duration::from_secs_f64(s.warmup_s);
    let tallies: Arc<[Mutex<Tally>; 2]> =
        Arc::new([Mutex::new((new_hist(), 0)), Mutex::new((new_hist(), 0))]);
    let urls: Vec<String> = arms
        .iter()
        .map(|a| format!("{}/v1/embeddings", a.proxy.url()))
        .collect();
    let payload = serde_json::json!({"model": MODEL, "input": "hedged embeddings"}).to_string();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let arm = i % 2;
        let due = start + interval * i as u32;
        let counted = due.duration_since(start) >= warmup;
        let (client, tallies) = (client.clone(), tallies.clone());
        let (url, payload) = (urls[arm].clone(), payload.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(due).await;
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .body(payload)
                .send()
                .await;
            let ok = match sent {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            let elapsed = Instant::now().saturating_duration_since(due.into_std());
            if !counted {
                return;
            }
            let mut t = tallies[arm].lock().await;
            if ok {
                let us = (elapsed.as_micros() as u64).max(1);
                let _ = t.0.record(us);
            } else {
                t.1 += 1;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let tallies = Arc::try_unwrap(tallies)
        .map_err(|_| anyhow::anyhow!("the generator's tasks outlived it"))?;
    Ok(tallies.into_iter().map(Mutex::into_inner).collect())
}
