//! `multiverse-control`: the control plane of one GPU host. It supervises the host's TEI
//! instances, registers external OpenAI-compatible backends, checks their health, keeps what
//! operators asked for durable, turns all of it into route snapshots and pushes them to every
//! proxy.
//!
//! Its modules are its nouns, in layers that only depend downwards (`layers.toml`, checked by
//! `scripts/check-layers`):
//!
//! - [`app`] — the control plane assembled from a [`config`]: [`App::build`], [`App::serve`];
//! - [`api`] — the operator REST API, the only module that knows HTTP (axum): one file per
//!   resource, [`api::error`] maps every domain error to a code and a status;
//! - [`config`] — the TOML file: each module's settings gathered and validated;
//! - [`routes`] — desired state → the snapshot proxies receive, republished on [`changes`];
//! - [`discovery`] — the gRPC stream to proxies: versioned publisher, per-proxy ACK/NACK;
//! - [`load`] — engine-aware load: the endpoints' own metrics scraped and pushed to proxies;
//! - [`backends`] — external OpenAI-compatible servers: specs, admission (SSRF refusal, pinned
//!   addresses), registry, clients, probes and the recurring checks;
//! - [`instances`] — TEI processes: specs, the manager, the supervisor (a pure state machine
//!   and its driver), processes, probes, logs;
//! - [`models`] — models' routing policies (API, `[models.<name>]`, backends' and instances'
//!   own, layered field by field);
//! - [`events`] — instance lifecycle events: bus, SSE stream, webhooks;
//! - [`health`] — check results, thresholds and history (pure);
//! - [`gpu`] — GPU stats through NVML (or why they are unavailable), placement;
//! - [`system`] — the host's memory;
//! - [`metrics`] — Prometheus metrics;
//! - [`store`] — the durable desired state: its records, its file and its one writer;
//! - [`changes`] — the one "routes changed" signal;
//! - [`tls`] — TLS and mTLS (client CA, CN/SAN allow-list) for the discovery listener.
//!
//! `unsafe_code` is denied by the workspace lints; the one use (`pre_exec` in
//! [`instances::process`]) is allowed where it is, with its safety argument.

pub mod api;
pub mod app;
pub mod backends;
pub mod changes;
pub mod config;
pub mod discovery;
pub mod events;
pub mod gpu;
pub mod health;
pub mod instances;
pub mod keys;
pub mod load;
pub mod metrics;
pub mod models;
pub mod routes;
pub mod store;
pub mod system;
#[cfg(test)]
mod testing;
pub mod tls;

pub use app::{Addrs, App};
pub use config::ControlConfig;
