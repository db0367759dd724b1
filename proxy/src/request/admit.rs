//! Admission control: a request for a model whose endpoints have a `max_concurrent` gets a slot
//! on one of them before it is sent, or waits for one in the model's queue
//! ([`crate::routing::queue`]), or is refused with 429 (`queue_full`, `queue_timeout`; gRPC
//! RESOURCE_EXHAUSTED) and `Retry-After`. Endpoints over their `max_requests_per_sec` are
//! skipped by the pick; when every one that could take the request is over its rate, it is
//! refused at once (429 `rate_limit_exceeded`, `Retry-After` when the soonest admits again)
//! rather than queued, since no finishing request frees a rate.
//!
//! Cost: for a model without limits, one `bool` test. With limits and nobody waiting: the pick
//! plus a compare-and-swap on the endpoint's in-flight count instead of an add, and one atomic
//! load of the queue's length; no lock. Only a request that has to wait takes the queue's lock
//! (and allocates its place and a oneshot channel).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ops::metrics::Metrics;
use crate::request::error::{Limit, ProxyError};
use crate::routing::pick::{any_eligible, over_rate, pick_reserved, rate_blocked, Tried, Want};
use crate::routing::queue::{AdmitQueue, Priority, Wake};
use crate::routing::table::Route;

/// What a refused request is told to wait before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A place in a queue, left when dropped (the client went away, the wait ended) unless it was
/// already taken out; a wake it received and did not use is passed on.
struct Place<'a> {
    queue: &'a AdmitQueue,
    id: u64,
    priority: Priority,
    /// Taken out of the queue (woken or shed).
    taken: bool,
    /// The slot it was woken for was used (or lost to a pick that succeeded).
    used: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.taken && self.queue.leave(self.id, self.priority) {
            return;
        }
        if !self.used {
            // Woken for a slot this request does not take: the next waiter may.
            self.queue.wake_one();
        }
    }
}

/// Refuses the request when every endpoint that could take it is over its rate.
fn rate_refusal(
    route: &Route,
    tried: Tried,
    want: &Want,
    now: u64,
    metrics: &Metrics,
) -> Result<(), ProxyError> {
    let Some(after) = rate_blocked(route, tried, want, now) else {
        return Ok(());
    };
    for e in over_rate(route, tried, want, now) {
        metrics.rate_shed(&route.name, &e.id);
    }
    Err(ProxyError::RateLimited {
        limit: Limit::EndpointRate,
        retry_after: after.max(Duration::from_millis(1)),
    })
}

/// A slot for the request's first attempt: `Some(index)` of the endpoint, counted in flight
/// there; `None` when the model has no limits or no endpoint could ever take it (the attempt
/// picks as usual and answers 503).
pub async fn admit(
    route: &Arc<Route>,
    want: &Want,
    priority: Priority,
    now_ms: &(dyn Fn() -> u64 + Sync),
    metrics: &Metrics,
) -> Result<Option<usize>, ProxyError> {
    if !route.limited {
        return Ok(None);
    }
    let queue = &route.queue;
    let tried = Tried::default();
    if queue.is_empty() {
        if let Some(i) = pick_reserved(route, tried, want, now_ms()) {
            return Ok(Some(i));
        }
    }
    rate_refusal(route, tried, want, now_ms(), metrics)?;
    if !any_eligible(route, tried, want, now_ms()) {
        return Ok(None);
    }
    let max = route.policy.queue_max as usize;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + route.policy.queue_timeout;
    let mut front = false;
    loop {
        let Ok(ticket) = queue.join(priority, max, front) else {
            metrics.queue_shed(&route.name, "full");
            return Err(ProxyError::QueueFull(route.name.clone()));
        };
        metrics.queue_depth(&route.name, queue.len());
        let mut place = Place {
            queue,
            id: ticket.id,
            priority: ticket.priority,
            taken: false,
            used: false,
        };
        let mut rx = ticket.rx;
        // A slot freed between the failed pick and the join woke nobody: look once more.
        if let Some(i) = pick_reserved(route, tried, want, now_ms()) {
            place.used =
                queue.leave(place.id, place.priority) || !matches!(rx.try_recv(), Ok(Wake::Slot));
            place.taken = true;
            drop(place);
            metrics.queue_depth(&route.name, queue.len());
            return Ok(Some(i));
        }
        let woke = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(message) => message.ok(),
            // Timed out, unless woken at the last moment.
            Err(_) => {
                place.taken = !queue.leave(place.id, place.priority);
                place.taken.then(|| rx.try_recv().ok()).flatten()
            }
        };
        place.taken = place.taken || woke.is_some();
        match woke {
            Some(Wake::Slot) => {}
            Some(Wake::Shed) => {
                place.used = true;
                drop(place);
                metrics.queue_shed(&route.name, "displaced");
                metrics.queue_depth(&route.name, queue.len());
                return Err(ProxyError::QueueFull(route.name.clone()));
            }
            None => {
                place.used = true;
                drop(place);
                metrics.queue_shed(&route.name, "timeout");
                metrics.queue_depth(&route.name, queue.len());
                return Err(ProxyError::QueueTimeout(route.name.clone()));
            }
        }
        metrics.queue_depth(&route.name, queue.len());
        if let Some(i) = pick_reserved(route, tried, want, now_ms()) {
            place.used = true;
            metrics.queue_waited(&route.name, started.elapsed());
            return Ok(Some(i));
        }
        // Another request took the slot: wait again, at the front of the line (unless the rates
        // are what is left).
        place.used = true;
        rate_refusal(route, tried, want, now_ms(), metrics)?;
        front = true;
        if tokio::time::Instant::now() >= deadline {
            metrics.queue_shed(&route.name, "timeout");
            return Err(ProxyError::QueueTimeout(route.name.clone()));
        }
    }
}
