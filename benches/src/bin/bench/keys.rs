//! The `keys` scenario: two fresh proxies started the same way from the same routes, one in
//! keys mode — 1 000 keys in its table, the requests carrying one with an rpm limit high enough
//! never to refuse, so the whole path runs (hash, lookup, limit cell, `x-ratelimit-*` headers) —
//! and the other open, their chat latency interleaved in one run: what checking a key adds.
//! (Against the stack's long-running proxy instead, the keyed one would also differ in age and
//! in how warm its pools and allocator are.)

use multiverse_benches::load::keyed::{keyed_routes, KEYS};
use multiverse_benches::load::report::Added;
use multiverse_benches::load::scenario::send_bench_key;
use multiverse_benches::load::stack::{routes, standalone_proxy, Stack};
use multiverse_proxy::sources::standalone::RoutesFile;
use multiverse_testkit::Launch;
use serde::Serialize;

use crate::cli::Settings;
use crate::latency::{print_latency, two_proxies, Side};
use crate::record::LatencyRecord;

#[derive(Debug, Serialize)]
pub struct KeysRecord {
    pub keys: usize,
    pub latency: LatencyRecord,
    /// proxy-keys − proxy-open, per percentile, µs.
    pub keys_minus_open: Option<Added>,
}

/// A proxy in keys mode against the open proxy.
pub fn keys_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
) -> anyhow::Result<KeysRecord> {
    println!("== keys: a proxy in keys mode ({KEYS} keys, rpm limited) vs an open one, chat");
    let open = routes(&stack.mocks.addrs, 0);
    let file = keyed_routes(&open);
    send_bench_key(true);
    let result = run(rt, launch, client, stack, s, &open, &file);
    send_bench_key(false);
    result
}

fn run(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
    open: &RoutesFile,
    keyed: &RoutesFile,
) -> anyhow::Result<KeysRecord> {
    let open = standalone_proxy(launch, "proxy-open", open)?;
    let keyed = standalone_proxy(launch, "proxy-keys", keyed)?;
    rt.block_on(open.try_wait_ready(client))?;
    rt.block_on(keyed.try_wait_ready(client))?;
    let side = |label, p: &multiverse_testkit::Proxy| Side {
        label,
        pid: p.proc.pid(),
        listen: p.listen,
    };
    let (latency, keys_minus_open) = two_proxies(
        rt,
        stack,
        s,
        &side("proxy-open", &open),
        &side("proxy-keys", &keyed),
        "keys",
    )?;
    open.proc.ensure_running()?;
    keyed.proc.ensure_running()?;
    print_latency(&latency);
    if let Some(d) = keys_minus_open {
        println!(
            "   proxy-keys − proxy-open: p50 {:+} µs, p99 {:+} µs",
            d.p50_us, d.p99_us
        );
        println!();
    }
    Ok(KeysRecord {
        keys: KEYS,
        latency,
        keys_minus_open,
    })
}
