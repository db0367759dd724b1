//! The table the proxy routes by right now, and the one place it is replaced.
//!
//! Reads are a lock-free `ArcSwap` load. Writes (a control plane pushed a snapshot) are rare and
//! serialised by a mutex that no request ever touches: the new table is built completely, then
//! swapped in, so a request sees either the old table or the new one, never a mix. Whoever
//! wires the proxy learns of every swap through one hook (the server counts them in metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::routing::endpoint::EndpointState;
use crate::routing::limits::{KeyState, Leased};
use crate::routing::snapshot::PlaneRoutes;
use crate::routing::table::RoutingTable;
use multiverse_proto::discovery::v1 as pb;

/// Called with every table swapped in (under the writers' mutex, never on the request path).
pub type SwapHook = Box<dyn Fn(&RoutingTable) + Send + Sync>;

/// Shared routing state of one proxy process.
pub struct TableState {
    /// Where tables come from (`control-plane`, `static:<file>`), shown in /config_dump.
    source: String,
    table: ArcSwap<RoutingTable>,
    ready: AtomicBool,
    planes: Mutex<Planes>,
    on_swap: SwapHook,
}

#[derive(Default)]
struct Planes {
    /// Last good routes of each control plane, by plane id.
    routes: BTreeMap<String, PlaneRoutes>,
    /// Runtime state of every endpoint in the table, by id (kept across versions).
    states: HashMap<String, Arc<EndpointState>>,
    /// Limits' state of every key, by id (kept across versions).
    key_states: HashMap<String, Arc<KeyState>>,
}

impl TableState {
    /// An empty, not-ready state; `on_swap` sees every table swapped in.
    pub fn new(source: String, on_swap: SwapHook) -> Self {
        Self {
            source,
            table: ArcSwap::from_pointee(RoutingTable::empty()),
            ready: AtomicBool::new(false),
            planes: Mutex::new(Planes::default()),
            on_swap,
        }
    }

    /// The current table; callers keep the `Arc` for as long as they route by it.
    #[inline]
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Whether a routing table has been received.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stores a control plane's new routes and swaps in the merged table.
    pub fn apply_plane(&self, plane: &str, routes: PlaneRoutes) {
        let mut planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        planes.routes.insert(plane.to_string(), routes);
        self.rebuild(&mut planes);
    }

    /// Forgets a plane's routes (it has been unreachable too long); true if it had any.
    pub fn remove_plane(&self, plane: &str) -> bool {
        let mut planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        if planes.routes.remove(plane).is_none() {
            return false;
        }
        self.rebuild(&mut planes);
        true
    }

    /// The use of `plane`'s keys since the last call, for its usage report (keys with limits
    /// that were asked for only).
    pub fn usage(&self, plane: &str) -> Vec<pb::KeyUsage> {
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(routes) = planes.routes.get(plane) else {
            return Vec::new();
        };
        routes
            .auth
            .keys
            .iter()
            .filter(|k| k.rpm > 0 || k.tpm > 0 || k.max_concurrent > 0)
            .filter_map(|k| {
                let (admitted, refused) = planes.key_states.get(&k.id)?.take_usage();
                (admitted + refused > 0).then(|| pb::KeyUsage {
                    key_id: k.id.clone(),
                    admitted,
                    refused,
                })
            })
            .collect()
    }

    /// Stores `plane`'s leases of its keys' limits (a key this plane does not own is ignored;
    /// one not in the table yet gets its lease with the state it will have).
    pub fn apply_leases(&self, plane: &str, leases: &pb::LeaseUpdate) {
        let mut planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        let Planes {
            routes, key_states, ..
        } = &mut *planes;
        let Some(routes) = routes.get(plane) else {
            return;
        };
        for lease in &leases.keys {
            if !routes.auth.keys.iter().any(|k| k.id == lease.key_id) {
                continue;
            }
            let state = key_states.entry(lease.key_id.clone()).or_default();
            state.set_lease(Leased::Rpm, lease.rpm);
            state.set_lease(Leased::Tpm, lease.tpm);
            state.set_lease(Leased::Concurrent, lease.max_concurrent);
        }
    }

    fn rebuild(&self, planes: &mut Planes) {
        let Planes {
            routes,
            states,
            key_states,
        } = planes;
        let table = RoutingTable::merge(routes, &self.source, states, key_states);
        tracing::info!(
            version = %table.version,
            models = table.routes().count(),
            "routing table applied"
        );
        (self.on_swap)(&table);
        self.table.store(Arc::new(table));
        self.ready.store(true, Ordering::Release);
    }
}
