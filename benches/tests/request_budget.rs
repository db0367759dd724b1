//! The per-request allocation budget of issue 18, checked in the test suite: a one-thread
//! `multiverse-proxy` (a debug build, which counts its allocations: `multiverse-alloc-count`)
//! proxies N requests of each family to the mocks, one after another on one connection, and
//! the allocations it made for them, read from its counter before and after, must stay within
//! `multiverse_benches::load::budget`. A count, not a timing: the same on a loaded machine.
//!
//! Needs `cargo build --workspace --bins` first (scripts/test does): the proxy and the mocks
//! are started from the same target directory.

use std::net::SocketAddr;
use std::time::Duration;

use multiverse_alloc_count::Counts;
use multiverse_benches::load::budget;
use multiverse_benches::load::scenario::{self, Concurrency, Latency};
use multiverse_benches::load::stack::{self, Addrs, Mocks};
use multiverse_proxy::config::ProxyConfig;
use multiverse_testkit::{temp_dir, try_free_addr, Launch, Proxy};

/// Requests measured per family (after the warm-up).
const REQUESTS: u64 = 60;
/// Requests per family before measuring: connections pooled, maps and caches grown.
const WARMUP: u64 = 20;

fn counts(addr: SocketAddr) -> Counts {
    multiverse_alloc_count::read(addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the proxy's allocation counts at {addr}: {e}"))
}

async fn send(call: &multiverse_benches::load::engine::Caller, n: u64, family: Latency) {
    for i in 0..n {
        if let Err(e) = call().await {
            panic!("{}: request {i} failed: {e}", family.name());
        }
    }
}

#[tokio::test]
async fn allocations_per_request_stay_within_budget() {
    let dir = temp_dir("request-budget");
    let launch = Launch::for_tests(&dir);
    let mocks = Mocks::start(&launch, 0).unwrap_or_else(|e| panic!("{e:#}"));

    let counter = try_free_addr().expect("a free port");
    let mut proxy_launch = launch.clone();
    proxy_launch
        .env
        .push(("MULTIVERSE_PROXY_ALLOC_COUNT".into(), counter.to_string()));
    let mut config = ProxyConfig::default();
    config.server.threads = Some(1);
    let proxy = Proxy::try_spawn_standalone(
        &proxy_launch,
        "proxy",
        config,
        &stack::routes(&mocks.addrs, 0),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    proxy.wait_ready(&reqwest::Client::new()).await;

    let one = Concurrency {
        http1_connections: 1,
        sse_connections: 1,
        h2_in_flight: 1,
        bidi_streams: 1,
    };
    let addrs = Addrs::single(proxy.listen);
    let mut report = Vec::new();
    let mut over = Vec::new();
    for b in budget::BUDGETS {
        let call = scenario::caller(b.family, "proxy", &addrs, &one)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        send(&call, WARMUP, b.family).await;
        let before = counts(counter);
        send(&call, REQUESTS, b.family).await;
        let used = counts(counter).since(&before);
        let per_request = used.allocations() as f64 / REQUESTS as f64;
        report.push(format!(
            "{}: {per_request:.2} allocations/request (budget {}), {:.0} bytes/request",
            b.family.name(),
            b.allocations_debug,
            used.bytes as f64 / REQUESTS as f64
        ));
        if per_request > b.allocations_debug {
            over.push(b.family.name());
        }
        // A build that did not count would report nothing: the test must not pass vacuously.
        assert!(per_request > 1.0, "{}", report.join("\n"));
    }
    proxy
        .proc
        .ensure_running()
        .expect("the proxy is still running");
    println!("{}", report.join("\n"));
    assert!(
        over.is_empty(),
        "over the allocation budget: {over:?}\n{}\n(raise a budget in benches/src/load/budget.rs \
         only with the reason in the commit message)",
        report.join("\n")
    );
}
