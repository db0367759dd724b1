//! Tests of the bus, webhooks and the events stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::HeaderMap;
use serde_json::Value;

use super::webhooks::{backoff, QUEUE_CAPACITY};
use super::*;
use crate::testing;

/// A test webhook receiver on 127.0.0.1 (`POST /hook/secret-token`).
struct Hook {
    url: String,
    hits: Arc<AtomicUsize>,
    /// Bodies (and headers) of the requests answered 2xx, in arrival order.
    received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

impl Hook {
    /// `script`: the status of the n-th request (200 past the end); `hang`: never answer.
    async fn start(script: Vec<u16>, hang: bool) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let received: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
        let (h, r) = (hits.clone(), received.clone());
        let script = Arc::new(script);
        let addr = testing::serve("127.0.0.1:0".parse().unwrap(), move |req| {
            let (hits, received, script) = (h.clone(), r.clone(), script.clone());
            async move {
                if req.method != "POST" || req.path != "/hook/secret-token" {
                    return (404, String::new());
                }
                let n = hits.fetch_add(1, Ordering::SeqCst);
                if hang {
                    futures::future::pending::<()>().await;
                }
                let status = script.get(n).copied().unwrap_or(200);
                if status == 200 {
                    let json = serde_json::from_slice(&req.body).expect("JSON body");
                    received.lock().unwrap().push((req.headers, json));
                }
                (status, String::new())
            }
        })
        .await;
        Hook {
            url: format!("http://{addr}/hook/secret-token"),
            hits,
            received,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Waits up to `secs` for `cond`.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn started(pid: u32) -> EventKind {
    EventKind::Started { pid, port: 8081 }
}

#[test]
fn names_cover_every_kind() {
    let kinds = [
        EventKind::Created,
        started(1),
        EventKind::Ready,
        EventKind::Unhealthy { reason: "r".into() },
        EventKind::Restarted { reason: "r".into() },
        EventKind::Failed { error: "e".into() },
        EventKind::Stopped,
        EventKind::Deleted,
        EventKind::LimitExceeded {
            limit: "max_memory_mb".into(),
            used_mb: 2,
            max_mb: 1,
            action: "restart".into(),
        },
        EventKind::BackendRegistered,
        EventKind::BackendHealthy,
        EventKind::BackendUnhealthy { reason: "r".into() },
        EventKind::BackendDeregistered { reason: "r".into() },
        EventKind::BackendRestored,
        EventKind::BackendUpdated,
        EventKind::BackendDeleted,
        EventKind::PolicyUpdated,
        EventKind::PolicyDeleted,
    ];
    let names: Vec<_> = kinds.iter().map(EventKind::name).collect();
    assert_eq!(names, EventKind::NAMES);
    for k in &kinds {
        let json = serde_json::to_value(k).unwrap();
        assert_eq!(json["type"], k.name());
    }
}

#[test]
fn emit_numbers_and_keeps_recent() {
    let bus = EventBus::new();
    for i in 0..(RECENT as u32 + 5) {
        bus.emit("a", started(i));
    }
    let recent = bus.recent();
    assert_eq!(recent.len(), RECENT);
    assert_eq!(recent[0].seq, 6);
    assert_eq!(recent.last().unwrap().seq, RECENT as u64 + 5);
    assert_eq!(bus.last_seq(), RECENT as u64 + 5);
    assert_eq!(bus.webhook_stats(), WebhookStats::default());
}

#[test]
fn concurrent_emits_are_seen_in_seq_order() {
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    std::thread::scope(|s| {
        for t in 0..4 {
            let bus = &bus;
            s.spawn(move || {
                for i in 0..200 {
                    bus.emit(&format!("i{t}"), started(i));
                }
            });
        }
    });
    let recent: Vec<u64> = bus.recent().iter().map(|e| e.seq).collect();
    assert_eq!(recent, (1..=800).collect::<Vec<u64>>());
    let mut live = Vec::new();
    while let Ok(e) = rx.try_recv() {
        live.push(e.seq);
    }
    assert_eq!(live, (1..=800).collect::<Vec<u64>>());
}

// ---- webhook configuration ----

#[test]
fn config_defaults_and_validation() {
    let cfg: WebhookConfig = toml::from_str(r#"url = "https://hooks.example.com/x""#).unwrap();
    assert_eq!(cfg.timeout_ms, 2000);
    assert_eq!(cfg.max_retries, 3);
    assert!(cfg.events.is_empty() && cfg.headers.is_empty());
    cfg.validate().unwrap();

    assert!(toml::from_str::<WebhookConfig>("url = \"http://h\"\nbogus = 1").is_err());

    let bad = |f: &dyn Fn(&mut WebhookConfig)| {
        let mut c = WebhookConfig::new("http://127.0.0.1:9/hook");
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert_eq!(bad(&|c| c.url = "ftp://h/x".into()).field, "url");
    assert_eq!(bad(&|c| c.url = "not a url".into()).field, "url");
    assert_eq!(bad(&|c| c.url = "http://user:pw@h/x".into()).field, "url");
    assert_eq!(bad(&|c| c.timeout_ms = 0).field, "timeout_ms");
    assert_eq!(bad(&|c| c.max_retries = 11).field, "max_retries");
    let e = bad(&|c| c.events = vec!["ready".into(), "exploded".into()]);
    assert_eq!(e.field, "events");
    assert!(e.message.contains("exploded"));
    let e = bad(&|c| {
        c.headers.insert("bad header".into(), "v".into());
    });
    assert_eq!(e.field, "headers");
    let e = bad(&|c| {
        c.headers
            .insert("Authorization".into(), "Bearer s3cret\n".into());
    });
    assert_eq!(e.field, "headers");
    assert!(!e.message.contains("s3cret"));
    assert_eq!(
        bad(&|c| {
            c.headers.insert("Content-Type".into(), "text/plain".into());
        })
        .field,
        "headers"
    );

    let mut ok = WebhookConfig::new("http://127.0.0.1:9/hook/tok3n?k=v");
    ok.events = vec!["ready".into()];
    ok.headers
        .insert("Authorization".into(), "Bearer s3cret".into());
    ok.validate().unwrap();
    let shown = format!("{ok:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("tok3n"), "{shown}");
    assert!(shown.contains("Authorization"), "{shown}");
    assert_eq!(ok.target(), "http://127.0.0.1:9");
    assert!(ok.wants(&EventKind::Ready));
    assert!(!ok.wants(&EventKind::Created));
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(0), Duration::from_millis(200));
    assert_eq!(backoff(1), Duration::from_millis(400));
    assert_eq!(backoff(3), Duration::from_millis(1600));
    assert_eq!(backoff(20), webhooks::BACKOFF_MAX);
    assert_eq!(backoff(40), webhooks::BACKOFF_MAX);
}

// ---- webhook delivery ----

#[tokio::test]
async fn webhook_receives_events_in_order_as_json() {
    let hook = Hook::start(vec![], false).await;
    let mut cfg = WebhookConfig::new(&hook.url);
    cfg.headers
        .insert("Authorization".into(), "Bearer s3cret".into());
    let bus = EventBus::with_webhooks(vec![cfg], client());
    let mut sent = vec![bus.emit("emb-1", EventKind::Created)];
    sent.push(bus.emit("emb-1", started(4242)));
    for i in 0..18 {
        sent.push(bus.emit(&format!("emb-{i}"), EventKind::Ready));
    }
    sent.push(bus.emit(
        "emb-1",
        EventKind::Failed {
            error: "exit 1".into(),
        },
    ));
    assert!(eventually(10, || hook.count() == sent.len()).await);

    let bodies = hook.bodies();
    let expected: Vec<Value> = sent
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(bodies, expected);
    assert_eq!(bodies[1]["type"], "started");
    assert_eq!(bodies[1]["pid"], 4242);
    assert_eq!(bodies[1]["port"], 8081);
    assert_eq!(bodies[1]["instance"], "emb-1");
    assert_eq!(bodies[1]["seq"], 2);
    assert!(bodies[1]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(bodies.last().unwrap()["error"], "exit 1");

    let (headers, _) = hook.received.lock().unwrap()[0].clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["authorization"], "Bearer s3cret");

    assert!(eventually(5, || bus.webhook_stats().delivered == sent.len() as u64).await);
    let stats = bus.webhook_stats();
    assert_eq!(
        (stats.failed, stats.dropped, stats.retries, stats.queued),
        (0, 0, 0, 0)
    );
    let each = bus.webhook_stats_each();
    assert_eq!(each.len(), 1);
    assert!(!each[0].0.contains("secret-token"));
}

#[tokio::test]
async fn server_errors_are_retried_and_delivered_once() {
    let hook = Hook::start(vec![500, 500], false).await;
    let bus = EventBus::with_webhooks(vec![WebhookConfig::new(&hook.url)], client());
    let event = bus.emit("emb", EventKind::Ready);
    assert!(eventually(10, || bus.webhook_stats().delivered == 1).await);
    // Nothing more arrives afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.hits.load(Ordering::SeqCst), 3);
    assert_eq!(hook.bodies(), vec![serde_json::to_value(&event).unwrap()]);
    let stats = bus.webhook_stats();
    assert_eq!((stats.delivered, stats.retries, stats.failed), (1, 2, 0));
}

#[tokio::test]
async fn too_many_requests_is_retried_client_errors_are_not() {
    let hook = Hook::start(vec![429], false).await;
    let bus = EventBus::with_webhooks(vec![WebhookConfig::new(&hook.url)], client());
    bus.emit("emb", EventKind::Ready);
    assert!(eventually(10, || bus.webhook_stats().delivered == 1).await);
    assert_eq!(hook.hits.load(Ordering::SeqCst), 2);

    let hook = Hook::start(vec![404, 404], false).await;
    let bus = EventBus::with_webhooks(vec![WebhookConfig::new(&hook.url)], client());
    bus.emit("emb", EventKind::Ready);
    bus.emit("emb", EventKind::Stopped);
    assert!(eventually(10, || bus.webhook_stats().failed == 2).await);
    assert_eq!(hook.hits.load(Ordering::SeqCst), 2);
    assert_eq!(bus.webhook_stats().retries, 0);
}

#[tokio::test]
async fn gives_up_after_max_retries_then_goes_on() {
    let hook = Hook::start(vec![503, 503, 503], false).await;
    let mut cfg = WebhookConfig::new(&hook.url);
    cfg.max_retries = 1;
    let bus = EventBus::with_webhooks(vec![cfg], client());
    bus.emit("emb", EventKind::Created);
    let second = bus.emit("emb", EventKind::Deleted);
    // First event: 503, 503 → failed. Second: 503, then 200.
    assert!(eventually(10, || bus.webhook_stats().delivered == 1).await);
    let stats = bus.webhook_stats();
    assert_eq!((stats.failed, stats.retries), (1, 2));
    assert_eq!(hook.hits.load(Ordering::SeqCst), 4);
    assert_eq!(hook.bodies(), vec![serde_json::to_value(&second).unwrap()]);
}

#[tokio::test]
async fn unreachable_webhook_fails_after_retries() {
    // A port that was just free: connection refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = WebhookConfig::new(format!("http://{addr}/hook"));
    cfg.max_retries = 1;
    let bus = EventBus::with_webhooks(vec![cfg], client());
    bus.emit("emb", EventKind::Ready);
    assert!(eventually(10, || bus.webhook_stats().failed == 1).await);
    assert_eq!(bus.webhook_stats().retries, 1);
}

#[tokio::test]
async fn a_dead_webhook_delays_neither_emit_nor_other_webhooks() {
    let dead = Hook::start(vec![], true).await;
    let healthy = Hook::start(vec![], false).await;
    let bus = EventBus::with_webhooks(
        vec![
            WebhookConfig::new(&dead.url),
            WebhookConfig::new(&healthy.url),
        ],
        client(),
    );
    // Let the dead hook's task start its first (hanging) attempt midway.
    bus.emit("warmup", EventKind::Created);
    assert!(eventually(5, || dead.hits.load(Ordering::SeqCst) == 1).await);

    let started_at = Instant::now();
    for i in 0..100 {
        bus.emit(&format!("emb-{i}"), EventKind::Ready);
    }
    let took = started_at.elapsed();
    assert!(took < Duration::from_millis(200), "100 emits took {took:?}");

    assert!(eventually(10, || healthy.count() == 101).await);
    let seqs: Vec<u64> = healthy
        .bodies()
        .iter()
        .map(|b| b["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<u64>>());
    assert_eq!(dead.count(), 0);
    // The hook counts a body when it arrives; the bus counts it delivered once the hook's
    // answer is back, a moment later.
    assert!(eventually(10, || bus.webhook_stats_each()[1].1.delivered == 101).await);
    let each = bus.webhook_stats_each();
    assert_eq!(each[0].1.delivered, 0);
    assert_eq!(each[0].1.queued, 100);
    assert_eq!(each[1].1.delivered, 101);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let dead = Hook::start(vec![], true).await;
    let bus = EventBus::with_webhooks(vec![WebhookConfig::new(&dead.url)], client());
    // No await in between: the delivery task has not taken anything off the queue yet.
    for _ in 0..(QUEUE_CAPACITY + 11) {
        bus.emit("emb", EventKind::Ready);
    }
    let stats = bus.webhook_stats();
    assert_eq!(stats.dropped, 11);
    assert_eq!(stats.queued, QUEUE_CAPACITY as u64);
}

#[tokio::test]
async fn webhook_event_filter_by_type() {
    let hook = Hook::start(vec![], false).await;
    let mut cfg = WebhookConfig::new(&hook.url);
    cfg.events = vec!["ready".into(), "failed".into()];
    let bus = EventBus::with_webhooks(vec![cfg], client());
    bus.emit("emb", EventKind::Created);
    bus.emit("emb", started(7));
    bus.emit("emb", EventKind::Ready);
    bus.emit(
        "emb",
        EventKind::Unhealthy {
            reason: "probe".into(),
        },
    );
    bus.emit(
        "emb",
        EventKind::Failed {
            error: "crash loop".into(),
        },
    );
    bus.emit("emb", EventKind::Deleted);
    assert!(eventually(10, || hook.count() == 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let types: Vec<_> = hook
        .bodies()
        .iter()
        .map(|b| {
            (
                b["seq"].as_u64().unwrap(),
                b["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(types, vec![(3, "ready".into()), (5, "failed".into())]);
    let stats = bus.webhook_stats();
    assert_eq!((stats.delivered, stats.dropped), (2, 0));
}

// ---- the events stream ----

async fn next_item(s: &mut (impl futures::Stream<Item = SseItem> + Unpin)) -> SseItem {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an item within 5 s")
        .expect("stream open")
}

fn seq_of(item: SseItem) -> u64 {
    match item {
        SseItem::Event(e) => e.seq,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_replays_recent_then_goes_live() {
    let bus = EventBus::new();
    bus.emit("a", EventKind::Created);
    bus.emit("a", started(1));
    let mut s = Box::pin(sse_stream(&bus, None, EventFilter::default()));
    assert_eq!(seq_of(next_item(&mut s).await), 1);
    assert_eq!(seq_of(next_item(&mut s).await), 2);
    // Nothing more yet.
    assert!(tokio::time::timeout(Duration::from_millis(100), s.next())
        .await
        .is_err());
    let live = bus.emit("a", EventKind::Ready);
    assert_eq!(next_item(&mut s).await, SseItem::Event(live));
    bus.close();
    assert!(tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .is_none());
    // A stream opened after close ends at once.
    let mut late = Box::pin(sse_stream(&bus, None, EventFilter::default()));
    assert!(tokio::time::timeout(Duration::from_secs(5), late.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn stream_filters_by_instance_type_and_since() {
    let bus = EventBus::new();
    bus.emit("a", EventKind::Created); // 1
    bus.emit("b", EventKind::Created); // 2
    bus.emit("a", started(1)); // 3
    bus.emit("a", EventKind::Ready); // 4
    let only_a = EventFilter {
        instance: Some("a".into()),
        types: vec![],
    };
    let mut s = Box::pin(sse_stream(&bus, Some(1), only_a));
    assert_eq!(seq_of(next_item(&mut s).await), 3);
    assert_eq!(seq_of(next_item(&mut s).await), 4);
    bus.emit("b", EventKind::Ready); // 5
    bus.emit("a", EventKind::Stopped); // 6
    assert_eq!(seq_of(next_item(&mut s).await), 6);

    let ready_only = EventFilter {
        instance: None,
        types: vec!["ready".into()],
    };
    let mut s = Box::pin(sse_stream(&bus, None, ready_only));
    assert_eq!(seq_of(next_item(&mut s).await), 4);
    assert_eq!(seq_of(next_item(&mut s).await), 5);
    bus.emit("c", EventKind::Created); // 7
    bus.emit("c", EventKind::Ready); // 8
    assert_eq!(seq_of(next_item(&mut s).await), 8);

    // `since` at the last event: only live ones.
    let mut s = Box::pin(sse_stream(&bus, Some(8), EventFilter::default()));
    bus.emit("c", EventKind::Deleted); // 9
    assert_eq!(seq_of(next_item(&mut s).await), 9);

    // `since` beyond the last event (the control plane restarted): everything is replayed.
    let mut s = Box::pin(sse_stream(&bus, Some(500), EventFilter::default()));
    assert_eq!(seq_of(next_item(&mut s).await), 1);
}

#[tokio::test]
async fn a_lagging_stream_is_told_and_continues() {
    let bus = EventBus::new();
    let mut s = Box::pin(sse_stream(&bus, None, EventFilter::default()));
    for i in 0..(LIVE_CAPACITY as u32 + 5) {
        bus.emit("a", started(i));
    }
    assert_eq!(next_item(&mut s).await, SseItem::Lagged(5));
    assert_eq!(seq_of(next_item(&mut s).await), 6);
    assert_eq!(seq_of(next_item(&mut s).await), 7);
}
