//! Whether a failed attempt is tried again on another endpoint, and which error ends a request.
//!
//! A request is retried only before any response byte reached the client, on an endpoint it has
//! not tried, within its model's retry budget. Everything else ends in one error, mapped here from
//! pingora's error to the status and message the client sees.

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::observe::Metrics;
use crate::pick::Tried;
use crate::respond::ProxyError;
use crate::table::Route;

/// Marks a connect failure retryable when budget and another endpoint remain.
pub fn after_connect_failure(
    route: &Route,
    tried: Tried,
    attempts: u32,
    mut e: Box<Error>,
    metrics: &Metrics,
) -> Box<Error> {
    let budget_left = attempts <= route.policy.max_retries;
    if budget_left && route_has_untried(route, tried) {
        metrics.retry(&route.name);
        e.set_retry(true);
    } else {
        e.set_retry(false);
    }
    e
}

fn route_has_untried(route: &Route, tried: Tried) -> bool {
    // `pick` would advance the round-robin cursor; only eligibility matters here.
    route
        .endpoints
        .iter()
        .enumerate()
        .any(|(i, e)| !tried.contains(i) && e.health.accepts_new())
}

/// The error a failed request answers with; `None` when the client is gone.
pub fn final_error(e: &Error, route: Option<&Route>) -> Option<ProxyError> {
    let model = route.map(|r| r.name.as_str()).unwrap_or("");
    let detail = e.etype().as_str();
    Some(match e.etype() {
        ErrorType::HTTPStatus(503) => ProxyError::no_endpoint(model),
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
        let none = Error::new(ErrorType::HTTPStatus(503));
        assert_eq!(
            final_error(&none, None).map(|e| e.code),
            Some("no_healthy_endpoint")
        );
    }
}
