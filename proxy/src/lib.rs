//! `multiverse-proxy`: the data plane. A pingora proxy that routes OpenAI traffic by the body's
//! `model`, holding its routing table in an `ArcSwap` that control planes update over a
//! discovery stream.
//!
//! Modules in the order a request meets them:
//! - [`state`] — the current [`table::RoutingTable`], pinned by each request.
//! - [`gateway`] — the pingora phases of one request, each delegating to:
//!   - [`route`] — route family, the model (header or body via [`model`]), the model's route;
//!   - [`pick`] — the endpoint for this attempt;
//!   - [`upstream`] — the peer and the request rewrite for that endpoint;
//!   - [`retry`] — another endpoint or a final error;
//!   - [`respond`] — responses the proxy writes itself;
//!   - [`observe`] — metrics.
//!
//! Around the request path: [`discovery`] (snapshots in, ACK/NACK out) or [`standalone`]
//! (a static routes file, reloaded on SIGHUP), [`admin`] (operator endpoints), [`lifecycle`]
//! (drain on SIGTERM), [`config`] (TOML + flags).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod discovery;
pub mod gateway;
pub mod lifecycle;
pub mod model;
pub mod observe;
pub mod outlier;
pub mod pick;
pub mod respond;
pub mod retry;
pub mod route;
pub mod standalone;
pub mod state;
pub mod table;
pub mod upstream;

pub use state::TableState;
