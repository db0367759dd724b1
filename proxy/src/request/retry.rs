//! Whether a failed attempt is tried again on another endpoint.
//!
//! A request is retried only before any response byte reached the client, while its body can
//! still be replayed, within its model's retry budget, and only on an endpoint it has not
//! tried. An upstream answer of 502 or 503 counts as a failure that may be retried; 504 is a
//! failure that is passed on (the model server already spent the client's time). Everything
//! else ends the request with one [`crate::request::error::ProxyError`].

use pingora_proxy::Session;

use crate::routing::pick::{any_eligible, Tried, Want};
use crate::routing::table::Route;

/// What an upstream's response status means for the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Not a gateway failure (the endpoint is fine, whatever the status).
    Served,
    /// A gateway failure (counted for outlier detection); `retryable` if another endpoint
    /// may be tried instead of passing it on.
    GatewayFailure { retryable: bool },
}

/// Judges an upstream response status.
pub fn judge(status: u16) -> Answered {
    match status {
        502 | 503 => Answered::GatewayFailure { retryable: true },
        504 => Answered::GatewayFailure { retryable: false },
        _ => Answered::Served,
    }
}

/// Where a request stands when an attempt failed.
#[derive(Debug, Clone, Copy)]
pub struct Attempted<'a> {
    /// Some response byte has reached the client.
    pub response_started: bool,
    /// The body is longer than pingora's replay buffer, so it cannot be sent again.
    pub body_truncated: bool,
    pub route: Option<&'a Route>,
    pub want: &'a Want,
    pub tried: Tried,
    /// Attempts made so far (the first included).
    pub attempts: u32,
}

impl<'a> Attempted<'a> {
    /// The facts of `session`'s request.
    pub fn of(
        session: &Session,
        route: Option<&'a Route>,
        want: &'a Want,
        tried: Tried,
        attempts: u32,
    ) -> Self {
        Attempted {
            response_started: session.response_written().is_some(),
            body_truncated: session.as_ref().retry_buffer_truncated(),
            route,
            want,
            tried,
            attempts,
        }
    }

    /// Whether another attempt may be made at `now`: nothing has reached the client, the body
    /// can be sent again, the model's retry budget is not spent, and an untried endpoint is left.
    pub fn may_retry(&self, now: u64) -> bool {
        let Some(route) = self.route else {
            return false;
        };
        !self.response_started
            && !self.body_truncated
            && self.attempts <= route.policy.max_retries
            && any_eligible(route, self.tried, self.want, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::fixtures::route_with;
    use crate::routing::table::ProtoClass;
    use multiverse_proto::discovery::v1::HealthStatus as H;

    const HTTP: Want = Want {
        class: ProtoClass::Http,
        pinned: None,
        affinity: None,
    };

    #[test]
    fn only_502_and_503_are_retried_504_is_a_failure_passed_on() {
        assert_eq!(judge(502), Answered::GatewayFailure { retryable: true });
        assert_eq!(judge(503), Answered::GatewayFailure { retryable: true });
        assert_eq!(judge(504), Answered::GatewayFailure { retryable: false });
        for served in [200, 400, 404, 429, 500, 501] {
            assert_eq!(judge(served), Answered::Served, "{served}");
        }
    }

    #[test]
    fn retries_need_an_untried_endpoint_budget_and_an_unstarted_replayable_request() {
        // Three endpoints, default budget (2 retries after the first attempt).
        let r = route_with(&[H::Healthy; 3]);
        let mut tried = Tried::default();
        tried.mark(0);
        let first = Attempted {
            response_started: false,
            body_truncated: false,
            route: Some(&r),
            want: &HTTP,
            tried,
            attempts: 1,
        };
        assert!(first.may_retry(1));
        assert!(!Attempted {
            response_started: true,
            ..first
        }
        .may_retry(1));
        assert!(!Attempted {
            body_truncated: true,
            ..first
        }
        .may_retry(1));
        assert!(!Attempted {
            route: None,
            ..first
        }
        .may_retry(1));
        // Attempt 3 of a budget of 2 retries is the last.
        assert!(Attempted {
            attempts: 2,
            ..first
        }
        .may_retry(1));
        assert!(!Attempted {
            attempts: 3,
            ..first
        }
        .may_retry(1));
        // Every endpoint tried: nothing left.
        tried.mark(1);
        tried.mark(2);
        assert!(!Attempted {
            tried,
            attempts: 2,
            ..first
        }
        .may_retry(1));
        // Only unavailable endpoints left: nothing either.
        let r = route_with(&[H::Healthy, H::Unhealthy, H::Draining]);
        let mut tried = Tried::default();
        tried.mark(0);
        let left = Attempted {
            route: Some(&r),
            tried,
            ..first
        };
        assert!(!left.may_retry(1));
    }
}
