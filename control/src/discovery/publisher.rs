//! Versioned snapshots: the latest one, and a watch every proxy stream follows.
//!
//! Publishing an unchanged snapshot is a no-op, so proxies are pushed only on change. Versions
//! only grow, across restarts too:
//!
//! - They are reserved in blocks of [`BLOCK`] in the state file (`version_floor`, written by the
//!   store's writer): a start continues above the last reserved block, and a publish beyond the
//!   block reserves the next one first. So a restart skips at most a block, and the state file
//!   is written once per [`BLOCK`] versions rather than on every publish. (Versions derived from
//!   a wall-clock epoch would need no writes, but would run backwards with the clock.)
//! - A proxy says in its hello which version it holds from this plane; if that is not below the
//!   current one (the state file was lost, or replaced), [`Publisher::require_above`] makes the
//!   next publish go above it, and the proxy's stream waits for that version. A proxy never sees
//!   a smaller version from the same plane.
//!
//! One task publishes (the route republisher): versions are handed out in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use multiverse_proto::discovery::v1 as pb;
use tokio::sync::watch;

use crate::changes::Changes;
use crate::store::Store;

/// Versions reserved in the state file at a time.
pub const BLOCK: u64 = 100;

/// Hello versions at or above this are not taken into account (a confused or hostile proxy
/// cannot push the numbering to its end).
pub const MAX_HELLO_VERSION: u64 = 1 << 53;

/// A snapshot with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: u64,
    pub snapshot: pb::RouteSnapshot,
}

struct Inner {
    tx: watch::Sender<Arc<Versioned>>,
    /// Where versions are reserved (`None`: nowhere, for tests).
    store: Option<Store>,
    /// The last version reserved in the state file.
    reserved: AtomicU64,
    /// The next publish goes above this (from proxies' hellos).
    above: AtomicU64,
    changes: Changes,
}

/// Holds the current snapshot; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts at the version after `floor` (the state file's) with `initial`, reserving the first
    /// block; `changes` is signalled when a proxy needs a higher version.
    pub async fn start(
        initial: pb::RouteSnapshot,
        floor: u64,
        store: Option<Store>,
        changes: Changes,
    ) -> Self {
        let version = floor.saturating_add(1);
        let p = Publisher {
            inner: Arc::new(Inner {
                tx: watch::Sender::new(Arc::new(Versioned {
                    version,
                    snapshot: initial,
                })),
                store,
                reserved: AtomicU64::new(floor),
                above: AtomicU64::new(0),
                changes,
            }),
        };
        p.reserve(version).await;
        p
    }

    /// A publisher starting at version 1 that reserves nothing (tests).
    pub fn in_memory(initial: pb::RouteSnapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(Versioned {
            version: 1,
            snapshot: initial,
        }));
        Publisher {
            inner: Arc::new(Inner {
                tx,
                store: None,
                reserved: AtomicU64::new(u64::MAX),
                above: AtomicU64::new(0),
                changes: Changes::new(),
            }),
        }
    }

    /// Makes sure `version` is reserved in the state file. A failed write is logged and the
    /// version used anyway: routes never wait for a disk (the proxies' hellos still keep
    /// versions growing for them).
    async fn reserve(&self, version: u64) {
        let inner = &self.inner;
        if version <= inner.reserved.load(Ordering::Acquire) {
            return;
        }
        let Some(store) = &inner.store else {
            return;
        };
        let block = version.saturating_add(BLOCK - 1);
        match store.raise_version_floor(block).done().await {
            Ok(()) => {
                inner.reserved.fetch_max(block, Ordering::AcqRel);
            }
            Err(e) => tracing::error!(
                error = %e.error,
                version,
                "could not reserve snapshot versions in the state file; a restart may reuse them"
            ),
        }
    }

    /// Publishes `snapshot` if it differs from the current one (or a proxy needs a higher
    /// version); returns the version in force. Called by one task only.
    pub async fn publish(&self, snapshot: pb::RouteSnapshot) -> u64 {
        let current = self.current();
        let above = self.inner.above.load(Ordering::Acquire);
        if current.snapshot == snapshot && current.version > above {
            return current.version;
        }
        let version = current.version.max(above).saturating_add(1);
        self.reserve(version).await;
        self.inner
            .tx
            .send_replace(Arc::new(Versioned { version, snapshot }));
        version
    }

    /// A proxy holds `version` from this plane: the next publish goes above it (and the
    /// republisher is woken for that). Returns the version the proxy must wait for.
    pub fn require_above(&self, version: u64) -> u64 {
        if version >= MAX_HELLO_VERSION {
            tracing::warn!(
                version,
                "ignoring an implausible version in a proxy's hello"
            );
            return 0;
        }
        self.inner.above.fetch_max(version, Ordering::AcqRel);
        if self.current().version <= version {
            self.inner.changes.signal();
        }
        version.saturating_add(1)
    }

    pub fn current(&self) -> Arc<Versioned> {
        self.inner.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Versioned>> {
        self.inner.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed() -> pb::RouteSnapshot {
        pb::RouteSnapshot {
            models: vec![pb::Model {
                name: "m".into(),
                ..Default::default()
            }],
            auth: None,
        }
    }

    #[tokio::test]
    async fn only_changes_bump_the_version() {
        let p = Publisher::in_memory(pb::RouteSnapshot::default());
        assert_eq!(p.current().version, 1);
        assert_eq!(p.publish(pb::RouteSnapshot::default()).await, 1);
        assert_eq!(p.publish(changed()).await, 2);
        assert_eq!(p.publish(changed()).await, 2);
    }

    #[tokio::test]
    async fn versions_continue_above_the_reserved_block_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("mv-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = || crate::store::Store::open(crate::store::StateFile::new(&dir)).expect("open");
        let (store, state) = open();
        assert_eq!(state.version_floor, 0);
        let p = Publisher::start(
            pb::RouteSnapshot::default(),
            state.version_floor,
            Some(store),
            Changes::new(),
        )
        .await;
        assert_eq!(p.current().version, 1);
        assert_eq!(p.publish(changed()).await, 2);
        drop(p);
        let (store, state) = open();
        assert_eq!(state.version_floor, BLOCK, "the first block is reserved");
        let p = Publisher::start(
            pb::RouteSnapshot::default(),
            state.version_floor,
            Some(store),
            Changes::new(),
        )
        .await;
        assert_eq!(
            p.current().version,
            BLOCK + 1,
            "above everything used before"
        );
        drop(p);
        let (_, state) = open();
        assert_eq!(
            state.version_floor,
            2 * BLOCK,
            "and the next block reserved"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_hello_above_the_current_version_makes_the_next_publish_go_above_it() {
        let changes = Changes::new();
        let p = Publisher::start(pb::RouteSnapshot::default(), 0, None, changes.clone()).await;
        assert_eq!(p.require_above(41), 42);
        // The republisher is woken, and publishes the same routes above the hello.
        tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed())
            .await
            .expect("signalled");
        assert_eq!(p.publish(pb::RouteSnapshot::default()).await, 42);
        assert_eq!(p.publish(pb::RouteSnapshot::default()).await, 42, "once");
        assert_eq!(p.require_above(3), 4, "a lower hello changes nothing");
        assert_eq!(p.publish(pb::RouteSnapshot::default()).await, 42);
        assert_eq!(
            p.require_above(MAX_HELLO_VERSION),
            0,
            "implausible: ignored"
        );
        assert_eq!(p.publish(changed()).await, 43);
    }
}
