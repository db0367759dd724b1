//! The table the proxy routes by right now, and the one place it is replaced.
//!
//! Reads are a lock-free `ArcSwap` load. Writes (a control plane pushed a snapshot) are rare and
//! serialised by a mutex that no request ever touches: the new table is built completely, then
//! swapped in, so a request sees either the old table or the new one, never a mix. Whoever
//! wires the proxy learns of every swap through one hook (the server counts them in metrics).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::routing::endpoint::EndpointState;
use crate::routing::limits::{KeyState, Leased};
use crate::routing::queue::AdmitQueue;
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
    /// Last good routes of each control plane, by plane id, as each stream (its owner, e.g. the
    /// URL it was received on) holds them, the latest applied last: that one is in the table.
    /// A plane reached at two addresses (it moved, or is listed twice) is one plane.
    routes: BTreeMap<String, Vec<(String, PlaneRoutes)>>,
    /// Runtime state of every endpoint in the table, by id (kept across versions).
    states: HashMap<String, Arc<EndpointState>>,
    /// Limits' state of every key, by id (kept across versions).
    key_states: HashMap<String, Arc<KeyState>>,
    /// Models whose policy the planes disagree on in the current table (logged when they
    /// start to, not on every table).
    conflicts: BTreeSet<String>,
    /// Each model's admission queue, by name (kept across versions).
    queues: HashMap<String, Arc<AdmitQueue>>,
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

    /// Stores a control plane's new routes, received by `owner` (the stream), and swaps in the
    /// merged table.
    pub fn apply_plane(&self, plane: &str, owner: &str, routes: PlaneRoutes) {
        let mut planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        let held = planes.routes.entry(plane.to_string()).or_default();
        held.retain(|(o, _)| o != owner);
        held.push((owner.to_string(), routes));
        self.rebuild(&mut planes);
    }

    /// Forgets the routes of `plane` that `owner` holds (its stream has been lost too long);
    /// true if it held any. Another stream's routes of the same plane (the plane moved to
    /// another address) stay.
    pub fn remove_plane(&self, plane: &str, owner: &str) -> bool {
        let mut planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = planes.routes.get_mut(plane) else {
            return false;
        };
        let before = held.len();
        held.retain(|(o, _)| o != owner);
        if held.len() == before {
            return false;
        }
        if held.is_empty() {
            planes.routes.remove(plane);
        }
        self.rebuild(&mut planes);
        true
    }

    /// The planes in the table: id → the owner whose routes are used, and their version.
    pub fn planes(&self) -> BTreeMap<String, (String, String)> {
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        planes
            .routes
            .iter()
            .filter_map(|(id, held)| {
                let (owner, routes) = held.last()?;
                Some((id.clone(), (owner.clone(), routes.version.clone())))
            })
            .collect()
    }

    /// The use of `plane`'s keys since the last call, for its usage report (keys with limits
    /// that were asked for only).
    pub fn usage(&self, plane: &str) -> Vec<pb::KeyUsage> {
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, routes)) = planes.routes.get(plane).and_then(|held| held.last()) else {
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
        let Some((_, routes)) = routes.get(plane).and_then(|held| held.last()) else {
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

    /// Stores the engine loads in a plane's load update, on the endpoints of the table (an
    /// endpoint not in it is skipped). No table is rebuilt.
    pub fn apply_load(&self, update: &pb::LoadUpdate) {
        let now = crate::routing::load::now_ms();
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        for load in &update.endpoints {
            if let Some(state) = planes.states.get(&load.endpoint_id) {
                state.engine.set(load, update.interval_ms, now);
            }
        }
    }

    fn rebuild(&self, planes: &mut Planes) {
        let Planes {
            routes,
            states,
            key_states,
            conflicts,
            queues,
        } = planes;
        let current = routes
            .iter()
            .filter_map(|(id, held)| held.last().map(|(_, r)| (id, r)));
        let table = RoutingTable::merge(current, &self.source, states, key_states, queues);
        for (model, c) in &table.policy_conflicts {
            if !conflicts.contains(model) {
                tracing::warn!(
                    %model,
                    used = %c.used,
                    ignored = ?c.ignored,
                    "control planes push different routing policies for this model; the lowest plane id's is used"
                );
            }
        }
        *conflicts = table.policy_conflicts.keys().cloned().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(version: &str) -> PlaneRoutes {
        PlaneRoutes {
            version: version.into(),
            models: Vec::new(),
            auth: Default::default(),
        }
    }

    #[test]
    fn a_plane_reached_at_two_addresses_is_one_plane_and_withdrawn_by_its_last_holder() {
        let s = TableState::new("control-plane".into(), Box::new(|_| {}));
        s.apply_plane("cp-a", "http://10.0.0.1:9001", routes("3"));
        // The plane moved: its new address's stream applies it; still one plane.
        s.apply_plane("cp-a", "http://10.0.0.2:9001", routes("4"));
        s.apply_plane("cp-b", "http://10.0.0.3:9001", routes("1"));
        let planes = s.planes();
        assert_eq!(planes.len(), 2, "{planes:?}");
        assert_eq!(planes["cp-a"], ("http://10.0.0.2:9001".into(), "4".into()));
        assert_eq!(s.table().version, "cp-a=4,cp-b=1");
        // The old address's grace runs out: the plane stays, served by the new one.
        assert!(s.remove_plane("cp-a", "http://10.0.0.1:9001"));
        assert!(!s.remove_plane("cp-a", "http://10.0.0.1:9001"), "once");
        assert_eq!(s.table().version, "cp-a=4,cp-b=1");
        // The latest holder withdraws while an older one still holds it: the older's routes.
        s.apply_plane("cp-b", "http://10.0.0.4:9001", routes("2"));
        assert!(s.remove_plane("cp-b", "http://10.0.0.4:9001"));
        assert_eq!(s.table().version, "cp-a=4,cp-b=1");
        assert!(s.remove_plane("cp-b", "http://10.0.0.3:9001"));
        assert!(s.remove_plane("cp-a", "http://10.0.0.2:9001"));
        assert!(s.planes().is_empty());
        assert!(!s.remove_plane("cp-x", "u"), "an unknown plane");
    }
}
