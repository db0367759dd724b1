//! Everything one request carries through its phases, and the bookkeeping of its attempts.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::ops::drain::ActiveGuard;
use crate::request::auth::{Permit, RateHeaders};
use crate::request::body::Held;
use crate::request::classify::Family;
use crate::request::id::RequestId;
use crate::request::midstream::Forwarded;
use crate::request::observe::InFlight;
use crate::request::pace::Pace;
use crate::request::spans::Phases;
use crate::request::stream_usage::HideUsage;
use crate::request::trace::Trace;
use crate::request::usage::UsageReader;
use crate::routing::keys::ApiKey;
use crate::routing::pick::{Tried, Want};
use crate::routing::table::{Endpoint, ProtoClass, Route, RoutingTable};

/// The per-request context (pingora's `CTX`).
pub struct RequestCtx {
    /// Its `x-request-id` (set first in `request_filter`).
    pub id: RequestId,
    /// Its W3C trace context.
    pub trace: Trace,
    /// The table this request routes by, pinned at its start (retries see the same version).
    pub table: Arc<RoutingTable>,
    pub family: Family,
    /// The model's route, once found.
    pub route: Option<Arc<Route>>,
    pub want: Want,
    /// Body bytes read to find the model.
    pub held: Held,
    /// Body bytes sent upstream in this attempt (for the size limit).
    pub body_bytes: usize,
    pub tried: Tried,
    pub attempts: u32,
    /// Index in `route.endpoints` of the current attempt.
    pub endpoint: Option<usize>,
    /// When the current attempt was sent (the gateway's clock, ms; `lb = "peak_ewma"` only).
    pub attempt_sent_ms: u64,
    /// The current attempt's failure was already counted for outlier detection.
    pub failure_counted: bool,
    pub in_flight: Option<InFlight>,
    /// The endpoint admission reserved a slot on for the first attempt, and its count (freed
    /// if the request ends before it is sent).
    pub admitted: Option<(usize, InFlight)>,
    /// The inference key the request came with (keys mode).
    pub key: Option<Arc<ApiKey>>,
    /// Its admission by the key's limits (counted in flight while held).
    pub permit: Option<Permit>,
    /// The `x-ratelimit-*` headers its responses carry.
    pub rate: Option<RateHeaders>,
    /// The upstream response's body kind, and whether its end went out.
    pub forwarded: Forwarded,
    /// Token counts read from the response (OpenAI routes).
    pub usage: Option<UsageReader>,
    /// The body sent upstream asks for the stream's usage on the client's behalf
    /// (`[usage] request_stream_usage`).
    pub usage_asked: bool,
    /// Hides the usage event of a stream the client did not ask usage for.
    pub hide_usage: Option<HideUsage>,
    /// An SSE response's pacing (time to first token, gaps).
    pub pace: Option<Pace>,
    /// The allowed CORS origin its responses are tagged for (`Origin` echoed).
    pub cors: Option<HeaderValue>,
    /// The phases' times of a traced request (`[tracing] otlp_endpoint`, sampled traces).
    pub phases: Option<Phases>,
    pub started: Instant,
    _active: ActiveGuard,
}

impl RequestCtx {
    /// A request that routes by `table` and counts as active while it lives.
    pub fn new(table: Arc<RoutingTable>, active: ActiveGuard) -> Self {
        RequestCtx {
            id: RequestId::default(),
            trace: Trace::default(),
            table,
            family: Family::Unknown,
            route: None,
            want: Want {
                class: ProtoClass::Http,
                pinned: None,
                affinity: None,
            },
            held: Held::default(),
            body_bytes: 0,
            tried: Tried::default(),
            attempts: 0,
            endpoint: None,
            attempt_sent_ms: 0,
            failure_counted: false,
            in_flight: None,
            admitted: None,
            key: None,
            permit: None,
            rate: None,
            forwarded: Forwarded::default(),
            usage: None,
            usage_asked: false,
            hide_usage: None,
            pace: None,
            cors: None,
            phases: None,
            started: Instant::now(),
            _active: active,
        }
    }

    /// Reads (or makes) the request's id and trace context from its header; with `spans`
    /// (an exporter is on), a sampled trace's phases are timed.
    pub fn identify(&mut self, req: &pingora_http::RequestHeader, sample: bool, spans: bool) {
        self.id = RequestId::of(req);
        self.trace = Trace::of(req, sample);
        if spans {
            self.phases = Phases::begin(&mut self.trace);
        }
    }

    /// The current attempt's endpoint.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        Some(&self.route.as_ref()?.endpoints[self.endpoint?])
    }

    /// Starts an attempt on `route.endpoints[index]`: it is tried, its failure is not counted
    /// yet, and the body held for routing is sent again.
    pub fn begin_attempt(&mut self, index: usize) {
        self.attempts += 1;
        self.endpoint = Some(index);
        self.tried.mark(index);
        self.failure_counted = false;
        self.held.rearm();
        self.body_bytes = self.held.len();
    }

    /// Whether this attempt's failure still has to be counted (true once per attempt).
    pub fn take_failure(&mut self) -> bool {
        !std::mem::replace(&mut self.failure_counted, true)
    }

    /// The model name for metrics and logs ("" before the route is known).
    pub fn model(&self) -> &str {
        self.route.as_ref().map(|r| r.name.as_str()).unwrap_or("")
    }
}
