//! `multiverse-common`: what the proxy, the control plane and their tools share, so that each
//! exists once. No HTTP framework and no domain logic live here; everything is small, pure
//! where it can be, and unit-tested.
//!
//! - [`config`] — read a TOML file into any config struct; [`config::ConfigError`] names the
//!   file and the key; the host-name default for ids.
//! - [`telemetry`] — `tracing` to stderr: human by default, JSON with a flag, `RUST_LOG` level.
//! - [`signals`] — SIGTERM/SIGINT as one future, SIGHUP as a stream of reload requests.
//! - [`request_id`] — the `x-request-id` rule: a client's kept when usable, else made.
//! - [`backoff`] — exponential backoff with jitter, as a pure value.
//! - [`clock`] — an injectable monotonic time source (system, tokio's paused time, or manual).
//! - [`vocab`] — the shared enums (`ModelKind`, `Protocol`, `Health`, `LbStrategy`), each with
//!   one string table for `FromStr`, `Display` and serde, and their proto conversions.
//! - [`keys`] — inference API key secrets: their form, their SHA-256 and its hex spelling.
//! - [`rate`] — rate limits as lock-free GCRA cells.
//! - [`conn_limit`] — concurrent-connection limits, total and per client address, lock-free.
//! - [`time`] — RFC 3339 timestamps.
//! - [`sse`] — Server-Sent Events encoding (bytes only; no HTTP framework).
//! - [`paths`] — a crate's own directory while its tests run.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod clock;
pub mod config;
pub mod conn_limit;
pub mod keys;
pub mod otlp;
pub mod paths;
pub mod rate;
pub mod request_id;
pub mod signals;
pub mod sse;
pub mod telemetry;
pub mod time;
pub mod vocab;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use config::ConfigError;
pub use vocab::{Health, LbStrategy, ModelKind, ProtoClass, Protocol, UnknownName};
