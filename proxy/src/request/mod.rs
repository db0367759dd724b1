//! One request's life: the pingora phases ([`gateway`]) and the steps they delegate to, in the
//! order a request meets them.
//!
//! - [`connection`] — first its connection: admitted, or shed over `[clients]`' connection
//!   limits;
//! - [`ctx`] — what a request carries through its phases (the pinned table, its attempts);
//! - [`id`] and [`trace`] — its `x-request-id` and W3C trace context, kept or made;
//! - [`cors`] — browsers' origins: preflights answered, allowed origins' responses tagged;
//! - [`classify`] — its route family, from method, path and content type;
//! - [`client_limit`] — its client address's request rate (`[limits] per_ip_rpm`);
//! - [`auth`] — its inference key: found by hash, checked against the model, admitted by the
//!   key's limits;
//! - [`target`] — its model's route (headers, or the body's `model` through [`body`] and
//!   [`model_scan`]; for `lb = "prefix_affinity"`, the prompt-prefix key through
//!   [`prefix_hash`]);
//! - [`admit`] — a slot on an endpoint with a `max_concurrent`, or a wait in the model's queue;
//! - [`upstream`] — the peer and request rewrite for the endpoint of an attempt;
//! - [`retry`] — whether a failed attempt is tried elsewhere;
//! - [`midstream`] — a response its upstream cut after it started: ended in its body's terms;
//! - [`error`] — the one error type and its mapping; [`respond`] writes it (and `/v1/models`);
//! - [`observe`] — its in-flight count;
//! - [`usage`] — the response's token counts, read as it streams past (token metrics, tokens
//!   per minute); [`pace`] — an SSE stream's time to first token and inter-token gaps;
//!   [`stream_usage`] — a stream's usage asked of the backend for the client that did not,
//!   and its event hidden from it.
//! - [`spans`] — its phases as OTLP spans, when `[tracing] otlp_endpoint` is set.

pub mod admit;
pub mod auth;
pub mod body;
pub mod classify;
pub mod client_limit;
pub mod connection;
pub mod cors;
pub mod ctx;
pub mod error;
pub mod gateway;
pub mod hedge;
pub mod id;
pub mod midstream;
pub mod model_scan;
pub mod observe;
pub mod pace;
pub mod prefix_hash;
pub mod respond;
pub mod retry;
pub mod spans;
pub mod stream_usage;
pub mod target;
pub mod trace;
pub mod upstream;
pub mod usage;
