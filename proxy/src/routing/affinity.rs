//! `lb = "prefix_affinity"`: bounded-load rendezvous hashing of a request's key (its prompt
//! prefix or session header, [`crate::request::prefix_hash`]).
//!
//! Each eligible endpoint scores `splitmix64(key ^ fnv1a(endpoint id))`; the highest score
//! wins (highest random weight), so every proxy replica, with no shared state and whatever the
//! order of its endpoints, sends a key to the same endpoint, and removing an endpoint moves only
//! the keys it had. Bounded load (Mirrokni et al., "Consistent hashing with bounded loads"): an
//! endpoint whose in-flight count would exceed `ceil(c × (total + 1) / n)` (`c` =
//! `affinity.load_factor`; the load is this proxy's in-flight count plus the engine's own fresh
//! load, [`crate::routing::load`]) is passed over for the next one in score
//! order. Weights are not used. Cost: one FNV-1a of each eligible endpoint's id per pass, one
//! pass when the first choice has room, no allocation, no lock.

use std::hash::Hasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fnv::FnvHasher;

use crate::routing::table::Endpoint;

/// A request's affinity: its key and the load bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affinity {
    pub key: u64,
    /// `c`: an endpoint takes the request while its load stays within `c` × the mean.
    pub load_factor: f64,
}

/// The rendezvous score of `id` for `key`.
pub fn score(key: u64, id: &str) -> u64 {
    let mut h = FnvHasher::default();
    h.write(id.as_bytes());
    splitmix64(key ^ h.finish())
}

/// A strong 64-bit mix, so that nearby keys and ids score independently.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The bounded-load rendezvous choice among `n` candidates: `candidate(i)` is `Some((score,
/// load))` for an eligible one. Returns the highest-scoring candidate whose load + 1 is within
/// `ceil(load_factor × (total load + 1) / eligible)`, walking down the score order.
pub fn choose(
    n: usize,
    candidate: impl Fn(usize) -> Option<(u64, u64)>,
    load_factor: f64,
) -> Option<usize> {
    let (mut eligible, mut total) = (0u64, 0u64);
    let mut top: Option<(u64, usize)> = None;
    for i in 0..n {
        if let Some((s, load)) = candidate(i) {
            eligible += 1;
            total = total.saturating_add(load);
            if top.is_none_or(|t| (s, i) > t) {
                top = Some((s, i));
            }
        }
    }
    let first = top?;
    let cap = (load_factor * (total as f64 + 1.0) / eligible as f64).ceil() as u64;
    let cap = cap.max(1);
    let mut current = first;
    // At most `eligible` steps down the order; some endpoint always has room (the least loaded
    // is at or below the mean), the first choice is the fallback all the same.
    for _ in 0..eligible {
        let (_, i) = current;
        if candidate(i).is_some_and(|(_, load)| load.saturating_add(1) <= cap) {
            return Some(i);
        }
        // The next one below `current` in score order.
        let mut next: Option<(u64, usize)> = None;
        for j in 0..n {
            if let Some((s, _)) = candidate(j) {
                if (s, j) < current && next.is_none_or(|t| (s, j) > t) {
                    next = Some((s, j));
                }
            }
        }
        match next {
            Some(c) => current = c,
            None => break,
        }
    }
    Some(first.1)
}

/// The endpoint (index in `eps`) for `affinity` among those `eligible` admits; an endpoint's
/// load is its in-flight count plus its engine's fresh load at `load_now` in whole requests
/// ([`crate::routing::load`]).
pub fn pick(
    eps: &[Arc<Endpoint>],
    eligible: &dyn Fn(usize, &Arc<Endpoint>) -> bool,
    affinity: Affinity,
    load_now: u64,
) -> Option<usize> {
    choose(
        eps.len(),
        |i| {
            let e = &eps[i];
            eligible(i, e).then(|| {
                let s = &e.state;
                (
                    score(affinity.key, &e.id),
                    s.in_flight.load(Ordering::Relaxed) + s.engine.cost(load_now) / 4,
                )
            })
        },
        affinity.load_factor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The choice among endpoints named `ids` with `loads`, as a name.
    fn chosen<'a>(key: u64, ids: &[&'a str], loads: &[u64], c: f64) -> Option<&'a str> {
        choose(ids.len(), |i| Some((score(key, ids[i]), loads[i])), c).map(|i| ids[i])
    }

    fn by_score<'a>(key: u64, ids: &[&'a str]) -> Vec<&'a str> {
        let mut v = ids.to_vec();
        v.sort_by_key(|id| std::cmp::Reverse(score(key, id)));
        v
    }

    const IDS: [&str; 4] = ["vllm-a", "vllm-b", "vllm-c", "vllm-d"];

    #[test]
    fn idle_endpoints_give_the_top_score() {
        for key in 0..200u64 {
            let top = by_score(key, &IDS)[0];
            assert_eq!(chosen(key, &IDS, &[0; 4], 1.25), Some(top));
        }
    }

    #[test]
    fn keys_spread_over_endpoints() {
        let mut counts = [0usize; 4];
        for key in 0..4000u64 {
            let i = choose(4, |i| Some((score(key, IDS[i]), 0)), 1.25).expect("one");
            counts[i] += 1;
        }
        for c in counts {
            assert!((800..=1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn an_overloaded_endpoint_spills_to_the_next_in_score_order() {
        let key = 42;
        let order = by_score(key, &IDS);
        let pos = |id: &str| IDS.iter().position(|x| *x == id).expect("id");
        // 8 in flight on the first choice, none elsewhere: cap = ceil(1.25 × 9 / 4) = 3.
        let mut loads = [0u64; 4];
        loads[pos(order[0])] = 8;
        assert_eq!(chosen(key, &IDS, &loads, 1.25), Some(order[1]));
        // The second is over the bound too (cap = ceil(1.25 × 15 / 4) = 5 < 6 + 1): the third.
        loads[pos(order[1])] = 6;
        assert_eq!(chosen(key, &IDS, &loads, 1.25), Some(order[2]));
        // At low load the bound is tight: one in flight of one fills ceil(1.25 × 2 / 4) = 1.
        let mut light = [0u64; 4];
        light[pos(order[0])] = 1;
        assert_eq!(chosen(key, &IDS, &light, 1.25), Some(order[1]));
        // A generous factor keeps it on the first choice.
        assert_eq!(chosen(key, &IDS, &light, 4.0), Some(order[0]));
    }

    #[test]
    fn ineligible_endpoints_are_skipped_and_none_without_any() {
        let key = 7;
        let order = by_score(key, &IDS);
        let top = IDS.iter().position(|x| *x == order[0]).expect("id");
        let got = choose(4, |i| (i != top).then(|| (score(key, IDS[i]), 0)), 1.25);
        assert_eq!(got.map(|i| IDS[i]), Some(order[1]));
        assert_eq!(choose(4, |_| None, 1.25), None);
    }

    proptest! {
        /// Two replicas, whose tables list the same endpoints in other orders, choose the same
        /// endpoint for every key.
        #[test]
        fn replicas_agree_whatever_the_order(
            key in any::<u64>(),
            n in 1usize..12,
            rotate in 0usize..12,
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("ep-{i}")).collect();
            let mut other = ids.clone();
            other.rotate_left(rotate % n);
            other.reverse();
            let a = choose(n, |i| Some((score(key, &ids[i]), 0)), 1.25).map(|i| &ids[i]);
            let b = choose(n, |i| Some((score(key, &other[i]), 0)), 1.25).map(|i| &other[i]);
            prop_assert_eq!(a, b);
        }

        /// Removing one endpoint moves only the keys that were on it.
        #[test]
        fn removing_an_endpoint_moves_only_its_keys(
            keys in proptest::collection::vec(any::<u64>(), 1..64),
            n in 2usize..10,
            gone in 0usize..10,
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8000")).collect();
            let gone = gone % n;
            let rest: Vec<String> =
                ids.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, s)| s.clone()).collect();
            for key in keys {
                let before = choose(n, |i| Some((score(key, &ids[i]), 0)), 1.25).map(|i| &ids[i]);
                let after =
                    choose(n - 1, |i| Some((score(key, &rest[i]), 0)), 1.25).map(|i| &rest[i]);
                if before != Some(&ids[gone]) {
                    prop_assert_eq!(before, after);
                } else {
                    prop_assert_ne!(after, Some(&ids[gone]));
                }
            }
        }
    }
}
