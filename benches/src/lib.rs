//! Multiverse's benchmark crate: the load generator ([`load`]) behind the `bench` suite and the
//! quick `latency-check`. The processes a run measures (mock backends, `multiverse-proxy`,
//! `multiverse-control`) are started through `multiverse-testkit`, the mocks themselves live in
//! `multiverse-mocks`.

pub mod load;
