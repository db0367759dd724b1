//! CPU per request: the processes a run watches ([`Probe`]: the proxy, nginx, the mocks, the
//! generator), their CPU time around a run ([`with_cpu`]) and what each target's requests cost.

use std::time::{Duration, Instant};

use serde::Serialize;

use multiverse_benches::load::rss;
use multiverse_benches::load::stack::Stack;

/// A process whose CPU time a run measures.
#[derive(Debug, Clone)]
pub struct Probe {
    /// "proxy", "nginx", "generator".
    pub label: String,
    /// The process(es): several are summed (the three mocks).
    pub pids: Vec<u32>,
    /// Count their direct children too (nginx's workers).
    pub children: bool,
    /// The target whose requests it served (per-request cost), if any.
    pub target: Option<String>,
}

impl Probe {
    pub fn cpu(&self) -> Option<Duration> {
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
pub struct CpuRecord {
    pub process: String,
    pub cpu_ms: u64,
    /// CPU time ÷ wall time: cores kept busy on average.
    pub cores: f64,
    /// Requests it served (warm-up included).
    pub requests: Option<u64>,
    /// CPU µs per request served.
    pub us_per_request: Option<f64>,
}

/// CPU probes for the stack's proxy, nginx, the mocks (together) and this generator.
pub fn probes(stack: &Stack) -> Vec<Probe> {
    let mut probes = vec![Probe {
        label: "proxy".into(),
        pids: vec![stack.proxy.proc.pid()],
        children: false,
        target: Some("proxy".into()),
    }];
    if let Ok(n) = &stack.nginx {
        probes.push(Probe {
            label: "nginx".into(),
            pids: vec![n.proc.pid()],
            children: true,
            target: Some("nginx".into()),
        });
    }
    if let Ok(h) = &stack.haproxy {
        probes.push(Probe {
            label: "haproxy".into(),
            pids: vec![h.proc.pid()],
            children: false,
            target: Some("haproxy".into()),
        });
    }
    probes.push(mocks_probe(stack));
    probes.push(generator_probe());
    probes
}

pub fn mocks_probe(stack: &Stack) -> Probe {
    let m = &stack.mocks;
    Probe {
        label: "mocks".into(),
        pids: m.pids(),
        children: false,
        target: None,
    }
}

pub fn generator_probe() -> Probe {
    Probe {
        label: "generator".into(),
        pids: vec![std::process::id()],
        children: false,
        target: None,
    }
}

/// Runs `f`, measuring the CPU time of each probe; `requests` says how many requests a target
/// was sent.
pub fn with_cpu<T>(
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

pub fn print_cpu(cpu: &[CpuRecord]) {
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
