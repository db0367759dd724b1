//! The one "something routable changed" signal: the backend registry and the instances raise it,
//! the route republisher ([`crate::routes`]) waits for it. Signals raised while nobody waits are
//! kept (as one), so a change made between two snapshots is never missed; many signals before
//! the next wait become one snapshot.

use std::sync::Arc;

use tokio::sync::Notify;

/// A cloneable handle on the signal.
#[derive(Clone, Default)]
pub struct Changes(Arc<Notify>);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Something that affects routes changed.
    pub fn signal(&self) {
        self.0.notify_one();
    }

    /// Waits for the next signal (or returns at once for one raised since the last wait).
    pub async fn changed(&self) {
        self.0.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_signal_before_the_wait_is_kept_and_many_become_one() {
        let c = Changes::new();
        let raiser = c.clone();
        raiser.signal();
        raiser.signal();
        tokio::time::timeout(Duration::from_secs(1), c.changed())
            .await
            .expect("the earlier signal is kept");
        let second = tokio::time::timeout(Duration::from_millis(50), c.changed()).await;
        assert!(second.is_err(), "two signals before one wait are one");
    }
}
