//! Whether a failed attempt is tried again on another endpoint, and which error ends a request.
//!
//! A request is retried only before any response byte reached the client, on an endpoint it has
//! not tried, within its model's retry budget. Everything else ends in one error, mapped here from
//! pingora's error to the status and message the client sees.

use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use crate::request::respond::ProxyError;
use crate::routing::pick::{any_eligible, Tried, Want};
use crate::routing::table::Route;

/// Whether a failed attempt may be tried again: nothing has reached the client yet, the body
/// can be sent again, the model's retry budget is not spent, and an untried endpoint is left.
pub fn can_retry(
    session: &Session,
    want: &Want,
    route: Option<&Route>,
    tried: Tried,
    attempts: u32,
    now: u64,
) -> bool {
    let Some(route) = route else {
        return false;
    };
    session.response_written().is_none()
        && !session.as_ref().retry_buffer_truncated()
        && attempts <= route.policy.max_retries
        && any_eligible(route, tried, want, now)
}

/// The error a failed request answers with; `None` when the client is gone.
pub fn final_error(e: &Error, route: Option<&Route>) -> Option<ProxyError> {
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
            e.to_string(),
        ),
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => ProxyError::upstream_timeout(detail),
        _ => match e.esource() {
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                    return None
                }
                _ => ProxyError::bad_request("bad_request", e.to_string()),
            },
            ErrorSource::Upstream => ProxyError::upstream_failed(detail),
            ErrorSource::Internal | ErrorSource::Unset => ProxyError::new(
                500,
                "server_error",
                "internal_error",
                format!("Internal proxy error: {detail}"),
            ),
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
    }
}
