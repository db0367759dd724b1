//! The `propagation` scenario: a control plane and N proxies fed by it; the time from a backend
//! registration or deregistration at the operator API until every proxy routes by it, then
//! chat load through one proxy while many changes are pushed ([`changes_under_load`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use multiverse_benches::load::engine;
use multiverse_benches::load::http::Http1Pool;
use multiverse_benches::load::propagation::{self, control_config, AdminApi, BackendSpec};
use multiverse_benches::load::report::Summary;
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::schedule::Plan;
use multiverse_benches::load::stack::{admin_client, control_fed_proxy, Addrs};
use multiverse_testkit::{Control, Launch, MockOpenAi, Proxy};

use crate::cli::Settings;
use crate::latency::targets;

#[derive(Debug, Serialize)]
pub struct ChangeRecord {
    pub kind: &'static str,
    pub model: String,
    /// The operator API's answer time, ms.
    pub api_ms: f64,
    /// From the API request being sent until every proxy routed by the change, ms.
    pub visible_all_ms: f64,
    /// The same per proxy, ms.
    pub visible_ms: Vec<f64>,
}

#[derive(Debug, Serialize, Default)]
pub struct MsSummary {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
}

impl MsSummary {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
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
pub struct PropagationRecord {
    pub proxies: usize,
    pub coalesce_ms: &'static str,
    pub changes: Vec<ChangeRecord>,
    /// Every change: API request sent → routed by every proxy.
    pub visible_all: MsSummary,
    pub visible_register: MsSummary,
    pub visible_deregister: MsSummary,
    pub api: MsSummary,
    pub under_load: Option<UnderLoadRecord>,
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UnderLoadRecord {
    pub changes: u32,
    pub weight_updates: u32,
    pub registrations: u32,
    pub deregistrations: u32,
    pub rate: f64,
    pub requests: u64,
    pub failed_requests: u64,
    pub first_error: Option<String>,
    pub latency: Summary,
    pub version_before: String,
    pub versions_after: Vec<String>,
    pub elapsed_s: f64,
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

pub fn propagation_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    s: &Settings,
) -> anyhow::Result<PropagationRecord> {
    println!(
        "== propagation: multiverse-control + {} proxies; {} changes timed one by one, then {} \
         changes under load",
        s.proxies, s.changes, s.load_changes
    );
    let launch = Launch {
        dir: launch.dir.join("propagation"),
        ..launch.clone()
    };
    std::fs::create_dir_all(&launch.dir)?;
    let mock_a = MockOpenAi::try_start(&launch, "prop-mock-a", &["--tokens", "4"])?;
    let a = mock_a.addr;
    let mock_b = MockOpenAi::try_start(&launch, "prop-mock-b", &["--tokens", "4"])?;
    let b = mock_b.addr;
    let control = Control::try_spawn(
        &launch,
        "bench-cp",
        control_config(&[("base", &mock_a.url(), "demo")]),
    )?;
    rt.block_on(control.try_wait_ready(client))?;
    let mut proxies = Vec::new();
    for i in 0..s.proxies {
        proxies.push(control_fed_proxy(
            &launch,
            &format!("prop-proxy-{i}"),
            &control.discovery_url(),
        )?);
    }
    for p in &proxies {
        rt.block_on(p.try_wait_ready(client))?;
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
    for (name, child) in [("prop-mock-a", &mock_a), ("prop-mock-b", &mock_b)] {
        if let Err(e) = child.proc.ensure_running() {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    if let Err(e) = control.proc.ensure_running() {
        failures.push(format!("{e:#}"));
    }
    for p in &proxies {
        if let Err(e) = p.proc.ensure_running() {
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
pub fn changes_under_load(
    rt: &tokio::runtime::Runtime,
    api: &AdminApi,
    second: &BackendSpec,
    second_id: &str,
    churn_addr: SocketAddr,
    proxies: &[Proxy],
    s: &Settings,
) -> anyhow::Result<UnderLoadRecord> {
    let client = admin_client()?;
    let first = &proxies[0];
    let version_before = rt.block_on(first.version(&client));
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
                versions.push(p.version(&client).await);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_summary_nearest_rank() {
        let s = MsSummary::of((1..=20).map(f64::from));
        assert_eq!((s.count, s.min_ms, s.max_ms), (20, 1.0, 20.0));
        assert_eq!((s.p50_ms, s.p90_ms), (10.0, 18.0));
        assert_eq!(MsSummary::of(std::iter::empty()).count, 0);
    }
}
