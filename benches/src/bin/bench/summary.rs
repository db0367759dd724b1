//! What `bench` prints around the scenarios: the header (command, machine, load) and the
//! closing summary tables (latency, throughput, CPU, propagation, memory, models-10k).

use multiverse_benches::load::report::Summary;

use crate::memory::fmt_kib;
use crate::record::{MetricRecord, Record};

pub fn print_header(record: &Record) {
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
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

pub fn signed(v: i64) -> String {
    format!("{v:+}")
}

pub fn print_summary(r: &Record) {
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

pub fn metric_label(metric: &str) -> &'static str {
    match metric {
        "first_event" => "TTFB (first event)",
        "gap" => "inter-event gap",
        _ => "request",
    }
}
