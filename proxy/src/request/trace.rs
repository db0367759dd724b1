//! W3C Trace Context (`traceparent`, `tracestate`) for the request: a valid client
//! `traceparent` goes upstream unchanged (with its `tracestate`), so the backend's spans join
//! the client's trace; when there is none, or it is not valid, the proxy starts a trace (new
//! trace id, new span id, the sampled flag from `[tracing] sample`) so the upstream always
//! sees one. A `tracestate` beside an invalid `traceparent` belongs to no trace and is
//! dropped (W3C: it must not be used without a valid parent).
//!
//! Validation follows the spec: `version-traceid-parentid-flags` in lowercase hex, version not
//! `ff` (version `00`: exactly 55 bytes; a later version: at least 55, the fields read from the
//! first 55), trace id and parent id not all zeros; one header only.
//!
//! Without span export the proxy is a pass-through participant: it forwards the caller's
//! parent id. With `[tracing] otlp_endpoint` it writes its own request span's id as the parent
//! id, keeping the trace id and flags ([`Trace::join`]; `request::spans`), so the backend's
//! spans hang under the proxy's.
//!
//! Cost per request: one header lookup and a 55-byte scan; a started trace adds 192 random
//! bits (the thread's user-space generator), 55 bytes on the stack, one small allocation for
//! the header value and one header insert upstream (a typed name: no parse, no allocation).

use http::HeaderValue;
use multiverse_common::otlp::{parse_traceparent, TraceParent};
use multiverse_common::request_id::hex_digits;
use pingora_http::{RequestHeader, StaticHeaderName};

use crate::request::id::shared_value;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The two names typed once: looked up, inserted and removed without a parse.
static TRACEPARENT_NAME: StaticHeaderName = StaticHeaderName::new(TRACEPARENT);
static TRACESTATE_NAME: StaticHeaderName = StaticHeaderName::new(TRACESTATE);

/// Length of a version-00 `traceparent`.
const LEN: usize = multiverse_common::otlp::TRACEPARENT_LEN;

/// The request's trace context.
#[derive(Debug, Clone)]
pub struct Trace {
    traceparent: HeaderValue,
    /// Started here (so it goes upstream in place of whatever the client sent).
    started: bool,
    /// Carries the proxy's own span id as the parent id (started, or joined).
    ours: bool,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            traceparent: HeaderValue::from_static(""),
            started: false,
            ours: false,
        }
    }
}

impl Trace {
    /// The client's `traceparent` when valid, else a new trace sampled as `sample` says.
    pub fn of(req: &RequestHeader, sample: bool) -> Self {
        let mut sent = req.headers.get_all(TRACEPARENT_NAME.name()).iter();
        match (sent.next(), sent.next()) {
            (Some(v), None) if valid(v.as_bytes()) => Self {
                traceparent: v.clone(),
                started: false,
                ours: false,
            },
            _ => Self::start(sample),
        }
    }

    /// A new trace: random trace id and span id (never all zeros).
    pub fn start(sample: bool) -> Self {
        let trace_id = rand::random::<u128>().max(1);
        let span_id = rand::random::<u64>().max(1);
        Self {
            traceparent: shared_value(format(trace_id, span_id, sample)),
            started: true,
            ours: true,
        }
    }

    /// Makes `span_id` (the proxy's request span) the parent id sent upstream, keeping the
    /// trace id and the sampled flag (a started trace's span id is the proxy's already).
    /// Costs one small allocation for the new header value.
    pub fn join(&mut self, span_id: u64) {
        if let Some(p) = self.parsed() {
            self.traceparent = shared_value(format(p.trace_id, span_id, p.sampled));
            self.ours = true;
        }
    }

    /// Its fields (`None` before the request was read).
    pub fn parsed(&self) -> Option<TraceParent> {
        parse_traceparent(self.traceparent.as_bytes())
    }

    /// The trace id (32 hex digits; empty before the request was read).
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|t| t.get(3..35))
            .unwrap_or("")
    }

    pub fn traceparent(&self) -> &HeaderValue {
        &self.traceparent
    }

    /// Whether the proxy started this trace.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Puts a started or joined trace on the upstream request (a client's valid one is there
    /// already, with its `tracestate`, which a joined one keeps).
    pub fn write_upstream(&self, req: &mut RequestHeader) -> pingora_error::Result<()> {
        if self.ours {
            req.insert_header(&TRACEPARENT_NAME, self.traceparent.clone())?;
        }
        if self.started {
            req.remove_header(TRACESTATE_NAME.name());
        }
        Ok(())
    }
}

/// A version-00 `traceparent`.
fn format(trace_id: u128, span_id: u64, sampled: bool) -> [u8; LEN] {
    let mut v = [b'-'; LEN];
    v[..2].copy_from_slice(b"00");
    v[3..35].copy_from_slice(&hex_digits::<32>(trace_id));
    v[36..52].copy_from_slice(&hex_digits::<16>(u128::from(span_id)));
    v[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    v
}

/// Whether `v` is a `traceparent` this proxy passes on.
fn valid(v: &[u8]) -> bool {
    parse_traceparent(v).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn req(values: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/embeddings", None).expect("req");
        for v in values {
            r.append_header(TRACEPARENT, *v).expect("append");
        }
        r.append_header(TRACESTATE, "vendor=x").expect("append");
        r
    }

    #[test]
    fn a_valid_traceparent_passes_unchanged_with_its_tracestate() {
        let t = Trace::of(&req(&[GOOD]), false);
        assert!(!t.started());
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut up = req(&[GOOD]);
        t.write_upstream(&mut up).expect("write");
        assert_eq!(up.headers[TRACEPARENT], GOOD);
        assert_eq!(up.headers[TRACESTATE], "vendor=x");
        // A later version with more fields is read from its first 55 bytes.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(!Trace::of(&req(&[later]), false).started());
    }

    #[test]
    fn a_joined_trace_goes_upstream_with_the_proxys_span_as_parent() {
        let mut t = Trace::of(&req(&[GOOD]), false);
        t.join(0xabc);
        let mut up = req(&[GOOD]);
        t.write_upstream(&mut up).expect("write");
        assert_eq!(
            up.headers[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        assert_eq!(
            up.headers[TRACESTATE], "vendor=x",
            "the client's tracestate stays"
        );
        let p = t.parsed().expect("valid");
        assert_eq!(
            (p.trace_id, p.parent_id),
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0xabc)
        );
    }

    #[test]
    fn invalid_or_missing_ones_start_a_trace() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            let t = Trace::of(&req(&[b]), true);
            assert!(t.started(), "{b:?}");
            let mut up = req(&[b]);
            t.write_upstream(&mut up).expect("write");
            let sent = up.headers[TRACEPARENT].to_str().expect("ascii");
            assert!(valid(sent.as_bytes()), "{sent}");
            assert!(sent.ends_with("-01"), "sampled as configured: {sent}");
            assert!(up.headers.get(TRACESTATE).is_none());
        }
        // Two headers are not one trace.
        assert!(Trace::of(&req(&[GOOD, GOOD]), false).started());
        let t = Trace::of(
            &RequestHeader::build("GET", b"/", None).expect("req"),
            false,
        );
        assert!(t.started());
        assert!(t.traceparent().to_str().expect("ascii").ends_with("-00"));
        assert_ne!(t.trace_id(), Trace::start(false).trace_id());
    }
}
