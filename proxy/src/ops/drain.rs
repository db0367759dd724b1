//! Draining on shutdown: how many requests are active, and waiting for them to finish.
//!
//! On a graceful stop the listeners stop accepting first; then [`drain`] waits until the last
//! active request has finished, or the grace period is over, whichever comes first — so an idle
//! proxy stops at once and a busy one waits at most the grace. Cost per request: two atomic
//! adds (the [`ActiveGuard`] in its context).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often [`drain`] looks at the active count.
const POLL: Duration = Duration::from_millis(25);

/// Requests between their first phase and their last.
#[derive(Debug, Default)]
pub struct Active(AtomicUsize);

impl Active {
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by a request's context; leaving decrements the count.
pub struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until no request is active or `grace` has passed; returns how many are still active.
pub async fn drain(active: &Active, grace: Duration) -> usize {
    tracing::info!(
        active = active.count(),
        grace_s = grace.as_secs(),
        "shutting down: not accepting new connections, draining"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while active.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let left = active.count();
    if left > 0 {
        tracing::warn!(
            active = left,
            "grace period over; stopping with requests still open"
        );
    } else {
        tracing::info!("drained");
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_proxy_drains_at_once() {
        let active = Arc::new(Active::default());
        let start = tokio::time::Instant::now();
        assert_eq!(drain(&active, Duration::from_secs(10)).await, 0);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_when_the_last_request_does() {
        let active = Arc::new(Active::default());
        let guard = active.enter();
        let other = active.enter();
        assert_eq!(active.count(), 2);
        drop(other);
        let finish = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(guard);
        });
        let start = tokio::time::Instant::now();
        assert_eq!(drain(&active, Duration::from_secs(10)).await, 0);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(3) + 2 * POLL,
            "{took:?}"
        );
        finish.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace() {
        let active = Arc::new(Active::default());
        let _stuck = active.enter();
        let start = tokio::time::Instant::now();
        assert_eq!(drain(&active, Duration::from_secs(5)).await, 1);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(5) + 2 * POLL,
            "{took:?}"
        );
    }
}
