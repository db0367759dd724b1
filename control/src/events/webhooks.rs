//! Webhooks: each event, serialized as [`Event`] JSON, POSTed to operator-configured URLs.
//!
//! [`EventBus::emit`](super::EventBus::emit) only offers the event to each webhook's bounded
//! queue ([`QUEUE_CAPACITY`], `try_send`): a full queue drops the event (counted, and warned
//! once until the queue drains). One task per webhook delivers its queue in order, each attempt
//! within `timeout_ms`, retrying transport errors, timeouts, 5xx and 429 with exponential
//! backoff up to `max_retries` times; a final failure is logged at warn. A slow or dead webhook
//! therefore delays only its own deliveries. Header values (credentials) and URL paths (which
//! may hold a token, as in chat webhooks) are never logged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use multiverse_common::Backoff;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Event, EventKind};

/// Events waiting for one webhook before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// The largest accepted `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 10;
/// The wait before retry n (0-based) is `BACKOFF_BASE × 2^n`, at most [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The retry delays ([`BACKOFF_BASE`] doubling up to [`BACKOFF_MAX`]).
const RETRY_BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);

/// Headers the delivery sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

/// A webhook setting that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// One webhook, as configured.
#[derive(Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Timeout of each attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after the first attempt (transport errors, timeouts, 5xx, 429).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Event type names to send (see [`EventKind::NAMES`]); empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Extra request headers, e.g. `Authorization`. Never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout_ms() -> u64 {
    2000
}

fn default_max_retries() -> u32 {
    3
}

/// Header values and the URL's path are left out: they may hold credentials.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_target(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("events", &self.events)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookConfig {
    /// A webhook for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: default_timeout_ms(),
            max_retries: default_max_retries(),
            events: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field, message: String| FieldError { field, message };
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| err("url", format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("url", "must use http:// or https://".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err("url", "has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "url",
                "must not contain credentials (use `headers`, e.g. Authorization)".into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be > 0".into()));
        }
        if self.max_retries > MAX_RETRIES_LIMIT {
            return Err(err(
                "max_retries",
                format!("must be at most {MAX_RETRIES_LIMIT}"),
            ));
        }
        for name in &self.events {
            if !EventKind::is_name(name) {
                return Err(err(
                    "events",
                    format!(
                        "unknown event type `{name}` (one of {})",
                        EventKind::NAMES.join(", ")
                    ),
                ));
            }
        }
        for (name, value) in &self.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err("headers", format!("`{name}` is not a valid header name")))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(err("headers", format!("`{name}` is set by the delivery")));
            }
            // The value is not quoted: it may be a secret.
            HeaderValue::from_str(value)
                .map_err(|_| err("headers", format!("the value of `{name}` is not valid")))?;
        }
        Ok(())
    }

    /// Whether this webhook wants `kind`.
    pub fn wants(&self, kind: &EventKind) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind.name())
    }

    /// The URL's origin, for logs and metrics labels.
    pub fn target(&self) -> String {
        redacted_target(&self.url)
    }

    /// The configured headers, values marked sensitive; invalid entries (which `validate`
    /// rejects) are skipped.
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(mut v)) if !RESERVED_HEADERS.contains(&n.as_str()) => {
                    v.set_sensitive(true);
                    map.append(n, v);
                }
                _ => tracing::warn!(
                    webhook = %self.target(),
                    header = %name,
                    "invalid webhook header skipped"
                ),
            }
        }
        map
    }
}

/// `scheme://host:port` of a URL, or a placeholder.
fn redacted_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.has_host() => u.origin().ascii_serialization(),
        _ => "<invalid url>".to_string(),
    }
}

/// Delivery counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Events given up on after the last attempt (or at once on a 4xx other than 429).
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Events waiting in the queue now.
    pub queued: u64,
}

impl std::ops::Add for WebhookStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            delivered: self.delivered + o.delivered,
            failed: self.failed + o.failed,
            dropped: self.dropped + o.dropped,
            retries: self.retries + o.retries,
            queued: self.queued + o.queued,
        }
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    /// Set while the queue is full, so that the drop warning is logged once per episode.
    dropping: AtomicBool,
}

/// A webhook's queue, as the bus holds it.
pub(super) struct Sink {
    target: String,
    events: Vec<String>,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
}

impl Sink {
    /// Starts the delivery task of `cfg`. Needs a tokio runtime.
    pub(super) fn spawn(cfg: WebhookConfig, client: reqwest::Client) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let sink = Self {
            target: cfg.target(),
            events: cfg.events.clone(),
            tx,
            counters: counters.clone(),
        };
        tokio::spawn(run(cfg, client, rx, counters));
        sink
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    /// Queues `event` if this webhook wants it; never waits.
    pub(super) fn offer(&self, event: &Event) {
        if !(self.events.is_empty() || self.events.iter().any(|e| e == event.kind.name())) {
            return;
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => {
                if self.counters.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!(webhook = %self.target, "webhook queue accepting events again");
                }
            }
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.counters.dropping.swap(true, Ordering::Relaxed) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "queue full",
                        mpsc::error::TrySendError::Closed(_) => "delivery task gone",
                    };
                    tracing::warn!(
                        webhook = %self.target,
                        capacity = QUEUE_CAPACITY,
                        seq = event.seq,
                        "webhook {why}: dropping events until it accepts again"
                    );
                }
            }
        }
    }

    pub(super) fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        WebhookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            queued: (self.tx.max_capacity() - self.tx.capacity()) as u64,
        }
    }
}

/// Delivers the queue in order until the bus is dropped.
async fn run(
    cfg: WebhookConfig,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Event>,
    counters: Arc<Counters>,
) {
    let headers = cfg.header_map();
    let target = cfg.target();
    while let Some(event) = rx.recv().await {
        match deliver(&client, &cfg, &headers, &event, &counters).await {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    webhook = %target,
                    seq = event.seq,
                    instance = %event.instance,
                    backend = event.backend.as_ref().map_or("", |b| b.name.as_str()),
                    event = event.kind.name(),
                    %reason,
                    "webhook delivery failed"
                );
            }
        }
    }
}

/// The wait before retry `n` (0-based).
pub fn backoff(n: u32) -> Duration {
    RETRY_BACKOFF.delay(n)
}

/// POSTs one event, with retries; the error says why the last attempt failed.
async fn deliver(
    client: &reqwest::Client,
    cfg: &WebhookConfig,
    headers: &HeaderMap,
    event: &Event,
    counters: &Counters,
) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| format!("cannot serialize: {e}"))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let attempts = cfg.max_retries + 1;
    let mut last = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let sent = client
            .post(&cfg.url)
            .timeout(timeout)
            .headers(headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        last = match sent {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(format!("status {} (not retried)", status.as_u16()));
                }
                format!("status {}", status.as_u16())
            }
            Err(e) if e.is_timeout() => format!("timed out after {} ms", cfg.timeout_ms),
            Err(e) => {
                // The URL may hold a token.
                let e = e.without_url();
                format!("connection failed: {}", root_cause(&e))
            }
        };
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
