//! Snapshot -> routing table (what a control plane sends): any bytes that prost decodes as a
//! `RouteSnapshot` become routes or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_proto::discovery::v1 as pb;
use multiverse_proxy::routing::snapshot::PlaneRoutes;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = pb::RouteSnapshot::decode(data) {
        // No DNS from a fuzzer: addresses resolve only when they are ip:port.
        let resolve = |a: &str| a.parse::<std::net::SocketAddr>().map_err(|e| e.to_string());
        let _ = PlaneRoutes::from_snapshot("v1", Some(&snapshot), &resolve);
    }
});
