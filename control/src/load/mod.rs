//! Engine-aware load: every `[load] scrape_interval_ms` the plane reads each endpoint's own
//! metrics (`GET http://<address>/metrics`) and publishes the latest load of each as one
//! [`pb::LoadUpdate`], which every discovery stream forwards to its proxy on its own (no
//! snapshot, no version, no nonce), so load never rebuilds a routing table.
//!
//! The engine is told from the metric names ([`parse`]) unless the endpoint's `engine` tag
//! names it. Scrapes of one round run concurrently (at most `max_concurrent_scrapes`), each
//! with `timeout_ms`, in this task alone: no lock is held across them. An endpoint that does not
//! answer, or answers without known metrics, is not reported; its last good load is sent with
//! its growing age until it is 3 intervals old, then dropped (proxies ignore it from then on as
//! well). Plain-HTTP endpoints only: TLS backends (hosted APIs) and gRPC ones (TEI gRPC builds
//! serve metrics on another port) are not scraped.

pub mod parse;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use multiverse_common::clock::Instant;
use multiverse_proto::discovery::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use parse::{Engine, Load};

/// Largest metrics page read (vLLM's, histograms included, is ~100 KiB).
const MAX_METRICS_BYTES: usize = 4 << 20;

/// `[load]`: scraping the endpoints' engine metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadSettings {
    /// How often every endpoint is scraped; 0 turns engine-aware load off.
    pub scrape_interval_ms: u64,
    /// Longest wait for one endpoint's metrics.
    pub timeout_ms: u64,
    /// Endpoints scraped at once.
    pub max_concurrent_scrapes: usize,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            scrape_interval_ms: 1000,
            timeout_ms: 500,
            max_concurrent_scrapes: 32,
        }
    }
}

/// The latest load update (`None` before the first, and always when scraping is off).
pub type Loads = watch::Receiver<Option<Arc<pb::LoadUpdate>>>;

/// What to scrape: called once per round (the app hands in the current snapshot's
/// [`targets`]).
pub type TargetSource = Box<dyn Fn() -> Vec<Target> + Send + Sync>;

/// Starts the scraper (nothing when `scrape_interval_ms` is 0) and returns what it publishes.
pub fn spawn(settings: &LoadSettings, source: TargetSource) -> Loads {
    let (tx, rx) = watch::channel(None);
    if settings.scrape_interval_ms == 0 {
        return rx;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build();
    match client {
        Ok(client) => {
            tokio::spawn(run(settings.clone(), source, client, tx));
        }
        Err(e) => tracing::error!(error = %e, "engine load scraping is off: no HTTP client"),
    }
    rx
}

/// A scrape target: endpoint id, address and engine override.
pub struct Target {
    id: String,
    address: String,
    engine: Option<Engine>,
}

/// The plain-HTTP endpoints of `snapshot`, each once.
pub fn targets(snapshot: &pb::RouteSnapshot) -> Vec<Target> {
    let mut by_id = BTreeMap::new();
    let http = [
        pb::Protocol::Unspecified,
        pb::Protocol::Http1,
        pb::Protocol::H2c,
    ];
    for e in snapshot.models.iter().flat_map(|m| &m.endpoints) {
        if e.tls || !http.contains(&e.protocol()) {
            continue;
        }
        by_id.entry(e.id.clone()).or_insert_with(|| Target {
            id: e.id.clone(),
            address: e.address.clone(),
            engine: e.labels.get("engine").and_then(|n| Engine::from_name(n)),
        });
    }
    by_id.into_values().collect()
}

async fn run(
    settings: LoadSettings,
    source: TargetSource,
    client: reqwest::Client,
    tx: watch::Sender<Option<Arc<pb::LoadUpdate>>>,
) {
    let interval = Duration::from_millis(settings.scrape_interval_ms);
    let interval_ms = u32::try_from(settings.scrape_interval_ms).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last good load of each endpoint and when it was read.
    let mut last: HashMap<String, (Load, Instant)> = HashMap::new();
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let targets = source();
        let client = &client;
        let results: Vec<(String, Option<Load>)> = futures::stream::iter(targets)
            .map(|t| async move {
                let load = scrape(client, &t.address, t.engine).await;
                (t.id, load)
            })
            .buffer_unordered(settings.max_concurrent_scrapes.max(1))
            .collect()
            .await;
        let now = Instant::now();
        let live: std::collections::HashSet<&str> =
            results.iter().map(|(id, _)| id.as_str()).collect();
        last.retain(|id, (_, at)| live.contains(id.as_str()) && now - *at <= interval * 3);
        for (id, load) in &results {
            if let Some(load) = load {
                last.insert(id.clone(), (*load, now));
            }
        }
        if last.is_empty() && tx.borrow().is_none() {
            continue;
        }
        let mut endpoints: Vec<pb::EndpointLoad> = last
            .iter()
            .map(|(id, (l, at))| pb::EndpointLoad {
                endpoint_id: id.clone(),
                waiting: l.waiting,
                running: l.running,
                kv_cache_usage: l.kv_cache_usage,
                age_ms: u32::try_from(now.duration_since(*at).as_millis()).unwrap_or(u32::MAX),
                engine: l.engine.name().to_string(),
            })
            .collect();
        endpoints.sort_by(|a, b| a.endpoint_id.cmp(&b.endpoint_id));
        tx.send_replace(Some(Arc::new(pb::LoadUpdate {
            endpoints,
            interval_ms,
        })));
    }
}

/// One endpoint's load, or `None` when it does not answer in time, answers with an error, or
/// has no metrics this plane understands.
async fn scrape(client: &reqwest::Client, address: &str, engine: Option<Engine>) -> Option<Load> {
    let mut resp = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_METRICS_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    parse::load(std::str::from_utf8(&body).ok()?, engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The next update of `rx` that `ok` accepts (each within 10 s).
    async fn next_where(rx: &mut Loads, ok: impl Fn(&pb::LoadUpdate) -> bool) -> pb::LoadUpdate {
        loop {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("an update within 10 s")
                .expect("the scraper runs");
            if let Some(u) = rx.borrow_and_update().as_deref() {
                if ok(u) {
                    return u.clone();
                }
            }
        }
    }

    #[tokio::test]
    async fn only_answering_engines_are_reported_and_a_lost_one_ages_out() {
        let any = "127.0.0.1:0".parse().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let good = crate::testing::serve(any, move |_| {
            let up = flag.load(Ordering::SeqCst);
            async move {
                match up {
                    true => (
                        200,
                        "vllm:num_requests_waiting{model_name=\"m\"} 3\n".to_string(),
                    ),
                    false => (503, String::new()),
                }
            }
        })
        .await;
        let failing = crate::testing::serve(any, |_| async { (503, String::new()) }).await;
        let hanging = crate::testing::serve(any, |_| std::future::pending()).await;
        let unknown =
            crate::testing::serve(any, |_| async { (200, "process_cpu_seconds 1\n".into()) }).await;
        let settings = LoadSettings {
            scrape_interval_ms: 200,
            timeout_ms: 150,
            max_concurrent_scrapes: 4,
        };
        let addrs = [
            ("good", good),
            ("failing", failing),
            ("hanging", hanging),
            ("unknown", unknown),
        ];
        let mut rx = spawn(
            &settings,
            Box::new(move || {
                addrs
                    .iter()
                    .map(|(id, a)| Target {
                        id: (*id).into(),
                        address: a.to_string(),
                        engine: None,
                    })
                    .collect()
            }),
        );
        let first = next_where(&mut rx, |u| !u.endpoints.is_empty()).await;
        assert_eq!(first.interval_ms, 200);
        assert_eq!(first.endpoints.len(), 1, "{first:?}");
        let e = &first.endpoints[0];
        assert_eq!(
            (e.endpoint_id.as_str(), e.engine.as_str(), e.waiting),
            ("good", "vllm", 3)
        );
        // Its metrics stop answering: its last load is sent older and older, then dropped.
        up.store(false, Ordering::SeqCst);
        let aged = next_where(&mut rx, |u| u.endpoints.iter().any(|e| e.age_ms >= 200)).await;
        assert!(aged.endpoints[0].age_ms <= 600, "{aged:?}");
        next_where(&mut rx, |u| u.endpoints.is_empty()).await;
    }

    fn endpoint(id: &str, protocol: pb::Protocol, tls: bool, engine: Option<&str>) -> pb::Endpoint {
        pb::Endpoint {
            id: id.into(),
            address: format!("{id}:8000"),
            protocol: protocol as i32,
            tls,
            labels: engine
                .map(|e| [("engine".to_string(), e.to_string())].into())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_http_endpoints_are_scraped_once_with_their_engine_tag() {
        let snapshot = pb::RouteSnapshot {
            models: vec![
                pb::Model {
                    name: "m1".into(),
                    endpoints: vec![
                        endpoint("a", pb::Protocol::Http1, false, Some("sglang")),
                        endpoint("hosted", pb::Protocol::Http1, true, None),
                        endpoint("tei-grpc", pb::Protocol::Grpc, false, None),
                    ],
                    ..Default::default()
                },
                pb::Model {
                    name: "m2".into(),
                    endpoints: vec![endpoint("a", pb::Protocol::Http1, false, Some("sglang"))],
                    ..Default::default()
                },
            ],
            auth: None,
        };
        let t = targets(&snapshot);
        assert_eq!(t.len(), 1, "TLS and gRPC endpoints skipped, `a` once");
        assert_eq!((t[0].id.as_str(), t[0].engine), ("a", Some(Engine::Sglang)));
        assert_eq!(t[0].address, "a:8000");
    }
}
