//! Whether a failed attempt is tried again on another endpoint, and which error ends a request.
//!
//! A request is retried only before any response byte reached the client, on an endpoint it has
//! not tried, within its model's retry budget. Everything else ends in one error, mapped here from
//! pingora's error to the status and message the client sees.

use pingora_core::protocols::http::v1::{INVALID_CHUNK, INVALID_TRAILER_END, PREMATURE_BODY_END};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use crate::pick::{any_eligible, Tried, Want};
use crate::respond::ProxyError;
use crate::table::Route;

/// Whether a failed attempt may be tried again: nothing has reached the client yet, the body
/// can be sent again, the model's retry budget is not spent, and an untried endpoint is left.
pub fn can_retry(
    session: &Session,
    want: &Want,
    route: Option<&Route>,
    tried: Tried,
    attempts: u32,
) -> bool {
    let Some(route) = route else {
        return false;
    };
    session.response_written().is_none()
        && !session.as_ref().retry_buffer_truncated()
        && attempts <= route.policy.max_retries
        && any_eligible(route, tried, want)
}

/// A failure the client caused. It gets a 4xx (or nothing, when the client is gone), is logged
/// at info with a rate limit and counted by [`ClientFault::label`]; ERROR stays for the
/// gateway's own failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad, negative or overflowing chunk size, bad chunk extension or trailer.
    MalformedBody,
    /// The body ended before its declared length.
    TruncatedBody,
    /// A streamed body went over `limits.max_body_bytes`.
    BodyTooLarge,
    /// The client stopped sending (a read from it timed out).
    Timeout,
    /// The client closed or reset its connection.
    Gone,
    /// Any other protocol error of the client's connection (e.g. a bad HTTP/2 frame).
    Protocol,
}

impl ClientFault {
    /// The client's fault in `e`, if it is one: an error of the downstream connection (pingora's
    /// `ErrorSource::Downstream`, which the gateway also sets on the errors it raises for a
    /// client, such as the streamed 413).
    pub fn of(e: &Error) -> Option<ClientFault> {
        if *e.esource() != ErrorSource::Downstream {
            return None;
        }
        let etype = e.etype();
        Some(match etype {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                ClientFault::Gone
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => ClientFault::Timeout,
            ErrorType::HTTPStatus(413) => ClientFault::BodyTooLarge,
            t if *t == INVALID_CHUNK || *t == INVALID_TRAILER_END => ClientFault::MalformedBody,
            t if *t == PREMATURE_BODY_END => ClientFault::TruncatedBody,
            _ => ClientFault::Protocol,
        })
    }

    /// A stable name for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ClientFault::MalformedBody => "malformed_body",
            ClientFault::TruncatedBody => "truncated_body",
            ClientFault::BodyTooLarge => "body_too_large",
            ClientFault::Timeout => "client_timeout",
            ClientFault::Gone => "client_gone",
            ClientFault::Protocol => "protocol_error",
        }
    }

    /// What the client is told; `None` when it is gone.
    pub fn response(self) -> Option<ProxyError> {
        Some(match self {
            ClientFault::MalformedBody => ProxyError::bad_request(
                "invalid_body_encoding",
                "The request body's chunked transfer encoding is malformed (bad, negative or \
                 overflowing chunk size, or a bad chunk extension or trailer)"
                    .into(),
            ),
            ClientFault::TruncatedBody => ProxyError::bad_request(
                "truncated_body",
                "The request body ended before its declared length".into(),
            ),
            ClientFault::BodyTooLarge => ProxyError::too_large_streamed(),
            ClientFault::Timeout => ProxyError::client_timeout(),
            ClientFault::Gone => return None,
            ClientFault::Protocol => ProxyError::bad_request(
                "bad_request",
                "The request could not be read: protocol error on the client connection".into(),
            ),
        })
    }
}

/// The error a failed request answers with; `None` when the client is gone.
///
/// Messages name the problem and never carry pingora's error text (its context holds peer
/// addresses and internal error chains): only static text, the model and the error type name.
pub fn final_error(e: &Error, route: Option<&Route>) -> Option<ProxyError> {
    if let Some(fault) = ClientFault::of(e) {
        return fault.response();
    }
    let model = route.map(|r| r.name.as_str()).unwrap_or("");
    let detail = e.etype().as_str();
    Some(match e.etype() {
        ErrorType::HTTPStatus(503) if route.is_some_and(|r| r.available() == 0) => {
            ProxyError::no_endpoint(model)
        }
        ErrorType::HTTPStatus(413) => ProxyError::too_large_streamed(),
        ErrorType::HTTPStatus(code @ (502 | 503)) => ProxyError::new(
            *code,
            "server_error",
            "upstream_error",
            format!("Every endpoint tried for `{model}` failed (last answered {code})"),
        ),
        ErrorType::HTTPStatus(code) if *code >= 400 => ProxyError::new(
            *code,
            if *code >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            "proxy_error",
            format!(
                "The gateway could not complete the request ({})",
                http::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
            ),
        ),
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => ProxyError::upstream_timeout(detail),
        _ => match e.esource() {
            ErrorSource::Upstream => ProxyError::upstream_failed(detail),
            ErrorSource::Downstream | ErrorSource::Internal | ErrorSource::Unset => {
                ProxyError::new(
                    500,
                    "server_error",
                    "internal_error",
                    format!("Internal proxy error: {detail}"),
                )
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_statuses() {
        let timeout = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(final_error(&timeout, None).map(|e| e.status), Some(504));
        let mut refused = Error::new(ErrorType::ConnectRefused);
        refused.esource = ErrorSource::Upstream;
        assert_eq!(final_error(&refused, None).map(|e| e.status), Some(502));
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.esource = ErrorSource::Downstream;
        assert_eq!(final_error(&gone, None), None);
        let too_big = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(final_error(&too_big, None).map(|e| e.status), Some(413));
        let mut bad_chunk = Error::new(INVALID_CHUNK);
        bad_chunk.esource = ErrorSource::Downstream;
        let err = final_error(&bad_chunk, None).expect("answered");
        assert_eq!((err.status, err.code), (400, "invalid_body_encoding"));
        let mut slow = Error::new(ErrorType::ReadTimedout);
        slow.esource = ErrorSource::Downstream;
        assert_eq!(final_error(&slow, None).map(|e| e.status), Some(408));
    }

    /// Whatever pingora puts in an error's context or cause (peer addresses, inner errors),
    /// none of it reaches the client.
    #[test]
    fn no_message_carries_error_context() {
        let types = [
            ErrorType::ConnectTimedout,
            ErrorType::ConnectRefused,
            ErrorType::ConnectError,
            ErrorType::InvalidHTTPHeader,
            ErrorType::H1Error,
            ErrorType::H2Error,
            ErrorType::InvalidH2,
            ErrorType::ReadError,
            ErrorType::WriteError,
            ErrorType::ReadTimedout,
            ErrorType::ConnectionClosed,
            ErrorType::HTTPStatus(400),
            ErrorType::HTTPStatus(413),
            ErrorType::HTTPStatus(429),
            ErrorType::HTTPStatus(500),
            ErrorType::HTTPStatus(502),
            ErrorType::InternalError,
            ErrorType::UnknownError,
            INVALID_CHUNK,
            INVALID_TRAILER_END,
            PREMATURE_BODY_END,
        ];
        let sources = [
            ErrorSource::Upstream,
            ErrorSource::Downstream,
            ErrorSource::Internal,
            ErrorSource::Unset,
        ];
        for etype in types {
            for source in sources.clone() {
                let cause = std::io::Error::other("inner cause 10.1.2.3:5555");
                let mut e = Error::because(etype.clone(), "context", cause);
                e.esource = source.clone();
                let e = e.more_context("peer: addr: 127.0.0.1:36531, scheme: HTTP");
                let Some(err) = final_error(&e, None) else {
                    continue;
                };
                for leak in [
                    "127.0.0.1",
                    "10.1.2.3",
                    "peer",
                    "context",
                    "cause",
                    "scheme",
                ] {
                    assert!(
                        !err.message.contains(leak),
                        "{etype:?}/{source:?}: `{}` leaks `{leak}`",
                        err.message
                    );
                }
            }
        }
    }
}
