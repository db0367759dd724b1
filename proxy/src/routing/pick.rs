//! Chooses the endpoint for one attempt of a request.
//!
//! Skips endpoints that take no new requests (UNHEALTHY, DRAINING, TIMEOUT) and those this request
//! already tried; DEGRADED ones are used only when nothing healthy is left. Strategies: round
//! robin, weighted random, least outstanding requests by power of two choices (the default;
//! in flight plus the engine's own fresh load when the control plane reports it, [`load`]),
//! peak EWMA (power of two choices over each endpoint's latency average × (in-flight + 1)), and
//! prefix affinity ([`affinity`]: least request for a request without a key).
//! Lock-free and allocation-free: it walks the route's endpoint slice. `now` (milliseconds of
//! the gateway's clock) decides which endpoints are ejected and which are over their
//! `max_requests_per_sec` (skipped while another has room; [`rate_blocked`] when all are).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::routing::affinity::{self, Affinity};
use crate::routing::load;
use crate::routing::table::{Endpoint, Health, LbStrategy, ProtoClass, Route};

/// Endpoints a request already tried, by index in the route (first 64 tracked).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    pub fn mark(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

/// What an attempt needs from an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// The client's traffic class: HTTP endpoints for HTTP APIs, gRPC endpoints for gRPC.
    pub class: ProtoClass,
    /// `x-instance`: only this endpoint (index in the route).
    pub pinned: Option<usize>,
    /// Its prefix / session key, for `lb = "prefix_affinity"`.
    pub affinity: Option<Affinity>,
}

impl Want {
    fn allows(&self, i: usize, e: &Endpoint, tried: Tried, now: u64) -> bool {
        self.allows_busy(i, e, tried, now) && e.has_room() && e.under_rate(now)
    }

    /// [`Want::allows`] whatever the endpoint's load (`max_concurrent`, its rate).
    fn allows_busy(&self, i: usize, e: &Endpoint, tried: Tried, now: u64) -> bool {
        !tried.contains(i)
            && self.pinned.is_none_or(|p| p == i)
            && e.protocol.class() == self.class
            && e.health.accepts_new()
            && !e.state.outlier.is_ejected(now)
    }
}

/// Whether any endpoint could take this attempt at `now`, once it has room below its
/// `max_concurrent` (no side effects, unlike [`pick`]; admission queues for busy ones).
pub fn any_eligible(route: &Route, tried: Tried, want: &Want, now: u64) -> bool {
    route
        .endpoints
        .iter()
        .enumerate()
        .any(|(i, e)| want.allows_busy(i, e, tried, now))
}

/// When every endpoint that could take this attempt is over its `max_requests_per_sec`: the
/// soonest one of them admits again. `None` when one is under its rate (it may be busy: that
/// is the queue's business) or none could take it at all.
pub fn rate_blocked(route: &Route, tried: Tried, want: &Want, now: u64) -> Option<Duration> {
    let mut soonest: Option<Duration> = None;
    for (i, e) in route.endpoints.iter().enumerate() {
        if !want.allows_busy(i, e, tried, now) {
            continue;
        }
        if e.under_rate(now) {
            return None;
        }
        let after = e.rate_retry_after(now);
        soonest = Some(soonest.map_or(after, |s| s.min(after)));
    }
    soonest
}

/// The endpoints [`rate_blocked`] found over their rate (for the sheds metric).
pub fn over_rate<'a>(
    route: &'a Route,
    tried: Tried,
    want: &'a Want,
    now: u64,
) -> impl Iterator<Item = &'a Endpoint> + 'a {
    route
        .endpoints
        .iter()
        .enumerate()
        .filter(move |(i, e)| want.allows_busy(*i, e, tried, now) && !e.under_rate(now))
        .map(|(_, e)| e.as_ref())
}

/// [`pick`], and the pick counted in flight on its endpoint ([`Endpoint::reserve`]) and in its
/// rate ([`Endpoint::take_rate`]); a pick whose last slot or rate another request took
/// meanwhile is picked again (a few times).
pub fn pick_reserved(route: &Route, tried: Tried, want: &Want, now: u64) -> Option<usize> {
    for _ in 0..4 {
        let i = pick(route, tried, want, now)?;
        let e = &route.endpoints[i];
        if e.take_rate(now) && e.reserve() {
            return Some(i);
        }
    }
    None
}

/// Picks an endpoint index for the next attempt at `now`, or `None` when nothing is eligible.
pub fn pick(route: &Route, tried: Tried, want: &Want, now: u64) -> Option<usize> {
    let healthy =
        |i: usize, e: &Arc<Endpoint>| want.allows(i, e, tried, now) && e.health != Health::Degraded;
    let degraded =
        |i: usize, e: &Arc<Endpoint>| want.allows(i, e, tried, now) && e.health == Health::Degraded;
    pick_among(route, &healthy, now, want.affinity)
        .or_else(|| pick_among(route, &degraded, now, want.affinity))
}

fn pick_among(
    route: &Route,
    eligible: &dyn Fn(usize, &Arc<Endpoint>) -> bool,
    now: u64,
    affinity: Option<Affinity>,
) -> Option<usize> {
    let eps = &route.endpoints;
    let n = eps
        .iter()
        .enumerate()
        .filter(|(i, e)| eligible(*i, e))
        .count();
    match n {
        0 => return None,
        1 => return eps.iter().enumerate().position(|(i, e)| eligible(i, e)),
        _ => {}
    }
    // The k-th eligible endpoint's index.
    let nth = |k: usize| {
        eps.iter()
            .enumerate()
            .filter(|(i, e)| eligible(*i, e))
            .nth(k)
            .map(|(i, _)| i)
    };
    if let (LbStrategy::PrefixAffinity, Some(a)) = (route.policy.lb, affinity) {
        return affinity::pick(eps, eligible, a, load::pick_now());
    }
    let mut rng = rand::rng();
    match route.policy.lb {
        LbStrategy::RoundRobin => nth(route.cursor.fetch_add(1, Ordering::Relaxed) % n),
        LbStrategy::Weighted => {
            let total: u64 = eps
                .iter()
                .enumerate()
                .filter(|(i, e)| eligible(*i, e))
                .map(|(_, e)| u64::from(e.weight))
                .sum();
            let mut ticket = rng.random_range(0..total.max(1));
            for (i, e) in eps.iter().enumerate() {
                if !eligible(i, e) {
                    continue;
                }
                let w = u64::from(e.weight);
                if ticket < w {
                    return Some(i);
                }
                ticket -= w;
            }
            nth(n - 1)
        }
        LbStrategy::PeakEwma => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ia, ib) = (nth(a)?, nth(b)?);
            let cost = |i: usize| {
                // +1 ms: load still counts where latency rounds to 0.
                let s = &eps[i].state;
                (s.latency.value(now) + 1.0) * (s.in_flight.load(Ordering::Relaxed) + 1) as f64
            };
            Some(if cost(ib) < cost(ia) { ib } else { ia })
        }
        LbStrategy::LeastRequest | LbStrategy::PrefixAffinity => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ia, ib) = (nth(a)?, nth(b)?);
            let load_now = load::pick_now();
            let load = |i: usize| {
                // In quarter requests: in flight plus the engine's fresh load
                // ([`load`]), normalised by weight so a heavier endpoint takes
                // proportionally more.
                let s = &eps[i].state;
                let cost = 4 * s.in_flight.load(Ordering::Relaxed) + s.engine.cost(load_now);
                cost * 256 / u64::from(eps[i].weight.max(1))
            };
            Some(if load(ib) < load(ia) { ib } else { ia })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::fixtures::route_of;
    use multiverse_proto::discovery::v1 as pb;

    fn route(lb: pb::LbStrategy, healths: &[pb::HealthStatus], weights: &[u32]) -> Arc<Route> {
        route_of(lb, healths, weights)
    }

    use pb::HealthStatus as H;

    /// Any time of the tests' clock.
    const NOW: u64 = 1;

    const HTTP: Want = Want {
        class: ProtoClass::Http,
        pinned: None,
        affinity: None,
    };

    #[test]
    fn pins_and_ejections_are_respected() {
        let r = route(pb::LbStrategy::RoundRobin, &[H::Healthy; 3], &[1; 3]);
        let pin = Want {
            class: ProtoClass::Http,
            pinned: Some(2),
            affinity: None,
        };
        for _ in 0..5 {
            assert_eq!(pick(&r, Tried::default(), &pin, NOW), Some(2));
        }
        let grpc = Want {
            class: ProtoClass::Grpc,
            pinned: None,
            affinity: None,
        };
        assert_eq!(
            pick(&r, Tried::default(), &grpc, NOW),
            None,
            "no gRPC endpoint"
        );
        let cfg = crate::routing::outlier::OutlierConfig {
            consecutive_failures: 1,
            base_ejection: std::time::Duration::from_secs(60),
            max_ejection: std::time::Duration::from_secs(60),
            max_ejection_percent: 100,
        };
        r.record_failure(0, &cfg, NOW);
        r.record_failure(1, &cfg, NOW);
        for _ in 0..5 {
            assert_eq!(
                pick(&r, Tried::default(), &HTTP, NOW),
                Some(2),
                "ejected ones skipped"
            );
        }
        // A minute later both are back (round robin reaches all three again).
        let later = NOW + 60_000;
        let mut seen: Vec<_> = (0..3)
            .filter_map(|_| pick(&r, Tried::default(), &HTTP, later))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn never_picks_unavailable_or_tried() {
        let r = route(
            pb::LbStrategy::Unspecified,
            &[
                H::Unhealthy,
                H::Healthy,
                H::Draining,
                H::Timeout,
                H::Unknown,
            ],
            &[1; 5],
        );
        let mut tried = Tried::default();
        for _ in 0..200 {
            let i = pick(&r, tried, &HTTP, NOW).expect("one eligible");
            assert!(i == 1 || i == 4, "picked {i}");
        }
        tried.mark(1);
        assert_eq!(pick(&r, tried, &HTTP, NOW), Some(4));
        tried.mark(4);
        assert_eq!(pick(&r, tried, &HTTP, NOW), None);
    }

    #[test]
    fn degraded_only_as_last_resort() {
        let r = route(
            pb::LbStrategy::RoundRobin,
            &[H::Degraded, H::Healthy],
            &[1, 1],
        );
        for _ in 0..10 {
            assert_eq!(pick(&r, Tried::default(), &HTTP, NOW), Some(1));
        }
        let mut t = Tried::default();
        t.mark(1);
        assert_eq!(pick(&r, t, &HTTP, NOW), Some(0));
    }

    #[test]
    fn round_robin_alternates() {
        let r = route(pb::LbStrategy::RoundRobin, &[H::Healthy; 3], &[1; 3]);
        let got: Vec<_> = (0..6)
            .filter_map(|_| pick(&r, Tried::default(), &HTTP, NOW))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let r = route(pb::LbStrategy::LeastRequest, &[H::Healthy; 2], &[1; 2]);
        r.endpoints[0].state.in_flight.store(10, Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(pick(&r, Tried::default(), &HTTP, NOW), Some(1));
        }
    }

    #[test]
    fn an_endpoint_over_its_rate_is_skipped_and_all_over_is_rate_blocked_across_swaps() {
        use crate::routing::snapshot::{parse_socket_addr, PlaneRoutes};
        use crate::routing::table::RoutingTable;
        use std::collections::{BTreeMap, HashMap};

        let ep = |id: &str, port: u16, rps: u32| pb::Endpoint {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            health: H::Healthy as i32,
            max_requests_per_sec: rps,
            ..Default::default()
        };
        let snap = pb::RouteSnapshot {
            models: vec![pb::Model {
                name: "m".into(),
                endpoints: vec![ep("a", 1, 2), ep("b", 2, 0)],
                ..Default::default()
            }],
            auth: None,
        };
        let mut planes = BTreeMap::new();
        planes.insert(
            "cp".to_string(),
            PlaneRoutes::from_snapshot("1", Some(&snap), &parse_socket_addr).expect("valid"),
        );
        let mut states = HashMap::new();
        let mut merge = || {
            RoutingTable::merge(
                &planes,
                "test",
                &mut states,
                &mut HashMap::new(),
                &mut HashMap::new(),
            )
        };
        let first = merge();
        let r = first.route("m").expect("route");
        assert!(r.limited, "a rate makes the route go through admission");
        let picks: Vec<usize> = (0..10)
            .filter_map(|_| pick_reserved(r, Tried::default(), &HTTP, NOW))
            .collect();
        assert_eq!(picks.len(), 10, "b always has room");
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 2, "a's burst");
        assert_eq!(rate_blocked(r, Tried::default(), &HTTP, NOW), None);
        // A new table version: a's cell is the same one, still spent.
        let second = merge();
        let r = second.route("m").expect("route");
        let mut only_a = Tried::default();
        only_a.mark(1);
        assert_eq!(pick_reserved(r, only_a, &HTTP, NOW), None);
        assert_eq!(
            rate_blocked(r, only_a, &HTTP, NOW),
            Some(Duration::from_millis(500)),
            "one per 500 ms at 2/s"
        );
        assert_eq!(over_rate(r, only_a, &HTTP, NOW).count(), 1);
        assert_eq!(pick_reserved(r, only_a, &HTTP, NOW + 499), None);
        assert_eq!(pick_reserved(r, only_a, &HTTP, NOW + 500), Some(0));
    }

    #[test]
    fn least_request_counts_fresh_engine_load_with_in_flight() {
        let r = route(pb::LbStrategy::LeastRequest, &[H::Healthy; 2], &[1; 2]);
        let heavy = pb::EndpointLoad {
            endpoint_id: "e0".into(),
            waiting: 50,
            ..Default::default()
        };
        r.endpoints[0]
            .state
            .engine
            .set(&heavy, 1000, load::now_ms());
        // 10 in flight on e1 is still less than e0's queue of 50.
        r.endpoints[1].state.in_flight.store(10, Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(pick(&r, Tried::default(), &HTTP, NOW), Some(1));
        }
        // Read long ago (older than 3 intervals on arrival): ignored, e0 is the idle one.
        let stale = pb::EndpointLoad {
            age_ms: u32::MAX,
            ..heavy
        };
        r.endpoints[0]
            .state
            .engine
            .set(&stale, 1000, load::now_ms());
        for _ in 0..50 {
            assert_eq!(pick(&r, Tried::default(), &HTTP, NOW), Some(0));
        }
    }

    #[test]
    fn prefix_affinity_spills_off_an_endpoint_whose_engine_queues() {
        let r = route(pb::LbStrategy::PrefixAffinity, &[H::Healthy; 4], &[1; 4]);
        let want = Want {
            affinity: Some(Affinity {
                key: 42,
                load_factor: 1.25,
            }),
            ..HTTP
        };
        let first = pick(&r, Tried::default(), &want, NOW).expect("one");
        assert_eq!(
            pick(&r, Tried::default(), &want, NOW),
            Some(first),
            "sticky"
        );
        let queued = pb::EndpointLoad {
            endpoint_id: r.endpoints[first].id.clone(),
            waiting: 20,
            ..Default::default()
        };
        r.endpoints[first]
            .state
            .engine
            .set(&queued, 1000, load::now_ms());
        let next = pick(&r, Tried::default(), &want, NOW).expect("one");
        assert_ne!(next, first, "20 queued is over 1.25 × the mean: spills");
    }

    #[test]
    fn weighted_follows_weights() {
        let r = route(pb::LbStrategy::Weighted, &[H::Healthy; 2], &[1, 9]);
        let heavy = (0..2000)
            .filter(|_| pick(&r, Tried::default(), &HTTP, NOW) == Some(1))
            .count();
        assert!((1600..=1990).contains(&heavy), "heavy picked {heavy}/2000");
    }
}
