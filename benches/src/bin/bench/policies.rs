//! The `policies` scenario (issue 14): what each routing policy costs on the request path, and
//! what `peak_ewma` does when one endpoint is slow.
//!
//! Hot-path cost: one fresh standalone proxy per policy, all started the same way from the same
//! routes file (the chat model over 4 endpoints, all the stack's mock-openai), differing only in
//! the model's `lb` — `least_request` (the baseline), `round_robin`, `weighted`, `peak_ewma`,
//! `prefix_affinity` — plus `least_request` with an admission queue (`queue_max = 64`, every
//! endpoint `max_concurrent = 1024`, so nothing ever waits but every request takes the admission
//! path: a slot reserved by compare-and-swap). Their chat latency (and direct) interleaved
//! request by request in one open-loop run ([`n_proxies`]); reported: each policy minus
//! `least_request` per percentile, and each proxy's CPU per request.
//!
//! Slow endpoint: two arms in one run, arrivals interleaved, `least_request` and `peak_ewma`,
//! each with 2 mock-openai endpoints of its own — one answering after `--latency-ms 2`, the other
//! after `--latency-ms 40` — behind a standalone proxy of its own. Reported per arm: chat
//! latency p50/p99/max from the intended send time after the warm-up, and the share of those
//! requests the slow endpoint answered (the proxy's `x-multiverse-endpoint`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use multiverse_benches::load::report::{Added, Summary};
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::stack::{routes, standalone_proxy, Addrs, Stack, CHAT_MODEL};
use multiverse_proxy::standalone::RoutesFile;
use multiverse_testkit::routes::{endpoint, model};
use multiverse_testkit::{Launch, MockOpenAi, Proxy};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::cli::Settings;
use crate::cpu::{generator_probe, mocks_probe, Probe};
use crate::latency::{measure, print_latency};
use crate::record::LatencyRecord;

/// Endpoints of the chat model in every hot-path proxy.
const ENDPOINTS: usize = 4;
/// The hot-path proxies: target label, `lb`, and whether the model has an admission queue.
const POLICIES: [(&str, &str, bool); 6] = [
    ("least_request", "least_request", false),
    ("round_robin", "round_robin", false),
    ("weighted", "weighted", false),
    ("peak_ewma", "peak_ewma", false),
    ("prefix_affinity", "prefix_affinity", false),
    ("least_request+queue", "least_request", true),
];
const BASELINE: &str = "least_request";
const QUEUE_MAX: u32 = 64;
const QUEUE_MAX_CONCURRENT: u32 = 1024;

const FAST_MS: &str = "2";
const SLOW_MS: &str = "40";
const SLOW_MODEL: &str = "policies-slow";

#[derive(Debug, Serialize)]
pub struct PoliciesRecord {
    pub endpoints_per_proxy: usize,
    pub queue_max: u32,
    pub hot_path: LatencyRecord,
    /// `<policy> − least_request`, per percentile, µs.
    pub minus_least_request: BTreeMap<String, Added>,
    pub slow: SlowRecord,
}

#[derive(Debug, Serialize)]
pub struct SlowRecord {
    pub rate_per_arm: f64,
    pub fast_latency_ms: u64,
    pub slow_latency_ms: u64,
    /// `least_request`, then `peak_ewma`.
    pub arms: Vec<SlowArmRecord>,
}

#[derive(Debug, Serialize)]
pub struct SlowArmRecord {
    pub lb: &'static str,
    pub latency: Summary,
    /// Measured requests the slow endpoint answered ÷ measured requests.
    pub slow_share: f64,
    /// Measured requests per endpoint id.
    pub per_endpoint: BTreeMap<String, u64>,
}

/// One proxy of an [`n_proxies`] comparison: its target label, process and client port.
pub struct Side {
    pub label: String,
    pub pid: u32,
    pub listen: std::net::SocketAddr,
}

/// Chat latency of `sides` (and direct) interleaved request by request in one run, with the
/// CPU of each proxy: the record (named `scenario`) and `side − sides[0]` per percentile for
/// every other side. [`crate::latency::two_proxies`] for N proxies.
pub fn n_proxies(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    s: &Settings,
    sides: &[Side],
    scenario: &'static str,
) -> anyhow::Result<(LatencyRecord, BTreeMap<String, Added>)> {
    let mut addrs = vec![("direct".to_string(), stack.mocks.addrs)];
    addrs.extend(
        sides
            .iter()
            .map(|side| (side.label.clone(), Addrs::single(side.listen))),
    );
    let mut probes: Vec<Probe> = sides
        .iter()
        .map(|side| Probe {
            label: side.label.clone(),
            pids: vec![side.pid],
            children: false,
            target: Some(side.label.clone()),
        })
        .collect();
    probes.push(mocks_probe(stack));
    probes.push(generator_probe());
    let mut latency = measure(rt, Latency::Chat, &addrs, s, &probes)?;
    latency.scenario = scenario;
    let mut diffs = BTreeMap::new();
    if let (Some(m), Some(base)) = (latency.metrics.last(), sides.first()) {
        if let Some(b) = m.target(&base.label) {
            for side in &sides[1..] {
                if let Some(t) = m.target(&side.label) {
                    diffs.insert(side.label.clone(), Added::between(t, b));
                }
            }
        }
    }
    Ok((latency, diffs))
}

/// The stack's routes with the chat model over [`ENDPOINTS`] copies of its endpoint, balanced
/// by `lb`, with an admission queue when `queue`.
fn policy_routes(stack: &Stack, lb: &str, queue: bool) -> RoutesFile {
    let mut file = routes(&stack.mocks.addrs, 0);
    if let Some(chat) = file.models.iter_mut().find(|m| m.name == CHAT_MODEL) {
        let one = chat.endpoints[0].clone();
        chat.endpoints = (0..ENDPOINTS)
            .map(|i| {
                let mut e = one.clone();
                e.id = format!("{}-{i}", one.id);
                if queue {
                    e.max_concurrent = QUEUE_MAX_CONCURRENT;
                }
                e
            })
            .collect();
        chat.lb = Some(lb.to_string());
        if queue {
            chat.queue_max = QUEUE_MAX;
        }
    }
    file
}

pub fn policies_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<PoliciesRecord> {
    println!(
        "== policies: hot-path cost, one proxy per policy (chat over {ENDPOINTS} endpoints), \
         interleaved at {} req/s per target",
        s.policies_rate
    );
    let proxies = POLICIES
        .iter()
        .map(|(label, lb, queue)| {
            let p = standalone_proxy(
                launch,
                &format!("proxy-{}", label.replace('+', "-")),
                &policy_routes(stack, lb, *queue),
            )?;
            Ok((*label, p))
        })
        .collect::<anyhow::Result<Vec<(&str, Proxy)>>>()?;
    for (_, p) in &proxies {
        rt.block_on(p.try_wait_ready(client))?;
    }
    let sides: Vec<Side> = proxies
        .iter()
        .map(|(label, p)| Side {
            label: label.to_string(),
            pid: p.proc.pid(),
            listen: p.listen,
        })
        .collect();
    let mut settings = s.clone();
    settings.rate_per_target = s.policies_rate;
    let (hot_path, minus_least_request) = n_proxies(rt, stack, &settings, &sides, "policies")?;
    for (_, p) in &proxies {
        p.proc.ensure_running()?;
    }
    drop(proxies);
    print_latency(&hot_path);
    for (label, d) in POLICIES
        .iter()
        .filter_map(|(label, _, _)| Some((*label, minus_least_request.get(*label)?)))
    {
        let cpu = hot_path
            .cpu
            .iter()
            .find(|c| c.process == label)
            .and_then(|c| c.us_per_request)
            .map_or("–".to_string(), |us| format!("{us:.1}"));
        println!(
            "   {label:<20} − {BASELINE}: p50 {:+} µs, p99 {:+} µs; CPU {cpu} µs/request",
            d.p50_us, d.p99_us
        );
    }
    println!();

    let slow = slow_endpoint(rt, launch, client, s)?;
    Ok(PoliciesRecord {
        endpoints_per_proxy: ENDPOINTS,
        queue_max: QUEUE_MAX,
        hot_path,
        minus_least_request,
        slow,
    })
}

// ---------------------------------------------------------------------------------------------
// One slow endpoint of two

/// One arm's processes.
struct Arm {
    lb: &'static str,
    _mocks: Vec<MockOpenAi>,
    proxy: Proxy,
    slow_id: String,
}

fn start_arm(launch: &Launch, lb: &'static str) -> anyhow::Result<Arm> {
    let mock = |role: &str, ms: &str| {
        MockOpenAi::try_start(
            launch,
            &format!("{lb}-{role}"),
            &["--model", SLOW_MODEL, "--tokens", "16", "--latency-ms", ms],
        )
    };
    let mocks = vec![mock("fast", FAST_MS)?, mock("slow", SLOW_MS)?];
    let slow_id = mocks[1].name.clone();
    let mut entry = model(
        SLOW_MODEL,
        "chat",
        mocks
            .iter()
            .map(|m| endpoint(&m.name, m.addr, "http1", "healthy"))
            .collect(),
    );
    entry.lb = Some(lb.to_string());
    let file = RoutesFile {
        version: None,
        models: vec![entry],
        auth: None,
    };
    let proxy = standalone_proxy(launch, &format!("proxy-slow-{lb}"), &file)?;
    Ok(Arm {
        lb,
        _mocks: mocks,
        proxy,
        slow_id,
    })
}

fn slow_endpoint(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    s: &Settings,
) -> anyhow::Result<SlowRecord> {
    println!(
        "== policies: chat at {} req/s per arm, 2 mock-openai per arm (one answers after \
         {FAST_MS} ms, the other after {SLOW_MS} ms); least_request vs peak_ewma, interleaved",
        s.slow_rate
    );
    let arms = [
        start_arm(launch, "least_request")?,
        start_arm(launch, "peak_ewma")?,
    ];
    for arm in &arms {
        rt.block_on(arm.proxy.try_wait_ready(client))?;
    }
    let tallies = rt.block_on(generate(&arms, s))?;
    let window = Duration::from_secs_f64(s.duration_s);
    let mut records = Vec::new();
    for (arm, tally) in arms.iter().zip(tallies) {
        let latency = Summary::new(arm.lb, &tally.hist, tally.failures, window);
        let slow = tally.per_endpoint.get(&arm.slow_id).copied().unwrap_or(0);
        let share = if latency.count == 0 {
            0.0
        } else {
            slow as f64 / latency.count as f64
        };
        println!(
            "   {:<14} p50 {} µs, p99 {} µs, max {} µs; slow endpoint {:.1} % of {}; {} failed",
            arm.lb,
            latency.p50_us,
            latency.p99_us,
            latency.max_us,
            share * 100.0,
            latency.count,
            tally.failures
        );
        arm.proxy.proc.ensure_running()?;
        records.push(SlowArmRecord {
            lb: arm.lb,
            latency,
            slow_share: (share * 10_000.0).round() / 10_000.0,
            per_endpoint: tally.per_endpoint,
        });
    }
    println!();
    Ok(SlowRecord {
        rate_per_arm: s.slow_rate,
        fast_latency_ms: FAST_MS.parse().unwrap_or(0),
        slow_latency_ms: SLOW_MS.parse().unwrap_or(0),
        arms: records,
    })
}

/// What the generator saw of one arm.
struct Tally {
    hist: Histogram<u64>,
    failures: u64,
    per_endpoint: BTreeMap<String, u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Open loop: request `i` is due at `i / (2 × slow_rate)`, arms alternating. Latency counts from
/// the due time (a late send is not hidden), only for requests due after the warm-up.
async fn generate(arms: &[Arm; 2], s: &Settings) -> anyhow::Result<Vec<Tally>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(s.timeout())
        .build()?;
    let total = ((s.warmup_s + s.duration_s) * s.slow_rate * 2.0).ceil() as usize;
    let interval = Duration::from_secs_f64(1.0 / (2.0 * s.slow_rate));
    let warmup = Duration::from_secs_f64(s.warmup_s);
    let tally = || {
        Mutex::new(Tally {
            hist: new_hist(),
            failures: 0,
            per_endpoint: BTreeMap::new(),
        })
    };
    let tallies: Arc<[Mutex<Tally>; 2]> = Arc::new([tally(), tally()]);
    let urls: Vec<String> = arms
        .iter()
        .map(|a| format!("{}/v1/chat/completions", a.proxy.url()))
        .collect();
    let payload = serde_json::json!({
        "model": SLOW_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4
    })
    .to_string();
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
            let seen = match sent {
                Ok(r) if r.status().is_success() => {
                    let endpoint = r
                        .headers()
                        .get("x-multiverse-endpoint")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_string();
                    r.bytes().await.ok().map(|_| endpoint)
                }
                _ => None,
            };
            let elapsed = Instant::now().saturating_duration_since(due.into_std());
            if !counted {
                return;
            }
            let mut t = tallies[arm].lock().await;
            match seen {
                Some(endpoint) => {
                    let us = (elapsed.as_micros() as u64).max(1);
                    let _ = t.hist.record(us);
                    *t.per_endpoint.entry(endpoint).or_default() += 1;
                }
                None => t.failures += 1,
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
