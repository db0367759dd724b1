//! Lifecycle events of TEI instances (created, started, ready, unhealthy, restarted, failed,
//! stopped, deleted) and of backends (`backend_registered`, `backend_healthy`,
//! `backend_unhealthy`, `backend_deregistered`, `backend_restored`, `backend_updated`,
//! `backend_deleted`; prefixed, as `unhealthy` exists for both) and of models' API policies
//! (`policy_updated`, `policy_deleted`, with `model`), on one `seq`. Each goes to the tracing log, to `GET /events` subscribers (SSE, see
//! [`sse_stream`]) and to the configured [`webhooks`]. Emitting never waits: supervision is never
//! delayed by a slow subscriber or webhook (webhooks are fed through bounded queues, each drained
//! by its own task; a full queue drops and counts).

pub mod webhooks;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

pub use webhooks::{WebhookConfig, WebhookStats};

/// Events kept for `GET /events` clients that connect late.
pub const RECENT: usize = 1000;

/// Capacity of the live channel to SSE subscribers; a subscriber further behind is told how
/// many events it missed ([`SseItem::Lagged`]).
pub const LIVE_CAPACITY: usize = 1024;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started {
        pid: u32,
        port: u16,
    },
    Ready,
    Unhealthy {
        reason: String,
    },
    Restarted {
        reason: String,
    },
    Failed {
        error: String,
    },
    Stopped,
    Deleted,
    /// A `[limits]` value was exceeded: `limit` (`max_memory_mb`, `max_vram_mb`), what was used
    /// and allowed (MiB), and `action`: `restart` or `warn`.
    LimitExceeded {
        limit: String,
        used_mb: u64,
        max_mb: u64,
        action: String,
    },
    /// A backend was registered through the API (it passed its first check).
    BackendRegistered,
    /// A backend's health checks made it healthy.
    BackendHealthy,
    /// A backend's health checks made it unhealthy (its endpoints are withdrawn).
    BackendUnhealthy {
        reason: String,
    },
    /// Health checking deregistered a backend softly (`deregister_after_failures`).
    BackendDeregistered {
        reason: String,
    },
    /// A soft deregistration was undone.
    BackendRestored,
    /// A backend was changed through the API.
    BackendUpdated,
    /// A backend was deleted through the API.
    BackendDeleted,
    /// A model's routing policy was set through the API.
    PolicyUpdated,
    /// A model's API routing policy was deleted (its config policy applies again).
    PolicyDeleted,
}

impl EventKind {
    /// Every `type` name, in lifecycle order.
    pub const NAMES: &'static [&'static str] = &[
        "created",
        "started",
        "ready",
        "unhealthy",
        "restarted",
        "failed",
        "stopped",
        "deleted",
        "limit_exceeded",
        "backend_registered",
        "backend_healthy",
        "backend_unhealthy",
        "backend_deregistered",
        "backend_restored",
        "backend_updated",
        "backend_deleted",
        "policy_updated",
        "policy_deleted",
    ];

    /// The `type` name, e.g. `started`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Started { .. } => "started",
            EventKind::Ready => "ready",
            EventKind::Unhealthy { .. } => "unhealthy",
            EventKind::Restarted { .. } => "restarted",
            EventKind::Failed { .. } => "failed",
            EventKind::Stopped => "stopped",
            EventKind::Deleted => "deleted",
            EventKind::LimitExceeded { .. } => "limit_exceeded",
            EventKind::BackendRegistered => "backend_registered",
            EventKind::BackendHealthy => "backend_healthy",
            EventKind::BackendUnhealthy { .. } => "backend_unhealthy",
            EventKind::BackendDeregistered { .. } => "backend_deregistered",
            EventKind::BackendRestored => "backend_restored",
            EventKind::BackendUpdated => "backend_updated",
            EventKind::BackendDeleted => "backend_deleted",
            EventKind::PolicyUpdated => "policy_updated",
            EventKind::PolicyDeleted => "policy_deleted",
        }
    }

    /// Whether `name` is an event type name.
    pub fn is_name(name: &str) -> bool {
        Self::NAMES.contains(&name)
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing per control-plane process (starts again at 1 after a restart).
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// The instance of an instance event ("" for a backend event, and then not serialized).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The backend of a backend event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendRef>,
    /// The model of a policy event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The backend a backend event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub id: String,
    pub name: String,
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this instance's events.
    pub instance: Option<String>,
    /// Only these types (names from [`EventKind::NAMES`]); empty = all.
    pub types: Vec<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        self.instance.as_deref().is_none_or(|i| i == event.instance)
            && (self.types.is_empty() || self.types.iter().any(|t| t == event.kind.name()))
    }
}

/// What an events stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Event(Event),
    /// The subscriber fell this many events behind; they were skipped.
    Lagged(u64),
}

struct Inner {
    seq: u64,
    recent: VecDeque<Event>,
}

/// Fans events out to the log, subscribers and webhooks.
pub struct EventBus {
    /// Sequence numbers are assigned, and events are queued everywhere, under this lock, so
    /// every consumer sees them in `seq` order.
    inner: Mutex<Inner>,
    /// The last assigned `seq`, readable without the lock.
    last_seq: AtomicU64,
    tx: broadcast::Sender<Event>,
    webhooks: Vec<webhooks::Sink>,
    closed: watch::Sender<bool>,
}

impl EventBus {
    /// A bus without webhooks.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::build(Vec::new()))
    }

    /// A bus that also POSTs events to `webhooks` (validated beforehand with
    /// [`WebhookConfig::validate`]), each through its own bounded queue and delivery task.
    /// Must be called within a tokio runtime.
    pub fn with_webhooks(webhooks: Vec<WebhookConfig>, client: reqwest::Client) -> Arc<Self> {
        let sinks = webhooks
            .into_iter()
            .map(|cfg| webhooks::Sink::spawn(cfg, client.clone()))
            .collect();
        Arc::new(Self::build(sinks))
    }

    fn build(webhooks: Vec<webhooks::Sink>) -> Self {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        Self {
            inner: Mutex::new(Inner {
                seq: 0,
                recent: VecDeque::with_capacity(RECENT),
            }),
            last_seq: AtomicU64::new(0),
            tx,
            webhooks,
            closed: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event of `model` (its policy); never blocks (as [`EventBus::emit`]).
    pub fn emit_model(&self, model: &str, kind: EventKind) -> Event {
        let mut event = Event {
            seq: 0,
            at: String::new(),
            instance: String::new(),
            backend: None,
            model: Some(model.to_string()),
            kind,
        };
        self.publish_event(&mut event);
        tracing::info!(
            model,
            seq = event.seq,
            event = event.kind.name(),
            "model event"
        );
        event
    }

    /// Records an event of `backend`; never blocks (as [`EventBus::emit`]).
    pub fn emit_backend(&self, backend: BackendRef, kind: EventKind) -> Event {
        let event = self.publish(String::new(), Some(backend), kind);
        let (seq, event_name) = (event.seq, event.kind.name());
        let (id, name) = event
            .backend
            .as_ref()
            .map_or(("", ""), |b| (b.id.as_str(), b.name.as_str()));
        match &event.kind {
            EventKind::BackendUnhealthy { reason } | EventKind::BackendDeregistered { reason } => {
                tracing::warn!(backend = name, id, seq, event = event_name, %reason, "backend event")
            }
            _ => tracing::info!(backend = name, id, seq, event = event_name, "backend event"),
        }
        event
    }

    /// Numbers an event and hands it to subscribers and webhooks, in `seq` order.
    fn publish(&self, instance: String, backend: Option<BackendRef>, kind: EventKind) -> Event {
        let mut event = Event {
            seq: 0,
            at: String::new(),
            instance,
            backend,
            model: None,
            kind,
        };
        self.publish_event(&mut event);
        event
    }

    /// Numbers and stamps `event` and hands it on (see [`EventBus::publish`]).
    fn publish_event(&self, event: &mut Event) {
        let mut inner = self.lock();
        inner.seq += 1;
        event.seq = inner.seq;
        event.at = multiverse_common::time::now_rfc3339();
        let event = &*event;
        self.last_seq.store(event.seq, Ordering::Relaxed);
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
        for w in &self.webhooks {
            w.offer(event);
        }
    }

    /// Records an event; never blocks (beyond a short lock shared with other emitters).
    pub fn emit(&self, instance: &str, kind: EventKind) -> Event {
        let event = self.publish(instance.to_string(), None, kind);
        let seq = event.seq;
        match &event.kind {
            EventKind::Failed { error } => {
                tracing::error!(instance, seq, event = event.kind.name(), %error, "instance event")
            }
            EventKind::Unhealthy { reason } | EventKind::Restarted { reason } => {
                tracing::warn!(instance, seq, event = event.kind.name(), %reason, "instance event")
            }
            EventKind::LimitExceeded {
                limit,
                used_mb,
                max_mb,
                action,
            } => {
                tracing::warn!(instance, seq, event = "limit_exceeded", %limit, used_mb, max_mb, %action, "instance event")
            }
            EventKind::Started { pid, port } => {
                tracing::info!(
                    instance,
                    seq,
                    event = "started",
                    pid,
                    port,
                    "instance event"
                )
            }
            _ => tracing::info!(instance, seq, event = event.kind.name(), "instance event"),
        }
        event
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The last events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.lock().recent.iter().cloned().collect()
    }

    /// The `seq` of the last event emitted (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// Deliveries to all webhooks together.
    pub fn webhook_stats(&self) -> WebhookStats {
        self.webhooks
            .iter()
            .fold(WebhookStats::default(), |acc, w| acc + w.stats())
    }

    /// Deliveries per webhook, in configuration order, each with its URL's origin
    /// (`scheme://host:port`; the path, which may hold a token, is left out).
    pub fn webhook_stats_each(&self) -> Vec<(String, WebhookStats)> {
        self.webhooks
            .iter()
            .map(|w| (w.target().to_string(), w.stats()))
            .collect()
    }

    /// Ends every events stream (`GET /events`), so that a graceful HTTP shutdown does not wait
    /// for connected SSE clients. Emitting still works afterwards (log and webhooks).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The recent events and a receiver of every later one, with no gap and no overlap.
    fn replay_and_subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        (inner.recent.iter().cloned().collect(), rx)
    }
}

/// The stream behind `GET /events`: first the recent events with `seq > since` (all of them
/// without `since`, or when `since` is beyond the last event — the control plane restarted and
/// its numbering began again), then live events as they are emitted, all passing `filter`. A
/// subscriber that falls more than [`LIVE_CAPACITY`] events behind gets [`SseItem::Lagged`] and
/// continues with the newest. Ends when the bus is [closed](EventBus::close) or dropped.
pub fn sse_stream(
    bus: &EventBus,
    since: Option<u64>,
    filter: EventFilter,
) -> impl Stream<Item = SseItem> + Send + 'static {
    let (recent, rx) = bus.replay_and_subscribe();
    let since = since.filter(|s| *s <= bus.last_seq()).unwrap_or(0);
    let replayed_to = recent.last().map_or(0, |e| e.seq);
    let replay_filter = filter.clone();
    let replay = futures::stream::iter(
        recent
            .into_iter()
            .filter(move |e| e.seq > since && replay_filter.matches(e))
            .map(SseItem::Event),
    );
    let live = BroadcastStream::new(rx).filter_map(move |r| {
        let item = match r {
            Ok(e) if e.seq > replayed_to && e.seq > since && filter.matches(&e) => {
                Some(SseItem::Event(e))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(SseItem::Lagged(n)),
        };
        futures::future::ready(item)
    });
    let mut closed = bus.closed.subscribe();
    replay.chain(live).take_until(async move {
        // Err: the bus is gone, which ends the stream as well.
        let _ = closed.wait_for(|c| *c).await;
    })
}

#[cfg(test)]
mod tests;
