//! Fleet-wide endpoint rates: an instance's `[limits] max_requests_per_sec` is the total over
//! every proxy, so each connected proxy's stream carries its share of it in the snapshot's
//! `Endpoint.max_requests_per_sec`. The split is equal (the connected proxies in node-id
//! order, the remainder one each to the first), at least 1 per proxy, and redone when a proxy
//! connects or leaves (the snapshot is sent again, same version, new shares). A proxy that loses
//! its plane keeps its last share (with its routes), while the plane re-splits among the
//! proxies still connected: during a partition the fleet may admit the limit plus that share.
//! One that joins gets a share in its first snapshot.
//!
//! Tolerance: the fleet admits at most `max(limit, proxies)` per second, and as little as
//! `limit / proxies` when all traffic goes through one proxy (the split does not follow demand,
//! unlike the key leases: a balancer in front of the proxies spreads load evenly).

use multiverse_proto::discovery::v1 as pb;

/// The share of `limit` of the `index`-th of `proxies` proxies (0: unlimited stays 0).
pub fn share(limit: u32, index: usize, proxies: usize) -> u32 {
    if limit == 0 || proxies <= 1 {
        return limit;
    }
    let n = u32::try_from(proxies).unwrap_or(u32::MAX);
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    let base = limit / n + u32::from(i < limit % n);
    base.max(1)
}

/// Whether any endpoint of `snapshot` has a rate (only then do shares depend on membership).
pub fn any_limited(snapshot: &pb::RouteSnapshot) -> bool {
    snapshot
        .models
        .iter()
        .flat_map(|m| &m.endpoints)
        .any(|e| e.max_requests_per_sec > 0)
}

/// `snapshot` with every limited endpoint's rate replaced by the share of the `index`-th of
/// `proxies` proxies.
pub fn apply(snapshot: &mut pb::RouteSnapshot, index: usize, proxies: usize) {
    if proxies <= 1 {
        return;
    }
    for e in snapshot
        .models
        .iter_mut()
        .flat_map(|m| m.endpoints.iter_mut())
        .filter(|e| e.max_requests_per_sec > 0)
    {
        e.max_requests_per_sec = share(e.max_requests_per_sec, index, proxies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_limit_with_at_least_one_each() {
        assert_eq!(share(0, 0, 3), 0, "unlimited stays unlimited");
        assert_eq!(share(10, 0, 1), 10, "alone: the whole limit");
        assert_eq!(share(10, 0, 0), 10, "not yet counted: the whole limit");
        let of = |limit: u32, n: usize| (0..n).map(|i| share(limit, i, n)).collect::<Vec<_>>();
        assert_eq!(of(10, 2), [5, 5]);
        assert_eq!(of(10, 3), [4, 3, 3], "the remainder to the first");
        for (limit, n) in [(7, 3), (1000, 7), (5, 5), (999_999, 4)] {
            assert_eq!(of(limit, n).iter().sum::<u32>(), limit, "{limit} / {n}");
        }
        assert_eq!(of(2, 3), [1, 1, 1], "never 0 (which would mean unlimited)");
    }

    #[test]
    fn only_limited_endpoints_are_split() {
        let mut snap = pb::RouteSnapshot {
            models: vec![pb::Model {
                endpoints: vec![
                    pb::Endpoint {
                        id: "a".into(),
                        max_requests_per_sec: 9,
                        ..Default::default()
                    },
                    pb::Endpoint {
                        id: "b".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(any_limited(&snap));
        assert!(!any_limited(&pb::RouteSnapshot::default()));
        let whole = snap.clone();
        apply(&mut snap, 0, 1);
        assert_eq!(snap, whole, "one proxy: unchanged");
        apply(&mut snap, 2, 4);
        let rates: Vec<u32> = snap.models[0]
            .endpoints
            .iter()
            .map(|e| e.max_requests_per_sec)
            .collect();
        assert_eq!(rates, [2, 0]);
    }
}
