//! The `keys` scenario: a second proxy in keys mode — 1 000 keys in its table, the requests
//! carrying one with an rpm limit high enough never to refuse, so the whole path runs (hash,
//! lookup, limit cell, `x-ratelimit-*` headers) — and chat latency next to the open proxy in
//! the same run: what checking a key adds.

use multiverse_benches::load::report::Added;
use multiverse_benches::load::scenario::{send_bench_key, BENCH_KEY};
use multiverse_benches::load::stack::{routes, standalone_proxy, Stack};
use multiverse_common::keys::{hash_secret, to_hex};
use multiverse_proxy::sources::standalone::{AuthEntry, KeyEntry};
use multiverse_testkit::Launch;
use serde::Serialize;

use crate::cli::Settings;
use crate::latency::{beside_proxy, print_latency};
use crate::record::LatencyRecord;

/// Keys in the keyed proxy's table.
const KEYS: usize = 1000;

#[derive(Debug, Serialize)]
pub struct KeysRecord {
    pub keys: usize,
    pub latency: LatencyRecord,
    /// proxy-keys − proxy, per percentile, µs.
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
    println!("== keys: a proxy in keys mode ({KEYS} keys, rpm limited) vs the open proxy, chat");
    let mut file = routes(&stack.mocks.addrs, 0);
    let mut keys: Vec<KeyEntry> = (1..KEYS)
        .map(|i| KeyEntry {
            id: format!("other-{i}"),
            sha256: to_hex(&hash_secret(format!("mv-other-{i}").as_bytes())),
            ..Default::default()
        })
        .collect();
    keys.push(KeyEntry {
        id: "bench".into(),
        sha256: to_hex(&hash_secret(BENCH_KEY.as_bytes())),
        rpm: 1_000_000_000,
        ..Default::default()
    });
    file.auth = Some(AuthEntry {
        mode: "keys".into(),
        keys,
    });
    send_bench_key(true);
    let result = run(rt, launch, client, stack, s, &file);
    send_bench_key(false);
    result
}

fn run(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    stack: &Stack,
    s: &Settings,
    file: &multiverse_proxy::sources::standalone::RoutesFile,
) -> anyhow::Result<KeysRecord> {
    let keyed = standalone_proxy(launch, "proxy-keys", file)?;
    rt.block_on(keyed.try_wait_ready(client))?;
    let (latency, keys_minus_open) = beside_proxy(
        rt,
        stack,
        s,
        "proxy-keys",
        keyed.proc.pid(),
        keyed.listen,
        "keys",
    )?;
    keyed.proc.ensure_running()?;
    print_latency(&latency);
    if let Some(d) = keys_minus_open {
        println!(
            "   proxy-keys − proxy: p50 {:+} µs, p99 {:+} µs",
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
