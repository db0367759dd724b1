//! Fleet-wide key limits: every proxy connects to every control plane, so the plane that owns
//! a key sees the whole fleet and leases each connected proxy a share of the key's rpm, tpm and
//! max_concurrent, the shares summing to the limit. Proxies report each key's use every second
//! (admitted and refused requests); every second the plane turns the reports into demand (an
//! exponentially weighted average, half-life one report) and re-splits each limit: a quarter
//! equally among the connected proxies (so an idle proxy can still serve a first request), the
//! rest in proportion to demand. A proxy joining or leaving is re-split at once.
//!
//! [`split`] is the pure rule; [`Leases`] keeps the proxies' demand and the current leases, and
//! tells the discovery streams (a `watch` generation) when to send a node its new leases.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiverse_proto::discovery::v1 as pb;
use tokio::sync::watch;

use super::Keys;

/// How often demand is folded in and limits re-split.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(1);

/// Splits `limit` among proxies with demands `demand` (same order): shares that sum to `limit`
/// exactly, a quarter of it equally, the rest by demand (equally when there is none).
pub fn split(limit: u32, demand: &[f64]) -> Vec<u32> {
    let n = demand.len();
    if n == 0 {
        return Vec::new();
    }
    let total: f64 = demand.iter().map(|d| d.max(0.0)).sum();
    let limit_f = f64::from(limit);
    let exact: Vec<f64> = demand
        .iter()
        .map(|d| {
            let equal = limit_f / n as f64;
            if total <= 0.0 {
                equal
            } else {
                0.25 * equal + 0.75 * limit_f * d.max(0.0) / total
            }
        })
        .collect();
    let mut shares: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    // Hand out what rounding down left, largest remainders first, so the sum is the limit.
    let mut left = limit.saturating_sub(shares.iter().sum());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

#[derive(Default)]
struct Node {
    /// The stream that registered it (a reconnect replaces it).
    stream: u64,
    /// Per key: demand (requests per report period, averaged) and what was reported since.
    demand: HashMap<String, (f64, u64)>,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Node>,
    /// The leases in force, per node.
    leases: BTreeMap<String, Vec<pb::KeyLease>>,
}

/// The proxies' demand for this plane's keys and their leases.
pub struct Leases {
    keys: Arc<Keys>,
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
}

impl Leases {
    pub fn new(keys: Arc<Keys>) -> Arc<Self> {
        Arc::new(Leases {
            keys,
            inner: Mutex::new(Inner::default()),
            generation: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever some node's leases may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A proxy's stream `stream` opened: it gets a share from now on.
    pub fn connected(&self, node: &str, stream: u64) {
        let mut inner = self.lock();
        let entry = inner.nodes.entry(node.to_string()).or_default();
        entry.stream = stream;
        self.rebalance(&mut inner);
    }

    /// A proxy's stream ended: its share goes to the others (unless it reconnected already).
    pub fn disconnected(&self, node: &str, stream: u64) {
        let mut inner = self.lock();
        if inner.nodes.get(node).is_some_and(|n| n.stream == stream) {
            inner.nodes.remove(node);
            inner.leases.remove(node);
            self.rebalance(&mut inner);
            // The others' endpoint shares grow (`discovery::shares`) even when no key lease
            // changed.
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// `node`'s place among the connected proxies (node-id order) and their number, what its
    /// share of the instances' rates depends on ([`crate::discovery::shares`]).
    pub fn membership(&self, node: &str) -> (usize, usize) {
        let inner = self.lock();
        let index = inner.nodes.keys().position(|n| n == node).unwrap_or(0);
        (index, inner.nodes.len())
    }

    /// A usage report from `node`.
    pub fn report(&self, node: &str, usage: &pb::UsageReport) {
        let mut inner = self.lock();
        let Some(n) = inner.nodes.get_mut(node) else {
            return;
        };
        for k in &usage.keys {
            let entry = n.demand.entry(k.key_id.clone()).or_default();
            entry.1 = entry.1.saturating_add(k.admitted.saturating_add(k.refused));
        }
    }

    /// `node`'s current leases.
    pub fn leases_for(&self, node: &str) -> Vec<pb::KeyLease> {
        self.lock().leases.get(node).cloned().unwrap_or_default()
    }

    /// Folds the reports into demand and re-splits; every [`REBALANCE_EVERY`], forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REBALANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let mut inner = self.lock();
            for node in inner.nodes.values_mut() {
                for (avg, fresh) in node.demand.values_mut() {
                    *avg = 0.5 * *avg + 0.5 * (*fresh as f64);
                    *fresh = 0;
                }
                node.demand.retain(|_, (avg, _)| *avg > 0.01);
            }
            self.rebalance(&mut inner);
        }
    }

    /// Recomputes every node's leases; bumps the generation when any changed.
    fn rebalance(&self, inner: &mut Inner) {
        let auth = self.keys.snapshot();
        let names: Vec<String> = inner.nodes.keys().cloned().collect();
        let mut next: BTreeMap<String, Vec<pb::KeyLease>> =
            names.iter().map(|n| (n.clone(), Vec::new())).collect();
        for key in auth
            .keys
            .iter()
            .filter(|k| k.rpm > 0 || k.tpm > 0 || k.max_concurrent > 0)
        {
            let demand: Vec<f64> = names
                .iter()
                .map(|n| inner.nodes[n].demand.get(&key.id).map_or(0.0, |d| d.0))
                .collect();
            let (rpm, tpm, conc) = (
                split(key.rpm, &demand),
                split(key.tpm, &demand),
                split(key.max_concurrent, &demand),
            );
            for (i, name) in names.iter().enumerate() {
                if let Some(v) = next.get_mut(name) {
                    v.push(pb::KeyLease {
                        key_id: key.id.clone(),
                        rpm: rpm[i],
                        tpm: tpm[i],
                        max_concurrent: conc[i],
                    });
                }
            }
        }
        if next != inner.leases {
            inner.leases = next;
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Changes;
    use crate::keys::{AuthMode, KeyRequest};
    use crate::store::Store;

    #[test]
    fn shares_sum_to_the_limit_and_follow_demand() {
        assert_eq!(split(60, &[0.0, 0.0]), [30, 30], "no demand: equal");
        assert_eq!(split(61, &[0.0, 0.0]).iter().sum::<u32>(), 61);
        let busy = split(100, &[30.0, 0.0]);
        assert_eq!(busy, [88, 12], "a quarter equally, the rest by demand");
        for (limit, demand) in [
            (7, vec![1.0, 5.0, 0.0]),
            (1, vec![3.0, 3.0]),
            (1000, vec![0.3; 7]),
        ] {
            assert_eq!(
                split(limit, &demand).iter().sum::<u32>(),
                limit,
                "{limit} {demand:?}"
            );
        }
        assert!(split(5, &[]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn membership_and_reports_move_the_shares() {
        let keys = Arc::new(Keys::open(
            AuthMode::Keys,
            Store::ephemeral(),
            Changes::new(),
            Vec::new(),
        ));
        let issued = keys
            .create(KeyRequest {
                name: "k".into(),
                rpm: Some(100),
                ..Default::default()
            })
            .await
            .expect("key");
        let leases = Leases::new(keys);
        let mut gen = leases.subscribe();
        leases.connected("p1", 1);
        assert_eq!(
            leases.leases_for("p1")[0].rpm,
            100,
            "alone: the whole limit"
        );
        assert!(gen.has_changed().expect("open"));
        gen.borrow_and_update();
        leases.connected("p2", 2);
        assert_eq!(
            (
                leases.leases_for("p1")[0].rpm,
                leases.leases_for("p2")[0].rpm
            ),
            (50, 50)
        );
        assert_eq!(leases.leases_for("p1")[0].key_id, issued.id);
        // p1 is busy: after a rebalance it holds most of the limit.
        leases.report(
            "p1",
            &pb::UsageReport {
                keys: vec![pb::KeyUsage {
                    key_id: issued.id.clone(),
                    admitted: 40,
                    refused: 10,
                }],
            },
        );
        tokio::spawn(leases.clone().run());
        tokio::time::sleep(REBALANCE_EVERY + Duration::from_millis(10)).await;
        let (a, b) = (
            leases.leases_for("p1")[0].rpm,
            leases.leases_for("p2")[0].rpm,
        );
        assert_eq!(a + b, 100);
        assert_eq!((a, b), (88, 12));
        // p2's old stream ending after it reconnected changes nothing; its new one ending does.
        leases.connected("p2", 3);
        leases.disconnected("p2", 2);
        assert_eq!(leases.leases_for("p2").len(), 1);
        leases.disconnected("p2", 3);
        assert!(leases.leases_for("p2").is_empty());
        assert_eq!(leases.leases_for("p1")[0].rpm, 100);
    }

    #[test]
    fn membership_orders_nodes_and_a_leaving_node_always_signals() {
        let keys = Arc::new(Keys::open(
            AuthMode::Open,
            Store::ephemeral(),
            Changes::new(),
            Vec::new(),
        ));
        let leases = Leases::new(keys);
        leases.connected("p-b", 1);
        leases.connected("p-a", 2);
        assert_eq!(leases.membership("p-a"), (0, 2));
        assert_eq!(leases.membership("p-b"), (1, 2));
        let mut gen = leases.subscribe();
        gen.borrow_and_update();
        // No key has limits, so no lease changes: the endpoint shares still must be re-sent.
        leases.disconnected("p-a", 2);
        assert!(gen.has_changed().expect("open"), "a leave is signalled");
        assert_eq!(leases.membership("p-b"), (0, 1));
    }
}
