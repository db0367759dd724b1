//! `multiverse-control`: the control plane. It knows the backends (and, later, the TEI
//! instances) of this host, turns them into route snapshots, and pushes them to every proxy.
//!
//! Its nouns:
//! - [`backends`] — external OpenAI-compatible servers (validation, probes, registry, SSRF);
//! - [`health`] — check results, thresholds, history (pure; the checks run in [`backends`]);
//! - [`instances`] — TEI processes: specs, supervision, probes, logs;
//! - [`gpu`] — GPU stats through NVML (or why they are unavailable);
//! - [`events`] — instance lifecycle events: log, SSE, webhooks;
//! - [`store`] — the durable desired state: its records, its file and its one writer;
//! - [`routes`] — desired state → the snapshot proxies receive, republished on [`changes`];
//! - [`discovery`] — the gRPC stream to proxies (publisher, per-proxy status);
//! - [`api`] — the operator REST API;
//! - [`metrics`] — Prometheus metrics;
//! - [`config`] — TOML + flags.
//!
//! `unsafe_code` is denied by the workspace lints; the one use (`pre_exec` in
//! [`instances::process`]) is allowed where it is, with its safety argument.

pub mod api;
pub mod backends;
pub mod changes;
pub mod config;
pub mod discovery;
pub mod events;
pub mod gpu;
pub mod health;
pub mod instances;
pub mod metrics;
pub mod routes;
pub mod store;
#[cfg(test)]
mod testing;
