//! Property tests (proptest, in CI) for the proxy's parsers of untrusted input: arbitrary
//! input never panics, and valid input comes back as it went in. The entry points: the
//! streaming `model` scanner (request bodies), snapshot → routing table (what a control plane
//! sends), the routes file and the config file.

use std::net::SocketAddr;

use multiverse_proto::discovery::v1 as pb;
use multiverse_proxy::config::ProxyConfig;
use multiverse_proxy::request::model_scan::{ModelScanner, Scan, ScanError, MAX_MODEL_LEN};
use multiverse_proxy::routing::snapshot::{resolve_socket_addr, PlaneRoutes};
use proptest::prelude::*;
use prost::Message;
use serde_json::Value;

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>()
            .prop_filter_map("finite", serde_json::Number::from_f64)
            .prop_map(Value::Number),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Feeds `body` to a scanner in chunks cut at `cuts` (positions modulo the length).
fn scan(body: &[u8], cuts: &[usize]) -> Result<Option<String>, ScanError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.push(0);
    points.push(body.len());
    points.sort_unstable();
    points.dedup();
    let mut scanner = ModelScanner::new();
    for w in points.windows(2) {
        if let Scan::Found(model) = scanner.feed(&body[w[0]..w[1]])? {
            return Ok(Some(model));
        }
    }
    Ok(None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Bytes of any kind, cut anywhere: an answer or an error, never a panic.
    #[test]
    fn the_model_scanner_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = scan(&body, &cuts);
    }

    /// A JSON object with a string `model` among any other members, serialised by serde_json
    /// and cut anywhere: the scanner finds exactly that model (or says it is too long).
    #[test]
    fn the_model_scanner_finds_the_model_wherever_the_body_is_cut(
        before in prop::collection::btree_map("[a-z_]{1,8}", json(), 0..4),
        after in prop::collection::btree_map("[a-z_]{1,8}", json(), 0..4),
        model in ".{0,40}",
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut members: Vec<(String, Value)> = before
            .into_iter()
            .filter(|(k, _)| k != "model")
            .collect();
        members.push(("model".into(), Value::String(model.clone())));
        members.extend(after.into_iter().filter(|(k, _)| k != "model"));
        // serde_json's map keeps insertion order with `preserve_order`; write the object by hand
        // so `model` sits where it was put whatever the feature set.
        let parts: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
            .collect();
        let body = format!("{{{}}}", parts.join(","));
        let got = scan(body.as_bytes(), &cuts);
        if model.len() > MAX_MODEL_LEN {
            prop_assert_eq!(got, Err(ScanError::ModelTooLong));
        } else {
            prop_assert_eq!(got, Ok(Some(model)));
        }
    }

    /// Whatever bytes arrive as a snapshot (decoded by prost when they decode at all), turning
    /// it into routes is an answer or an error, never a panic.
    #[test]
    fn any_snapshot_becomes_routes_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(snapshot) = pb::RouteSnapshot::decode(bytes.as_slice()) {
            let _ = PlaneRoutes::from_snapshot("v1", Some(&snapshot), &resolve_socket_addr);
        }
    }

    /// Structured snapshots with any strings in their fields: routes or an error.
    #[test]
    fn snapshots_with_any_strings_become_routes_or_an_error(
        models in prop::collection::vec(
            (".{0,12}", 0i32..5, prop::collection::vec((".{0,10}", ".{0,24}", any::<u32>()), 0..3)),
            0..4,
        ),
    ) {
        let snapshot = pb::RouteSnapshot {
            models: models
                .into_iter()
                .map(|(name, kind, eps)| pb::Model {
                    name,
                    kind,
                    endpoints: eps
                        .into_iter()
                        .map(|(id, address, weight)| pb::Endpoint {
                            id,
                            address,
                            weight,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let resolve = |a: &str| a.parse::<SocketAddr>().map_err(|e| e.to_string());
        let _ = PlaneRoutes::from_snapshot("v1", Some(&snapshot), &resolve);
    }

    /// Any text as a config file: parsed and validated, or an error, never a panic.
    #[test]
    fn any_config_text_parses_and_validates_or_errs(text in "(?s).{0,200}") {
        if let Ok(cfg) = toml::from_str::<ProxyConfig>(&text) {
            let _ = cfg.validate(None);
        }
    }

    /// Any text as a routes file: loaded, or an error naming the file.
    #[test]
    fn any_routes_file_loads_or_errs(text in "(?s).{0,200}") {
        let dir = std::env::temp_dir().join(format!("mv-prop-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("{:x}.toml", fnv1a(&text)));
        std::fs::write(&path, &text).expect("write");
        if let Err(e) = multiverse_proxy::standalone::load(&path) {
            prop_assert!(e.contains(&path.display().to_string()), "{}", e);
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
    }

    /// A valid config with changed numbers serialises and parses back to itself.
    #[test]
    fn configs_round_trip_through_toml(
        threads in 1usize..64,
        header in 1u64..600_000,
        keepalive in 1u64..600_000,
        body in 1usize..(64 << 20),
    ) {
        let mut cfg = ProxyConfig::default();
        cfg.server.threads = Some(threads);
        cfg.clients.header_timeout_ms = header;
        cfg.clients.keepalive_timeout_ms = keepalive;
        cfg.limits.max_body_bytes = body;
        let text = toml::to_string(&cfg).expect("serialise");
        let back: ProxyConfig = toml::from_str(&text).expect("parse back");
        prop_assert_eq!(back, cfg);
    }
}

/// A stable file name per text (FNV-1a), so parallel cases do not share a file.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
