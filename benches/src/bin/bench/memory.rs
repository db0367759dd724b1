//! The `memory` scenario: the proxy's RSS idle and over a soak under load ([`soak`]), with the
//! trend over the soak's second half; and how memory figures are printed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use multiverse_benches::load::engine;
use multiverse_benches::load::report::{self, Summary};
use multiverse_benches::load::rss;
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::schedule::Plan;
use multiverse_benches::load::stack::{Addrs, Stack};

use crate::cli::Settings;
use crate::latency::targets;

#[derive(Debug, Serialize)]
pub struct MemoryRecord {
    /// Right after start, before any request.
    pub idle_start_kib: Option<u64>,
    /// nginx master + workers right after start.
    pub nginx_idle_start_kib: Option<u64>,
    /// Idle again after the latency / throughput scenarios (when they ran).
    pub idle_after_load_kib: Option<u64>,
    pub nginx_idle_after_load_kib: Option<u64>,
    pub soak: Option<SoakRecord>,
}

#[derive(Debug, Serialize)]
pub struct SoakRecord {
    pub seconds: f64,
    pub rate: f64,
    /// (seconds into the soak, RSS KiB).
    pub samples: Vec<(f64, u64)>,
    /// The first sample after 10 % of the soak (warm, under load).
    pub under_load_kib: u64,
    pub end_kib: u64,
    pub max_kib: u64,
    /// end − under_load.
    pub growth_kib: i64,
    /// The least-squares slope of RSS over the second half of the soak, KiB per minute: still
    /// growing at the end (> 0) or flat (≈ 0).
    pub slope_kib_per_min: f64,
    pub after_soak_idle_kib: Option<u64>,
    pub latency: Summary,
    pub failures: Vec<String>,
}

pub fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", rss::mib(k)))
}

/// Chat through the proxy alone for the soak, sampling its RSS.
pub fn soak(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<SoakRecord> {
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
    let pid = stack.proxy.proc.pid();
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
pub fn slope_per_min<'a>(points: impl Iterator<Item = &'a (f64, u64)>) -> f64 {
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

pub fn print_memory(m: &MemoryRecord) {
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
}
