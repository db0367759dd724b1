//! Test fixtures: small routes built through the real snapshot conversion.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use multiverse_proto::discovery::v1 as pb;

use crate::routing::snapshot::{parse_socket_addr, PlaneRoutes};
use crate::routing::table::{Route, RoutingTable};

/// A one-model table's route with endpoints e0, e1, ... of the given health and weight.
pub(crate) fn route_of(
    lb: pb::LbStrategy,
    healths: &[pb::HealthStatus],
    weights: &[u32],
) -> Arc<Route> {
    let endpoints = healths
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (h, w))| pb::Endpoint {
            id: format!("e{i}"),
            address: format!("127.0.0.1:{}", 1000 + i),
            health: *h as i32,
            weight: *w,
            ..Default::default()
        })
        .collect();
    let snap = pb::RouteSnapshot {
        models: vec![pb::Model {
            name: "m".into(),
            policy: Some(pb::RoutingPolicy {
                lb: lb as i32,
                ..Default::default()
            }),
            endpoints,
            ..Default::default()
        }],
        auth: None,
    };
    let mut planes = BTreeMap::new();
    planes.insert(
        "cp".to_string(),
        PlaneRoutes::from_snapshot("1", Some(&snap), &parse_socket_addr).expect("valid"),
    );
    let table = RoutingTable::merge(
        &planes,
        "test",
        &mut HashMap::new(),
        &mut HashMap::new(),
        &mut HashMap::new(),
    );
    table.route("m").expect("route").clone()
}

/// Like [`route_of`] with least-request balancing and weight 1.
pub(crate) fn route_with(healths: &[pb::HealthStatus]) -> Arc<Route> {
    route_of(
        pb::LbStrategy::Unspecified,
        healths,
        &vec![1; healths.len()],
    )
}

/// A one-plane table of these models (literal addresses).
pub(crate) fn table_of(models: Vec<pb::Model>) -> RoutingTable {
    let snap = pb::RouteSnapshot { models, auth: None };
    let mut planes = BTreeMap::new();
    planes.insert(
        "cp".to_string(),
        PlaneRoutes::from_snapshot("1", Some(&snap), &parse_socket_addr).expect("valid"),
    );
    RoutingTable::merge(
        &planes,
        "test",
        &mut HashMap::new(),
        &mut HashMap::new(),
        &mut HashMap::new(),
    )
}
