//! The request path's one error type and its one mapping to what a client is told.
//!
//! Every way a request can end without the upstream's answer is a [`ProxyError`] variant; the
//! variant alone decides the HTTP status, the OpenAI `type`, the stable `code`, the gRPC status
//! and the message, and [`crate::request::respond::send_error`] writes it in the route family's
//! format. Inside pingora's phases failures travel as pingora errors: the gateway's own ride as
//! their typed cause ([`ProxyError::into_pingora`]), and [`ProxyError::from_pingora`] — the one
//! place a pingora error is classified — gets them back unchanged, or classifies pingora's
//! (connect errors, timeouts, the client's own faults — [`ClientFault`]). No status number is
//! ever turned back into an error, and no message carries pingora's error text (its context
//! holds peer addresses and internal error chains): only static text, the model, a limit and an
//! error type's name.

use std::time::Duration;

use pingora_core::protocols::http::v1::{
    INVALID_CHUNK, INVALID_TRAILER_END, PREMATURE_BODY_END, REQUEST_HEADER_TOO_LARGE,
    TOO_MANY_REQUEST_HEADERS,
};
use pingora_error::{Error, ErrorSource, ErrorType};

use crate::request::model_scan::ScanError;
use crate::routing::table::Route;

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    // --- the request cannot be served as sent (4xx) ---
    #[error("No route for {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error("The model `{0}` does not exist or is not served by this gateway")]
    UnknownModel(String),
    #[error("No endpoint `{0}` (x-instance) is in the routing table")]
    UnknownInstance(String),
    #[error(
        "Name the model with the x-model header (or metadata): more or fewer than one model of \
         this kind is served"
    )]
    ModelRequired,
    /// The body cannot be routed (no `model`, not JSON, ...).
    #[error("{0}")]
    InvalidBody(ScanError),
    /// A declared or read-for-routing body over the limit.
    #[error("Request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// A streamed body that went over the limit on its way upstream.
    #[error("Request body exceeds the gateway's limit")]
    TooLargeStreamed,
    /// Bad, negative or overflowing chunk size, bad chunk extension or trailer.
    #[error(
        "The request body's chunked transfer encoding is malformed (bad, negative or \
         overflowing chunk size, or a bad chunk extension or trailer)"
    )]
    MalformedBody,
    #[error("The request body ended before its declared length")]
    TruncatedBody,
    /// Any other protocol error of the client's connection (e.g. a bad HTTP/2 frame).
    #[error("The request could not be read: protocol error on the client connection")]
    ClientProtocol,
    /// A read from the client timed out while its body was expected.
    #[error("The client stopped sending the request")]
    ClientTimeout,
    /// The request line or a header cannot be parsed (answered before any route is known).
    #[error("The request is not valid HTTP: malformed request line or header")]
    MalformedHeader,
    /// The request header did not arrive within `clients.header_timeout_ms`.
    #[error("The request header did not arrive within {} ms", .0.as_millis())]
    HeaderTimeout(Duration),
    /// The request header is over `clients.max_header_bytes`.
    #[error("The request header exceeds the limit of {0} bytes")]
    HeaderTooLarge(usize),
    /// The request carries more than `clients.max_headers` header fields.
    #[error("The request carries more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("CONNECT is not supported")]
    ConnectNotAllowed,
    /// Keys are required and none was sent.
    #[error(
        "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or the \
         `api-key` / `x-api-key` header)"
    )]
    MissingApiKey,
    /// Unknown or revoked (the two are indistinguishable by design).
    #[error("Incorrect API key provided")]
    InvalidApiKey,
    #[error("The API key has expired")]
    ExpiredApiKey,
    #[error("The API key may not use the model `{0}`")]
    ModelNotAllowed(String),
    /// Over one of the key's limits; the client may try again after `retry_after`.
    #[error("Rate limit reached for {limit}: retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited { limit: Limit, retry_after: Duration },
    /// Every endpoint of the model is at its `max_concurrent` and its queue is full (or the
    /// request was pushed out of it by a higher-priority one).
    #[error("Every endpoint of `{0}` is busy and its queue is full: retry later")]
    QueueFull(String),
    /// Waited in the model's queue for its `queue_timeout_ms` without a slot.
    #[error("Every endpoint of `{0}` stayed busy for the queue's timeout: retry later")]
    QueueTimeout(String),

    // --- the gateway cannot serve it (5xx) ---
    #[error("The gateway has not received its routing table yet")]
    NotReady,
    #[error("No healthy endpoint is available for model `{0}`")]
    NoHealthyEndpoint(String),
    /// The last endpoint tried answered 502/503, and no other is left to try.
    #[error("Every endpoint tried for `{model}` failed (last answered {status})")]
    AllEndpointsFailed { model: String, status: u16 },
    #[error("The model server did not answer in time: {0}")]
    UpstreamTimeout(&'static str),
    #[error("The model server failed: {0}")]
    UpstreamFailed(&'static str),
    /// An HTTP status raised without one of the causes above.
    #[error("The gateway could not complete the request ({})", reason(*.status))]
    Status { status: u16 },
    #[error("Internal proxy error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        use ProxyError::*;
        match self {
            UnknownRoute { .. } | UnknownModel(_) | UnknownInstance(_) => 404,
            ModelRequired | InvalidBody(_) | MalformedBody | TruncatedBody | ClientProtocol
            | MalformedHeader => 400,
            ClientTimeout | HeaderTimeout(_) => 408,
            ConnectNotAllowed => 405,
            MissingApiKey | InvalidApiKey | ExpiredApiKey => 401,
            ModelNotAllowed(_) => 403,
            RateLimited { .. } | QueueFull(_) | QueueTimeout(_) => 429,
            TooLarge(_) | TooLargeStreamed => 413,
            HeaderTooLarge(_) | TooManyHeaders(_) => 431,
            NotReady | NoHealthyEndpoint(_) => 503,
            AllEndpointsFailed { status, .. } | Status { status } => *status,
            UpstreamTimeout(_) => 504,
            UpstreamFailed(_) => 502,
            Internal(_) => 500,
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::RateLimited { limit, .. } => return limit.kind(),
            // As OpenAI types its own request-rate 429s.
            ProxyError::QueueFull(_) | ProxyError::QueueTimeout(_) => return "requests",
            _ => {}
        }
        if self.status() >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    /// The stable, machine-readable `code` (OpenAI `code`, TEI `error_type`).
    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            UnknownRoute { .. } => "unknown_route",
            UnknownModel(_) => "model_not_found",
            UnknownInstance(_) => "instance_not_found",
            ModelRequired => "model_required",
            InvalidBody(ScanError::Missing) => "missing_model",
            InvalidBody(ScanError::ModelNotString | ScanError::ModelTooLong) => "invalid_model",
            InvalidBody(ScanError::Malformed(_) | ScanError::NotAnObject) => "invalid_json",
            TooLarge(_) | TooLargeStreamed => "request_too_large",
            MalformedBody => "invalid_body_encoding",
            TruncatedBody => "truncated_body",
            ClientProtocol => "bad_request",
            ClientTimeout | HeaderTimeout(_) => "request_timeout",
            MalformedHeader => "invalid_request",
            HeaderTooLarge(_) => "request_header_too_large",
            TooManyHeaders(_) => "too_many_headers",
            ConnectNotAllowed => "method_not_allowed",
            MissingApiKey | InvalidApiKey => "invalid_api_key",
            ExpiredApiKey => "expired_api_key",
            ModelNotAllowed(_) => "model_not_allowed",
            RateLimited { .. } => "rate_limit_exceeded",
            QueueFull(_) => "queue_full",
            QueueTimeout(_) => "queue_timeout",
            NotReady => "not_ready",
            NoHealthyEndpoint(_) => "no_healthy_endpoint",
            AllEndpointsFailed { .. } | UpstreamFailed(_) => "upstream_error",
            UpstreamTimeout(_) => "upstream_timeout",
            Status { .. } => "proxy_error",
            Internal(_) => "internal_error",
        }
    }

    /// The gRPC status code (as Envoy maps HTTP statuses).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            413 | 429 | 431 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            501 => Code::Unimplemented,
            _ => Code::Internal,
        }
    }

    /// This error as a pingora error (status `etype`, this error as its cause), to leave a
    /// pingora phase with; [`from_pingora`](Self::from_pingora) returns it unchanged.
    pub fn into_pingora(self) -> Box<Error> {
        let status = self.status();
        Error::because(
            ErrorType::HTTPStatus(status),
            "request ended by the gateway",
            self,
        )
    }

    /// The gateway's own error that `e` carries, if it is one.
    pub fn raised(e: &Error) -> Option<&ProxyError> {
        e.root_cause().downcast_ref::<ProxyError>()
    }

    /// The error a failed request answers with; `None` when nothing can be written (the client
    /// is gone). The gateway's own errors come back as raised; pingora's are classified here.
    pub fn from_pingora(e: &Error, route: Option<&Route>) -> Option<ProxyError> {
        if let Some(own) = Self::raised(e) {
            return Some(own.clone());
        }
        if let Some(fault) = ClientFault::of(e) {
            return fault.response();
        }
        let detail = e.etype().as_str();
        Some(match e.etype() {
            ErrorType::HTTPStatus(503) if route.is_some_and(|r| r.available() == 0) => {
                ProxyError::NoHealthyEndpoint(route.map(|r| r.name.clone()).unwrap_or_default())
            }
            ErrorType::HTTPStatus(status) if *status >= 400 => {
                ProxyError::Status { status: *status }
            }
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout => ProxyError::UpstreamTimeout(detail),
            _ => match e.esource() {
                ErrorSource::Upstream => ProxyError::UpstreamFailed(detail),
                // Downstream errors are all client faults, answered above.
                ErrorSource::Downstream | ErrorSource::Internal | ErrorSource::Unset => {
                    ProxyError::Internal(detail)
                }
            },
        })
    }
}

/// Which of a key's limits a request went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Concurrent,
    /// `[limits] per_ip_rpm`, the client address's.
    ClientAddress,
    /// Every endpoint of the model that could take it is over its `max_requests_per_sec`.
    EndpointRate,
}

impl Limit {
    /// The OpenAI error `type` of a 429 (`requests` / `tokens`, as OpenAI names them).
    pub fn kind(self) -> &'static str {
        match self {
            Limit::Requests | Limit::Concurrent | Limit::ClientAddress | Limit::EndpointRate => {
                "requests"
            }
            Limit::Tokens => "tokens",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Requests => "requests per minute",
            Limit::Tokens => "tokens per minute",
            Limit::Concurrent => "concurrent requests",
            Limit::ClientAddress => "requests per minute from your address",
            Limit::EndpointRate => "requests per second of this model's endpoints",
        })
    }
}

/// Whole seconds to wait, rounded up (what `Retry-After` says).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An HTTP status's reason phrase, for messages.
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
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
    /// The request header cannot be parsed.
    MalformedHeader,
    /// The request header is over `clients.max_header_bytes`.
    HeaderTooLarge,
    /// The request has more than `clients.max_headers` header fields.
    TooManyHeaders,
    /// The request header did not arrive within `clients.header_timeout_ms`.
    HeaderTimeout,
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
            ClientFault::MalformedHeader => "malformed_header",
            ClientFault::HeaderTooLarge => "header_too_large",
            ClientFault::TooManyHeaders => "too_many_headers",
            ClientFault::HeaderTimeout => "header_timeout",
        }
    }

    /// What the client is told; `None` when it is gone.
    pub fn response(self) -> Option<ProxyError> {
        Some(match self {
            ClientFault::MalformedBody => ProxyError::MalformedBody,
            ClientFault::TruncatedBody => ProxyError::TruncatedBody,
            ClientFault::BodyTooLarge => ProxyError::TooLargeStreamed,
            ClientFault::Timeout => ProxyError::ClientTimeout,
            ClientFault::Gone => return None,
            ClientFault::Protocol => ProxyError::ClientProtocol,
            // Answered before any phase, from the gateway's prebuilt bodies (pingora's 400,
            // 431 and 408), or in `request_filter` (too many HTTP/2 header fields).
            ClientFault::MalformedHeader
            | ClientFault::HeaderTooLarge
            | ClientFault::TooManyHeaders
            | ClientFault::HeaderTimeout => return None,
        })
    }

    /// The client's fault in a failed read of a request header (before any phase; a client
    /// that merely closed an idle connection is no failure).
    pub fn of_header(e: &Error) -> ClientFault {
        match e.etype() {
            t if *t == REQUEST_HEADER_TOO_LARGE => ClientFault::HeaderTooLarge,
            t if *t == TOO_MANY_REQUEST_HEADERS => ClientFault::TooManyHeaders,
            ErrorType::InvalidHTTPHeader => ClientFault::MalformedHeader,
            ErrorType::ReadTimedout => ClientFault::HeaderTimeout,
            ErrorType::ReadError | ErrorType::ConnectionClosed => ClientFault::Gone,
            _ => ClientFault::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_errors_map_to_statuses() {
        let status = |e: &Error| ProxyError::from_pingora(e, None).map(|e| e.status());
        assert_eq!(status(&Error::new(ErrorType::ConnectTimedout)), Some(504));
        let mut refused = Error::new(ErrorType::ConnectRefused);
        refused.esource = ErrorSource::Upstream;
        assert_eq!(status(&refused), Some(502));
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.esource = ErrorSource::Downstream;
        assert_eq!(ProxyError::from_pingora(&gone, None), None);
        assert_eq!(status(&Error::new(ErrorType::InternalError)), Some(500));
        assert_eq!(status(&Error::new(ErrorType::HTTPStatus(413))), Some(413));
        let mut bad_chunk = Error::new(INVALID_CHUNK);
        bad_chunk.esource = ErrorSource::Downstream;
        let err = ProxyError::from_pingora(&bad_chunk, None).expect("answered");
        assert_eq!((err.status(), err.code()), (400, "invalid_body_encoding"));
        let mut slow = Error::new(ErrorType::ReadTimedout);
        slow.esource = ErrorSource::Downstream;
        assert_eq!(status(&slow), Some(408));
        assert_eq!(ClientFault::of(&slow), Some(ClientFault::Timeout));
        assert_eq!(ClientFault::of(&refused), None, "the upstream's failure");
        // The streamed 413 the gateway raises counts as the client's fault.
        let too_big = ProxyError::TooLargeStreamed.into_pingora().into_down();
        assert_eq!(ClientFault::of(&too_big), Some(ClientFault::BodyTooLarge));
        assert_eq!(status(&too_big), Some(413));
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
                let Some(err) = ProxyError::from_pingora(&e, None) else {
                    continue;
                };
                let message = err.to_string();
                for leak in [
                    "127.0.0.1",
                    "10.1.2.3",
                    "peer",
                    "context",
                    "cause",
                    "scheme",
                ] {
                    assert!(
                        !message.contains(leak),
                        "{etype:?}/{source:?}: `{message}` leaks `{leak}`"
                    );
                }
            }
        }
    }

    #[test]
    fn own_errors_come_back_unchanged_through_pingora_and_its_context() {
        for err in [
            ProxyError::TooLargeStreamed,
            ProxyError::NoHealthyEndpoint("m".into()),
            ProxyError::AllEndpointsFailed {
                model: "m".into(),
                status: 502,
            },
            ProxyError::InvalidBody(ScanError::Missing),
        ] {
            let raised = err.clone().into_pingora();
            assert_eq!(raised.etype(), &ErrorType::HTTPStatus(err.status()));
            // error_while_proxy wraps errors in more context; the cause survives.
            let wrapped = raised.more_context("peer: 127.0.0.1:1");
            assert_eq!(ProxyError::from_pingora(&wrapped, None), Some(err));
        }
    }

    #[test]
    fn every_variant_has_its_status_code_and_kind() {
        let cases = [
            (ProxyError::UnknownModel("x".into()), 404, "model_not_found"),
            (ProxyError::ModelRequired, 400, "model_required"),
            (
                ProxyError::InvalidBody(ScanError::ModelTooLong),
                400,
                "invalid_model",
            ),
            (
                ProxyError::InvalidBody(ScanError::NotAnObject),
                400,
                "invalid_json",
            ),
            (ProxyError::TooLarge(10), 413, "request_too_large"),
            (ProxyError::NotReady, 503, "not_ready"),
            (ProxyError::UpstreamTimeout("t"), 504, "upstream_timeout"),
            (ProxyError::UpstreamFailed("f"), 502, "upstream_error"),
            (ProxyError::Internal("i"), 500, "internal_error"),
            (ProxyError::MalformedBody, 400, "invalid_body_encoding"),
            (ProxyError::TruncatedBody, 400, "truncated_body"),
            (ProxyError::ClientProtocol, 400, "bad_request"),
            (ProxyError::ClientTimeout, 408, "request_timeout"),
            (ProxyError::MalformedHeader, 400, "invalid_request"),
            (
                ProxyError::HeaderTimeout(Duration::from_secs(10)),
                408,
                "request_timeout",
            ),
            (ProxyError::ConnectNotAllowed, 405, "method_not_allowed"),
            (ProxyError::Status { status: 502 }, 502, "proxy_error"),
        ];
        for (err, status, code) in cases {
            assert_eq!((err.status(), err.code()), (status, code), "{err:?}");
            let kind = if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            };
            assert_eq!(err.kind(), kind, "{err:?}");
        }
        assert_eq!(
            ProxyError::UnknownModel("x".into()).grpc_code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            ProxyError::NoHealthyEndpoint("m".into()).grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            ProxyError::UpstreamTimeout("t").grpc_code(),
            tonic::Code::DeadlineExceeded
        );
        for queued in [
            ProxyError::QueueFull("m".into()),
            ProxyError::QueueTimeout("m".into()),
        ] {
            assert_eq!((queued.status(), queued.kind()), (429, "requests"));
            assert_eq!(queued.grpc_code(), tonic::Code::ResourceExhausted);
        }
        assert_eq!(ProxyError::QueueFull("m".into()).code(), "queue_full");
        assert_eq!(ProxyError::QueueTimeout("m".into()).code(), "queue_timeout");
        assert_eq!(
            ProxyError::HeaderTimeout(Duration::from_millis(1500)).to_string(),
            "The request header did not arrive within 1500 ms"
        );
        assert_eq!(
            ProxyError::Status { status: 502 }.to_string(),
            "The gateway could not complete the request (Bad Gateway)"
        );
    }
}
