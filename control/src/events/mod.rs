//! Lifecycle events of TEI instances: created, started, ready, unhealthy, restarted, failed,
//! stopped, deleted. Each goes to the tracing log, to `GET /events` subscribers (SSE) and to
//! the configured webhooks. Emitting never waits: supervision is never delayed by a slow
//! subscriber or webhook.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for `GET /events` clients that connect late.
pub const RECENT: usize = 1000;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started { pid: u32, port: u16 },
    Ready,
    Unhealthy { reason: String },
    Restarted { reason: String },
    Failed { error: String },
    Stopped,
    Deleted,
}

impl EventKind {
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
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing per control-plane process.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    pub instance: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Fans events out to the log, subscribers and webhooks.
pub struct EventBus {
    seq: AtomicU64,
    tx: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
}

impl EventBus {
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Self {
            seq: AtomicU64::new(0),
            tx,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        })
    }

    /// Records an event; never blocks.
    pub fn emit(&self, instance: &str, kind: EventKind) -> Event {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: crate::discovery::nodes::now_rfc3339(),
            instance: instance.to_string(),
            kind,
        };
        match &event.kind {
            EventKind::Failed { error } => {
                tracing::error!(instance, event = event.kind.name(), %error, "instance event")
            }
            EventKind::Unhealthy { reason } | EventKind::Restarted { reason } => {
                tracing::warn!(instance, event = event.kind.name(), %reason, "instance event")
            }
            _ => tracing::info!(instance, event = event.kind.name(), "instance event"),
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
        event
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The last events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}
