//! Process lifecycle: whether the client listener accepts, how many requests are active, and
//! draining on SIGTERM.
//!
//! pingora stops accepting on SIGTERM and keeps serving open requests for the configured grace
//! period before it stops its runtimes. [`Drain`] ends the process as soon as the last active
//! request has finished, so an idle proxy exits at once and a busy one waits at most the grace.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// Set once the client listener is bound and listening (connects succeed from then on): the
/// admin `/ready` answers 200 only after it. The admin listener needs no flag of its own, since
/// it is the one answering.
#[derive(Debug, Default)]
pub struct Listening(AtomicBool);

impl Listening {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

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

/// Exits the process once draining is over.
pub struct Drain {
    pub active: Arc<Active>,
    pub grace: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() || !*shutdown.borrow() {
            return;
        }
        tracing::info!(
            active = self.active.count(),
            grace_s = self.grace.as_secs(),
            "SIGTERM: not accepting new connections, draining"
        );
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.active.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let left = self.active.count();
        if left > 0 {
            tracing::warn!(
                active = left,
                "grace period over; exiting with requests still open"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        std::process::exit(0);
    }
}
