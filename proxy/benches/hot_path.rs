//! Criterion micro-benchmarks for the proxy's hot-path pieces (issue 6):
//!
//! - `model_extraction`: [`ModelScanner`] over chat bodies, `model` first or last, up to 1 MiB
//!   fed in 16 KiB chunks (as the body arrives from the client);
//! - `prefix_hash`: [`PrefixHasher`] (the `prefix_affinity` key) over the same bodies, with the
//!   default cap of 4096 bytes and the first message;
//! - `table_lookup`: [`RoutingTable::route`] hit and miss in tables of 1 to 10,000 models;
//! - `endpoint_pick`: [`pick::pick`] per balancing strategy over 2 to 64 endpoints, and
//!   `least_request_admitted`: a model with an (empty) admission queue, the slot reserved and
//!   released;
//! - `snapshot_apply`: [`PlaneRoutes::from_snapshot`] + [`RoutingTable::merge`], and the full
//!   [`TableState::apply_plane`] (merge + `ArcSwap` store + dropping the replaced table).
//!
//! Run: `cargo bench -p multiverse-proxy --bench hot_path -- --warm-up-time 1 --measurement-time 3`

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use multiverse_proto::discovery::v1 as pb;
use multiverse_proxy::ops::metrics::Metrics;
use multiverse_proxy::request::model_scan::{ModelScanner, Scan};
use multiverse_proxy::request::prefix_hash::{Prefix, PrefixHasher, PrefixScan};
use multiverse_proxy::routing::affinity::Affinity;
use multiverse_proxy::routing::pick::{self, Tried, Want};
use multiverse_proxy::routing::snapshot::{parse_socket_addr, PlaneRoutes};
use multiverse_proxy::routing::table::{ProtoClass, Route, RoutingTable};
use multiverse_proxy::TableState;

/// Body bytes per `feed` call, as the proxy receives them.
const CHUNK: usize = 16 * 1024;
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

// ---------------------------------------------------------------------------------------------
// model_extraction

/// A prompt paragraph with the escapes real prompts carry (newlines, quotes, a backslash).
const PARAGRAPH: &str = "The quarterly report shows revenue grew 12% year over year, \
driven by \"enterprise\" contracts in EMEA and APAC.\nKey risks: supply-chain delays, \
FX exposure (EUR/USD), and the C:\\data\\exports migration.\n\n";

/// A chat body of exactly `target` bytes (at least the small body's size) with messages first
/// and `model` last, the way the openai SDK serializes a long conversation.
fn chat_body_model_last(target: usize) -> String {
    let tail =
        format!(r#"],"temperature":0.7,"max_tokens":512,"stream":false,"model":"{MODEL}"}}"#);
    let mut body = String::from(r#"{"messages":["#);
    body.push_str(
        r#"{"role":"system","content":"You are a helpful assistant. Answer concisely."}"#,
    );
    let mut turn = 0usize;
    loop {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let content = PARAGRAPH.repeat(12);
        let msg = serde_json::json!({ "role": role, "content": content }).to_string();
        if body.len() + 1 + msg.len() + tail.len() > target {
            break;
        }
        body.push(',');
        body.push_str(&msg);
        turn += 1;
    }
    // Pad with one last user message of plain text so the body is exactly `target` bytes.
    let frame = r#",{"role":"user","content":""}"#;
    let room = target.saturating_sub(body.len() + frame.len() + tail.len());
    if room > 0 {
        body.push_str(&format!(
            r#",{{"role":"user","content":"{}"}}"#,
            "x".repeat(room)
        ));
    }
    body.push_str(&tail);
    body
}

fn small_body_model_first() -> String {
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"What is the capital of France? Answer in one word."}}],"temperature":0.7,"max_tokens":256,"stream":false}}"#
    )
}

fn small_body_model_last() -> String {
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"What is the capital of France? Answer in one word."}}],"temperature":0.7,"max_tokens":256,"stream":false,"model":"{MODEL}"}}"#
    )
}

/// Feeds `body` in [`CHUNK`]-byte pieces until the model is found.
fn scan(body: &[u8]) -> Option<String> {
    let mut scanner = ModelScanner::new();
    for chunk in body.chunks(CHUNK) {
        if let Scan::Found(model) = scanner.feed(chunk).expect("valid body") {
            return Some(model);
        }
    }
    None
}

fn model_extraction(c: &mut Criterion) {
    let cases = [
        ("small_model_first", small_body_model_first()),
        ("small_model_last", small_body_model_last()),
        ("64KiB_model_last", chat_body_model_last(64 * 1024)),
        ("1MiB_model_last", chat_body_model_last(1024 * 1024)),
    ];
    let mut group = c.benchmark_group("model_extraction");
    for (name, body) in &cases {
        let bytes = body.as_bytes();
        assert!(
            serde_json::from_slice::<serde_json::Value>(bytes).is_ok(),
            "{name}: not JSON"
        );
        assert_eq!(scan(bytes).as_deref(), Some(MODEL), "{name}");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new(*name, bytes.len()), bytes, |b, bytes| {
            b.iter(|| scan(black_box(bytes)))
        });
    }
    group.finish();
}

/// The prefix key of `body` fed in [`CHUNK`]-byte pieces, with the default `[affinity]`.
fn prefix_key(body: &[u8]) -> Option<u64> {
    let mut h = PrefixHasher::new(PrefixScan {
        max_bytes: 4096,
        messages: 1,
    });
    for chunk in body.chunks(CHUNK) {
        if let Prefix::Done(key) = h.feed(chunk) {
            return key;
        }
    }
    h.finish()
}

fn prefix_hash(c: &mut Criterion) {
    let cases = [
        ("small_model_first", small_body_model_first()),
        ("small_model_last", small_body_model_last()),
        ("1MiB_model_last", chat_body_model_last(1024 * 1024)),
    ];
    let mut group = c.benchmark_group("prefix_hash");
    for (name, body) in &cases {
        let bytes = body.as_bytes();
        assert!(prefix_key(bytes).is_some(), "{name}");
        group.bench_with_input(BenchmarkId::new(*name, bytes.len()), bytes, |b, bytes| {
            b.iter(|| prefix_key(black_box(bytes)))
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// snapshots and tables

fn model_name(i: usize) -> String {
    const FAMILIES: [&str; 4] = [
        "meta-llama/Llama-3.1-8B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "BAAI/bge-large-en-v1.5",
        "mistralai/Mistral-7B-Instruct-v0.3",
    ];
    if i == 0 {
        MODEL.to_string()
    } else {
        format!("{}-ft-{i:05}", FAMILIES[i % FAMILIES.len()])
    }
}

/// One model's endpoint as a control plane pushes it.
fn endpoint(model: usize, j: usize, weight: u32) -> pb::Endpoint {
    let host = model * 64 + j;
    pb::Endpoint {
        id: format!("backend-{model}-{j}"),
        address: format!(
            "10.{}.{}.{}:8000",
            (host >> 16) & 0xff,
            (host >> 8) & 0xff,
            host & 0xff
        ),
        protocol: pb::Protocol::Http1 as i32,
        weight,
        health: pb::HealthStatus::Healthy as i32,
        labels: [
            ("zone".to_string(), format!("zone-{}", j % 3)),
            ("gpu".to_string(), "a100".to_string()),
        ]
        .into_iter()
        .collect(),
        source: Some(pb::EndpointSource {
            kind: pb::SourceKind::ExternalBackend as i32,
            name: format!("vllm-{model}-{j}"),
        }),
        ..Default::default()
    }
}

/// A snapshot of `models` models with `endpoints` endpoints each.
fn snapshot(models: usize, endpoints: usize, lb: pb::LbStrategy) -> pb::RouteSnapshot {
    pb::RouteSnapshot {
        models: (0..models)
            .map(|i| pb::Model {
                name: model_name(i),
                kind: pb::ModelKind::Chat as i32,
                policy: Some(pb::RoutingPolicy {
                    lb: lb as i32,
                    ..Default::default()
                }),
                endpoints: (0..endpoints)
                    .map(|j| endpoint(i, j, 1 + (j % 4) as u32))
                    .collect(),
            })
            .collect(),
        auth: None,
    }
}

fn build_table(snap: &pb::RouteSnapshot) -> RoutingTable {
    let routes = PlaneRoutes::from_snapshot("1", Some(snap), &parse_socket_addr).expect("valid");
    let mut planes = BTreeMap::new();
    planes.insert("cp".to_string(), routes);
    RoutingTable::merge(
        &planes,
        "control-plane",
        &mut HashMap::new(),
        &mut HashMap::new(),
        &mut HashMap::new(),
    )
}

// ---------------------------------------------------------------------------------------------
// table_lookup

fn table_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_lookup");
    for models in [1usize, 100, 10_000] {
        let table = build_table(&snapshot(models, 2, pb::LbStrategy::Unspecified));
        let hit = model_name(models / 2);
        let miss = format!("{}-missing", model_name(models / 2));
        assert!(table.route(&hit).is_some() && table.route(&miss).is_none());
        group.bench_with_input(BenchmarkId::new("hit", models), &hit, |b, name| {
            b.iter(|| table.route(black_box(name.as_str())).is_some())
        });
        group.bench_with_input(BenchmarkId::new("miss", models), &miss, |b, name| {
            b.iter(|| table.route(black_box(name.as_str())).is_some())
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// endpoint_pick

fn endpoint_pick(c: &mut Criterion) {
    let plain = Want {
        class: ProtoClass::Http,
        pinned: None,
        affinity: None,
    };
    let keyed = Want {
        affinity: Some(Affinity {
            key: 0x5eed_cafe,
            load_factor: 1.25,
        }),
        ..plain
    };
    let clock = multiverse_common::Millis::default();
    let mut group = c.benchmark_group("endpoint_pick");
    for (name, lb) in [
        ("least_request", pb::LbStrategy::Unspecified),
        ("round_robin", pb::LbStrategy::RoundRobin),
        ("weighted", pb::LbStrategy::Weighted),
        ("peak_ewma", pb::LbStrategy::PeakEwma),
        ("prefix_affinity", pb::LbStrategy::PrefixAffinity),
    ] {
        let want = if lb == pb::LbStrategy::PrefixAffinity {
            keyed
        } else {
            plain
        };
        for n in [2usize, 8, 64] {
            let table = build_table(&snapshot(1, n, lb));
            let route: Arc<Route> = table.route(MODEL).expect("route").clone();
            // Some load in flight, so least-request compares real numbers.
            // and latency samples, so peak-EWMA decays real averages.
            for (i, e) in route.endpoints.iter().enumerate() {
                e.state.in_flight.store((i % 5) as u64, Ordering::Relaxed);
                e.state
                    .latency
                    .observe(5 + (i % 7) as u64 * 10, clock.now_ms());
            }
            assert!(pick::pick(&route, Tried::default(), &want, clock.now_ms()).is_some());
            group.bench_with_input(BenchmarkId::new(name, n), &route, |b, route| {
                b.iter(|| {
                    // The clock read is part of every pick on the request path.
                    pick::pick(
                        black_box(route),
                        Tried::default(),
                        black_box(&want),
                        clock.now_ms(),
                    )
                })
            });
        }
    }
    // A model with an admission queue (`queue_max`, every endpoint with a `max_concurrent`)
    // that nobody waits in: what `admit` adds to least request on every request, the queue's
    // emptiness check, the pick, the slot reserved by compare-and-swap (released again here as
    // the finished request does).
    for n in [2usize, 8, 64] {
        let mut snap = snapshot(1, n, pb::LbStrategy::Unspecified);
        for m in &mut snap.models {
            if let Some(p) = m.policy.as_mut() {
                p.queue_max = 64;
            }
            for e in &mut m.endpoints {
                e.max_concurrent = 1024;
            }
        }
        let table = build_table(&snap);
        let route: Arc<Route> = table.route(MODEL).expect("route").clone();
        assert!(route.limited);
        for (i, e) in route.endpoints.iter().enumerate() {
            e.state.in_flight.store((i % 5) as u64, Ordering::Relaxed);
        }
        group.bench_with_input(
            BenchmarkId::new("least_request_admitted", n),
            &route,
            |b, route| {
                b.iter(|| {
                    let route = black_box(route);
                    let picked = if route.queue.is_empty() {
                        pick::pick_reserved(route, Tried::default(), &plain, clock.now_ms())
                    } else {
                        None
                    };
                    if let Some(i) = picked {
                        route.endpoints[i]
                            .state
                            .in_flight
                            .fetch_sub(1, Ordering::AcqRel);
                    }
                    picked
                })
            },
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// snapshot_apply

fn snapshot_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_apply");
    group.sample_size(20);
    for models in [10usize, 1_000, 10_000] {
        let snap = snapshot(models, 2, pb::LbStrategy::Unspecified);
        group.throughput(Throughput::Elements(models as u64));

        // Validation + merge, the table-building part of an apply. Per-endpoint load state is
        // carried across iterations as across real versions; dropping the result is not timed.
        let mut loads = HashMap::new();
        group.bench_with_input(
            BenchmarkId::new("from_snapshot+merge", models),
            &snap,
            |b, snap| {
                b.iter_with_large_drop(|| {
                    let routes =
                        PlaneRoutes::from_snapshot("1", Some(black_box(snap)), &parse_socket_addr)
                            .expect("valid");
                    let mut planes = BTreeMap::new();
                    planes.insert("cp".to_string(), routes);
                    RoutingTable::merge(
                        &planes,
                        "control-plane",
                        &mut loads,
                        &mut HashMap::new(),
                        &mut HashMap::new(),
                    )
                })
            },
        );

        // The full apply of already validated routes: merge with the stored planes, ArcSwap
        // store, and dropping the replaced table and routes.
        let metrics = Metrics::new();
        let state = TableState::new(
            "bench".into(),
            Box::new(move |table| {
                metrics.table_applied(&table.version, table.policy_conflicts.keys())
            }),
        );
        let routes = PlaneRoutes::from_snapshot("1", Some(&snap), &parse_socket_addr).expect("ok");
        state.apply_plane("cp", "http://cp:9001", routes.clone());
        group.bench_with_input(
            BenchmarkId::new("apply_plane", models),
            &routes,
            |b, routes| {
                b.iter_batched(
                    || routes.clone(),
                    |routes| state.apply_plane("cp", "http://cp:9001", routes),
                    BatchSize::LargeInput,
                )
            },
        );
        assert_eq!(state.table().routes().count(), models);
    }
    group.finish();
}

criterion_group!(
    benches,
    model_extraction,
    prefix_hash,
    table_lookup,
    endpoint_pick,
    snapshot_apply
);
criterion_main!(benches);
