//! `multiverse-proxy`: the data plane. A pingora proxy that routes OpenAI traffic by the body's
//! `model`, TEI HTTP by model and TEI gRPC by metadata, holding its routing table in an
//! `ArcSwap` that control planes (or a static routes file) update.
//!
//! [`server::Proxy`] builds a proxy from a [`config::ProxyConfig`], starts it (in-process:
//! tests run as many as they like) and stops it; [`cli`] is the binary around it.
//!
//! The modules, as a request's life and what surrounds it:
//! - [`request`] — one request: the pingora phases ([`request::gateway`]) and the steps they
//!   delegate to (route family and model, endpoint, upstream rewrite, retry, error responses).
//! - [`routing`] — where requests can go: the table, snapshot → table, endpoint choice, endpoint
//!   state (load + outlier ejection), the `ArcSwap`.
//! - [`sources`] — where routes come from: [`sources::discovery`] (control planes) or
//!   [`sources::standalone`] (a routes file, reloaded on SIGHUP).
//! - [`ops`] — admin listener, metrics, drain.
//! - [`tls`] — the TLS client listener's certificate, reloaded on SIGHUP.
//! - [`config`] — the TOML configuration and its validation.
#![forbid(unsafe_code)]

pub mod batch;
pub mod cli;
pub mod config;
pub mod ops;
pub mod request;
pub mod routing;
pub mod server;
pub mod sources;
pub mod tls;

pub use routing::TableState;
pub use server::{Proxy, StartError, Stop};
/// The routes file and its loader, at the path tools have always imported them from.
pub use sources::standalone;
