//! Versioned snapshots: the latest one, and a watch every proxy stream follows.
//!
//! Publishing an unchanged snapshot is a no-op, so proxies are pushed only on change. Versions
//! are consecutive integers per control-plane process.

use std::sync::Arc;

use multiverse_proto::discovery::v1 as pb;
use tokio::sync::watch;

/// A snapshot with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: u64,
    pub snapshot: pb::RouteSnapshot,
}

/// Holds the current snapshot; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Arc<Versioned>>>,
}

impl Publisher {
    pub fn new(initial: pb::RouteSnapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(Versioned {
            version: 1,
            snapshot: initial,
        }));
        Self { tx: Arc::new(tx) }
    }

    /// Publishes `snapshot` if it differs from the current one; returns the version in force.
    pub fn publish(&self, snapshot: pb::RouteSnapshot) -> u64 {
        let mut version = 0;
        self.tx.send_if_modified(|current| {
            if current.snapshot == snapshot {
                version = current.version;
                return false;
            }
            version = current.version + 1;
            *current = Arc::new(Versioned { version, snapshot });
            true
        });
        version
    }

    pub fn current(&self) -> Arc<Versioned> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Versioned>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_bump_the_version() {
        let p = Publisher::new(pb::RouteSnapshot::default());
        assert_eq!(p.current().version, 1);
        assert_eq!(p.publish(pb::RouteSnapshot::default()), 1);
        let changed = pb::RouteSnapshot {
            models: vec![pb::Model {
                name: "m".into(),
                ..Default::default()
            }],
        };
        assert_eq!(p.publish(changed.clone()), 2);
        assert_eq!(p.publish(changed), 2);
    }
}
