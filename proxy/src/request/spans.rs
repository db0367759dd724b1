//! The request's OTLP spans (`[tracing] otlp_endpoint`): the phases' times are noted as the
//! request passes them (an `Instant` each, in the request's context) and, once it is logged,
//! turned into spans handed to the exporter's queue (`multiverse_common::otlp`), which sends
//! them in batches from its own thread.
//!
//! The spans, all in the trace of the client's `traceparent` (or of the one the proxy started,
//! the one sent upstream):
//! - `proxy.request` (server): the whole request; its id is the parent id sent upstream.
//!   Attributes: `multiverse.request_id`, `multiverse.model`, `multiverse.endpoint`,
//!   `http.request.method`, `url.path`, `http.response.status_code`, `multiverse.attempts`;
//!   status error for a 5xx or a failed request.
//! - `proxy.route`: reading the request, finding its model (body scan) and route, admission.
//! - `proxy.upstream.connect` (client): the last attempt's connection (`network.reused`).
//! - `proxy.upstream.first_byte`: from connected to the upstream's response header.
//! - `proxy.response`: from that header to the end of the response.
//!
//! Only sampled traces are recorded: a client's `traceparent` with the sampled flag, or a
//! started trace drawn by `[tracing] sample_ratio`.
//!
//! Cost when off: `phases` stays `None`, one branch per phase. When on, per sampled request:
//! one header value (the joined `traceparent`), five spans with their attribute vectors (a few
//! dozen small allocations, made in `logging`, after the response is sent) and a queue send
//! each.

use std::time::{Instant, SystemTime};

use multiverse_common::otlp::{new_span_id, Ids, KeyValue, Kind, Otlp, Span};

use crate::request::trace::Trace;

/// The times of a traced request's phases.
#[derive(Debug, Clone)]
pub struct Phases {
    trace_id: u128,
    span_id: u64,
    /// The client's span (0 for a started trace).
    parent_id: u64,
    wall: SystemTime,
    start: Instant,
    routed: Option<Instant>,
    connecting: Option<Instant>,
    connected: Option<Instant>,
    reused: bool,
    first_byte: Option<Instant>,
}

impl Phases {
    /// Begins the phases of a request whose trace is sampled (joining a client's trace, so the
    /// upstream's parent is the proxy's span); `None` for an unsampled one.
    pub fn begin(trace: &mut Trace) -> Option<Self> {
        let p = trace.parsed().filter(|p| p.sampled)?;
        let (span_id, parent_id) = if trace.started() {
            (p.parent_id, 0)
        } else {
            let own = new_span_id();
            trace.join(own);
            (own, p.parent_id)
        };
        Some(Self {
            trace_id: p.trace_id,
            span_id,
            parent_id,
            wall: SystemTime::now(),
            start: Instant::now(),
            routed: None,
            connecting: None,
            connected: None,
            reused: false,
            first_byte: None,
        })
    }

    /// The model and route are known (or the request was answered by the proxy).
    pub fn routed(&mut self) {
        self.routed.get_or_insert_with(Instant::now);
    }

    /// An attempt starts (a retry's replaces the previous one's times).
    pub fn connecting(&mut self) {
        self.connecting = Some(Instant::now());
        self.connected = None;
        self.first_byte = None;
    }

    pub fn connected(&mut self, reused: bool) {
        self.connected = Some(Instant::now());
        self.reused = reused;
    }

    /// The upstream's response header arrived.
    pub fn first_byte(&mut self) {
        self.first_byte = Some(Instant::now());
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.start)
    }

    fn ids(&self, child: bool) -> Ids {
        if child {
            Ids {
                trace_id: self.trace_id,
                span_id: new_span_id(),
                parent_id: self.span_id,
                parent_remote: false,
            }
        } else {
            Ids {
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_id: self.parent_id,
                parent_remote: self.parent_id != 0,
            }
        }
    }
}

/// What the request span says about the request.
pub struct Outcome<'a> {
    pub request_id: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub attempts: u32,
    pub failed: bool,
}

/// Records the request's spans (phases it did not reach have none).
pub fn export(otlp: &Otlp, p: &Phases, o: &Outcome<'_>) {
    let end = Instant::now();
    let child = |name, kind, from: Instant, to: Instant, attributes| Span {
        name,
        kind,
        ids: p.ids(true),
        start: p.at(from),
        end: p.at(to),
        attributes,
        error: false,
    };
    otlp.record(Span {
        name: "proxy.request",
        kind: Kind::Server,
        ids: p.ids(false),
        start: p.wall,
        end: p.at(end),
        attributes: vec![
            KeyValue::new("multiverse.request_id", o.request_id.to_string()),
            KeyValue::new("multiverse.model", o.model.to_string()),
            KeyValue::new("multiverse.endpoint", o.endpoint.to_string()),
            KeyValue::new("http.request.method", o.method.to_string()),
            KeyValue::new("url.path", o.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(o.status)),
            KeyValue::new("multiverse.attempts", i64::from(o.attempts)),
        ],
        error: o.failed || o.status >= 500 || o.status == 0,
    });
    let routed = p.routed.unwrap_or(end);
    otlp.record(child(
        "proxy.route",
        Kind::Internal,
        p.start,
        routed,
        vec![KeyValue::new("multiverse.model", o.model.to_string())],
    ));
    let Some(connecting) = p.connecting else {
        return;
    };
    let connected = p.connected.unwrap_or(end);
    otlp.record(child(
        "proxy.upstream.connect",
        Kind::Client,
        connecting,
        connected,
        vec![
            KeyValue::new("multiverse.endpoint", o.endpoint.to_string()),
            KeyValue::new("network.reused", p.reused),
        ],
    ));
    let Some(connected) = p.connected else {
        return;
    };
    let first_byte = p.first_byte.unwrap_or(end);
    otlp.record(child(
        "proxy.upstream.first_byte",
        Kind::Internal,
        connected,
        first_byte,
        Vec::new(),
    ));
    if let Some(first_byte) = p.first_byte {
        otlp.record(child(
            "proxy.response",
            Kind::Internal,
            first_byte,
            end,
            vec![KeyValue::new(
                "http.response.status_code",
                i64::from(o.status),
            )],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn trace(traceparent: Option<&str>) -> Trace {
        let mut r = RequestHeader::build("POST", b"/v1/embeddings", None).expect("req");
        if let Some(v) = traceparent {
            r.append_header("traceparent", v).expect("append");
        }
        Trace::of(&r, true)
    }

    #[test]
    fn a_clients_trace_is_joined_and_a_started_one_is_the_proxys_own() {
        let mut t = trace(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let p = Phases::begin(&mut t).expect("sampled");
        let ids = p.ids(false);
        assert_eq!(ids.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ids.parent_id, 0x00f067aa0ba902b7);
        assert!(ids.parent_remote);
        assert_eq!(t.parsed().expect("valid").parent_id, ids.span_id);
        let child = p.ids(true);
        assert_eq!(
            (child.trace_id, child.parent_id),
            (ids.trace_id, ids.span_id)
        );

        let mut started = trace(None);
        let sent = started.parsed().expect("valid");
        let p = Phases::begin(&mut started).expect("sampled");
        let ids = p.ids(false);
        assert_eq!((ids.trace_id, ids.span_id), (sent.trace_id, sent.parent_id));
        assert_eq!(ids.parent_id, 0);
        assert!(!ids.parent_remote);
    }

    #[test]
    fn unsampled_traces_record_nothing() {
        let mut t = trace(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(Phases::begin(&mut t).is_none());
        assert!(t.parsed().expect("valid").parent_id == 0x00f067aa0ba902b7);
    }
}
