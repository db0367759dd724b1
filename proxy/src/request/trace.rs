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
//! Until spans are exported (OTLP, a later phase) the proxy is a pass-through participant: it
//! forwards the caller's parent id. With an exporter it will write its own span's id as the
//! parent id, keeping the trace id (README, "Tracing").
//!
//! Cost per request: one header lookup and a 55-byte scan; a started trace adds 192 random
//! bits (the thread's user-space generator), 55 bytes on the stack, one small allocation for
//! the header value and one header insert upstream (two allocations in pingora for the name).

use http::HeaderValue;
use multiverse_common::request_id::hex_digits;
use pingora_http::RequestHeader;

use crate::request::id::shared_value;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Length of a version-00 `traceparent`.
const LEN: usize = 55;

/// The request's trace context.
#[derive(Debug, Clone)]
pub struct Trace {
    traceparent: HeaderValue,
    /// Started here (so it goes upstream in place of whatever the client sent).
    started: bool,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            traceparent: HeaderValue::from_static(""),
            started: false,
        }
    }
}

impl Trace {
    /// The client's `traceparent` when valid, else a new trace sampled as `sample` says.
    pub fn of(req: &RequestHeader, sample: bool) -> Self {
        let mut sent = req.headers.get_all(TRACEPARENT).iter();
        match (sent.next(), sent.next()) {
            (Some(v), None) if valid(v.as_bytes()) => Self {
                traceparent: v.clone(),
                started: false,
            },
            _ => Self::start(sample),
        }
    }

    /// A new trace: random trace id and span id (never all zeros).
    pub fn start(sample: bool) -> Self {
        let trace_id = rand::random::<u128>().max(1);
        let span_id = u128::from(rand::random::<u64>().max(1));
        let mut v = [b'-'; LEN];
        v[..2].copy_from_slice(b"00");
        v[3..35].copy_from_slice(&hex_digits::<32>(trace_id));
        v[36..52].copy_from_slice(&hex_digits::<16>(span_id));
        v[53..].copy_from_slice(if sample { b"01" } else { b"00" });
        Self {
            traceparent: shared_value(v),
            started: true,
        }
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

    /// Puts a started trace on the upstream request (a client's valid one is there already,
    /// with its `tracestate`).
    pub fn write_upstream(&self, req: &mut RequestHeader) -> pingora_error::Result<()> {
        if self.started {
            req.insert_header(TRACEPARENT, self.traceparent.clone())?;
            req.remove_header(TRACESTATE);
        }
        Ok(())
    }
}

/// Whether `v` is a `traceparent` this proxy passes on.
fn valid(v: &[u8]) -> bool {
    if v.len() < LEN || (v.len() > LEN && v.get(LEN) != Some(&b'-')) {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    let (version, trace_id, parent_id, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == LEN)
        && hex(trace_id)
        && nonzero(trace_id)
        && hex(parent_id)
        && nonzero(parent_id)
        && hex(flags)
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
