//! A response whose upstream fails after its header reached the client (the backend died,
//! reset the connection or stalled past the idle timeout before the body's end). The status is
//! gone, so the proxy says so in the body's own terms, and never fakes a complete answer:
//!
//! - SSE (`text/event-stream`, OpenAI streams): a last event
//!   `data: {"error":{"message","type":"upstream_error","code","endpoint"}}` (OpenAI's error
//!   shape, naming the endpoint that failed), then a clean end of the body (the terminating
//!   chunk, or END_STREAM on h2). No `data: [DONE]`: the client knows the answer is cut.
//! - gRPC (`application/grpc*`): trailers with `grpc-status: 14` (UNAVAILABLE) and a message.
//! - any other body: nothing is written; the connection is closed without the body's end
//!   (no terminating chunk, or fewer bytes than its Content-Length), so no client can take
//!   what arrived for a complete body.
//!
//! Each is counted in `upstream_midstream_failures_total{model,endpoint,body}` and logged with
//! the request's id. Cost on the request path: one header lookup (`content-type`) per response.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::json;

use crate::request::error::ProxyError;

/// What kind of body a response has, for ending it after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    #[default]
    Http,
    Sse,
    Grpc,
}

impl BodyKind {
    /// The kind of the response about to be forwarded.
    pub fn of(resp: &ResponseHeader) -> Self {
        let Some(ct) = resp.headers.get(header::CONTENT_TYPE) else {
            return BodyKind::Http;
        };
        let ct = ct.as_bytes();
        let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"text/event-stream") {
            BodyKind::Sse
        } else if starts(b"application/grpc") {
            BodyKind::Grpc
        } else {
            BodyKind::Http
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BodyKind::Http => "http",
            BodyKind::Sse => "sse",
            BodyKind::Grpc => "grpc",
        }
    }
}

/// What the proxy has forwarded of the upstream's response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded {
    pub kind: BodyKind,
    /// Its body's end went to the client: a later failure cuts nothing.
    pub ended: bool,
}

/// The SSE event that ends a cut stream.
pub fn sse_error_event(err: &ProxyError, endpoint: &str) -> Bytes {
    let v = json!({
        "error": {
            "message": format!("{err} (the stream was cut after it had started; it is incomplete)"),
            "type": "upstream_error",
            "param": null,
            "code": err.code(),
            "endpoint": endpoint,
        }
    });
    Bytes::from(format!("data: {v}\n\n"))
}

/// Ends the response of `kind` after `err`, as the module says. `Ok(true)`: the client's
/// stream was ended cleanly with the error; `Ok(false)`: nothing could be said (a plain body,
/// or a body already complete), the connection is to be closed.
pub async fn end(
    session: &mut Session,
    forwarded: Forwarded,
    err: &ProxyError,
    endpoint: &str,
) -> Result<bool> {
    if forwarded.ended {
        return Ok(false);
    }
    match forwarded.kind {
        BodyKind::Http => Ok(false),
        BodyKind::Sse => {
            let event = sse_error_event(err, endpoint);
            session.write_response_body(Some(event), true).await?;
            Ok(true)
        }
        BodyKind::Grpc => {
            let mut trailers = HeaderMap::with_capacity(2);
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            let message = format!("upstream endpoint {endpoint} failed mid-stream: {err}");
            let message = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
            if let Ok(v) = HeaderValue::from_str(&message) {
                trailers.insert("grpc-message", v);
            }
            session
                .downstream_session
                .write_response_trailers(trailers)
                .await?;
            Ok(true)
        }
    }
}

/// Bytes of a `grpc-message` that must be percent-encoded (gRPC over HTTP/2 spec).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_kinds_from_content_type() {
        let kind = |ct: Option<&str>| {
            let mut r = ResponseHeader::build(200, None).expect("resp");
            if let Some(ct) = ct {
                r.insert_header(header::CONTENT_TYPE, ct).expect("ct");
            }
            BodyKind::of(&r)
        };
        assert_eq!(
            kind(Some("text/event-stream; charset=utf-8")),
            BodyKind::Sse
        );
        assert_eq!(kind(Some("Text/Event-Stream")), BodyKind::Sse);
        assert_eq!(kind(Some("application/grpc+proto")), BodyKind::Grpc);
        assert_eq!(kind(Some("application/json")), BodyKind::Http);
        assert_eq!(kind(None), BodyKind::Http);
    }

    #[test]
    fn the_sse_error_event_is_openai_shaped_and_names_the_endpoint() {
        let event = sse_error_event(&ProxyError::UpstreamFailed("ConnectionClosed"), "ep-1");
        let text = std::str::from_utf8(&event).expect("utf8");
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one SSE event");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["code"], "upstream_error");
        assert_eq!(v["error"]["endpoint"], "ep-1");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ConnectionClosed")));
    }
}
