//! The `rates` scenario, issue 18's side-by-side table: chat over HTTP/1.1 at each open-loop
//! rate of `--rates` (per target, arrivals interleaved across direct / proxy / nginx / haproxy,
//! the stack's processes), then closed-loop chat throughput at each `--rates-threads` count
//! with a fresh proxy (`[server] threads`), nginx (worker processes) and haproxy (`nbthread`)
//! of that many threads, against the mock directly.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use multiverse_benches::load::haproxy::Haproxy;
use multiverse_benches::load::nginx::Nginx;
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::stack::{
    haproxy_addrs, nginx_addrs, routes, standalone_proxy_threads, Addrs, Others, Stack,
};
use multiverse_testkit::Launch;

use crate::cli::Settings;
use crate::cpu::{generator_probe, mocks_probe, probes, Probe};
use crate::latency::{measure, print_latency};
use crate::record::LatencyRecord;
use crate::throughput::{closed, ThroughputRecord};

#[derive(Debug, Serialize)]
pub struct RatesRecord {
    /// One chat latency run per rate, in `--rates` order.
    pub open_loop: Vec<LatencyRecord>,
    /// One closed loop per thread count.
    pub closed_loop: Vec<ThreadsRecord>,
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ThreadsRecord {
    /// Proxy threads = nginx worker processes = haproxy `nbthread`.
    pub threads: usize,
    pub throughput: ThroughputRecord,
}

pub fn rates_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    others: &Others,
    s: &Settings,
) -> anyhow::Result<RatesRecord> {
    let mut record = RatesRecord {
        open_loop: Vec::new(),
        closed_loop: Vec::new(),
        failures: Vec::new(),
    };
    for &rate in &s.rates {
        println!(
            "== rates: {} at {rate} req/s per target",
            Latency::Chat.describe()
        );
        let mut at = s.clone();
        at.rate_per_target = rate;
        let r = measure(rt, Latency::Chat, &stack.targets(), &at, &probes(stack))?;
        print_latency(&r);
        let failures = r.failures.iter().map(|f| format!("rates {rate}: {f}"));
        record.failures.extend(failures);
        record.open_loop.push(r);
        stack.ensure_running()?;
    }
    let crt = crate::runtime(s.closed_generator_threads, "bench-rates")?;
    for &threads in &s.rates_threads {
        let t = closed_at(&crt, rt, launch, client, stack, others, threads, s)?;
        let failures = t.failures.iter().map(|f| format!("rates {threads}t: {f}"));
        record.failures.extend(failures);
        record.closed_loop.push(ThreadsRecord {
            threads,
            throughput: t,
        });
    }
    crt.shutdown_timeout(Duration::from_secs(1));
    print!("{}", rates_tables(&record));
    println!();
    Ok(record)
}

/// Closed-loop chat with a proxy, nginx and haproxy of `threads` threads each (started here,
/// killed on return), beside the mock directly.
#[allow(clippy::too_many_arguments)]
fn closed_at(
    crt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    others: &Others,
    threads: usize,
    s: &Settings,
) -> anyhow::Result<ThroughputRecord> {
    let dir = launch.dir.join(format!("rates-{threads}t"));
    let name = format!("proxy-{threads}t");
    let proxy = standalone_proxy_threads(launch, &name, &routes(&stack.mocks.addrs, 0), threads)?;
    let upstreams = stack.mocks.upstreams();
    let nginx = match &others.nginx_bin {
        Ok(bin) => Some(Nginx::start(bin, &upstreams, threads, &dir)?),
        Err(_) => None,
    };
    let haproxy = match &others.haproxy_bin {
        Ok(bin) => Some(Haproxy::start(bin, &upstreams, threads, &dir)?),
        Err(_) => None,
    };
    rt.block_on(proxy.try_wait_ready(client))?;
    let probe = |label: &str, pid: u32, children: bool| Probe {
        label: label.into(),
        pids: vec![pid],
        children,
        target: Some(label.into()),
    };
    let mut addrs = vec![
        ("direct".to_string(), stack.mocks.addrs),
        ("proxy".to_string(), Addrs::single(proxy.listen)),
    ];
    let mut cpu = vec![probe("proxy", proxy.proc.pid(), false)];
    if let Some(n) = &nginx {
        addrs.push(("nginx".into(), nginx_addrs(n)));
        cpu.push(probe("nginx", n.proc.pid(), true));
    }
    if let Some(h) = &haproxy {
        addrs.push(("haproxy".into(), haproxy_addrs(h)));
        cpu.push(probe("haproxy", h.proc.pid(), false));
    }
    cpu.extend([mocks_probe(stack), generator_probe()]);
    println!(
        "== rates: closed loop chat, {threads} thread(s) each (proxy threads, nginx workers, \
         haproxy nbthread), {} workers per target, {} × {} s turns",
        s.closed_concurrency, s.closed_rounds, s.closed_slice_s
    );
    let r = closed(crt, Latency::Chat, &addrs, &cpu, s)?;
    proxy.proc.ensure_running()?;
    Ok(r)
}

/// The two summary tables (Markdown): added latency per rate, req/s per thread count.
pub fn rates_tables(r: &RatesRecord) -> String {
    let others: Vec<&str> = ["proxy", "nginx", "haproxy"]
        .into_iter()
        .filter(|name| {
            let open = r.open_loop.iter().filter_map(|l| l.metrics.last());
            let closed = r.closed_loop.iter().map(|t| &t.throughput.targets);
            let mut closed = closed;
            open.into_iter().any(|m| m.target(name).is_some())
                || closed.any(|ts| ts.iter().any(|s| s.name == *name))
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- rates: chat HTTP/1.1, open loop; direct p50 / p99 µs, then what each proxy adds"
    );
    let mut header = "| req/s per target | direct p50 / p99 |".to_string();
    for name in &others {
        let _ = write!(header, " {name} added p50 / p99 |");
    }
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "|{}", "---|".repeat(2 + others.len()));
    for l in &r.open_loop {
        let Some(m) = l.metrics.last() else { continue };
        let direct = m
            .target("direct")
            .map_or("–".into(), |d| format!("{} / {}", d.p50_us, d.p99_us));
        let mut row = format!("| {} | {direct} |", l.rate_per_target);
        for name in &others {
            let cell = m
                .added
                .get(&format!("{name} − direct"))
                .map_or("–".into(), |a| format!("{:+} / {:+}", a.p50_us, a.p99_us));
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out, "-- rates: closed loop chat, req/s");
    let mut header = "| threads | direct |".to_string();
    for name in &others {
        let _ = write!(header, " {name} |");
    }
    header.push_str(" proxy ÷ nginx | proxy ÷ haproxy |");
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "|{}", "---|".repeat(4 + others.len()));
    for t in &r.closed_loop {
        let rps = |name: &str| {
            t.throughput
                .targets
                .iter()
                .find(|s| s.name == name)
                .map_or("–".into(), |s| format!("{:.0}", s.throughput_rps))
        };
        let ratio = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
        let mut row = format!("| {} | {} |", t.threads, rps("direct"));
        for name in &others {
            let _ = write!(row, " {} |", rps(name));
        }
        let _ = write!(
            row,
            " {} | {} |",
            ratio(t.throughput.proxy_over_nginx),
            ratio(t.throughput.proxy_over_haproxy)
        );
        let _ = writeln!(out, "{row}");
    }
    out
}
