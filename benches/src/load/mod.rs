//! Load generation and latency reporting for Multiverse's benchmarks.
//!
//! The project's rule is that speed is shown by benchmarks run under open-loop load, recorded
//! in hdrhistograms and compared side by side with a direct connection in the same run. These
//! modules are the parts of that; `latency-check` (src/bin/latency-check.rs) is a single quick
//! check built from them and `bench` (src/bin/bench/) the full suite (HTTP/1.1, h2c, SSE and
//! gRPC scenarios against the mocks directly, through the proxy, nginx and haproxy; route
//! propagation; memory):
//!
//! - [`schedule`]: open-loop, constant-rate arrivals; latency is measured from each request's
//!   *intended* send time, so coordinated omission is corrected.
//! - [`engine`]: open-loop and closed-loop (max throughput) runs over any protocol, targets
//!   interleaved, results in hdrhistograms.
//! - [`http`]: a bounded pool of HTTP/1.1 keep-alive connections to one target (hyper).
//! - [`h2`]: an h2c (HTTP/2 prior knowledge) client.
//! - [`grpc`]: TEI gRPC clients: unary `Embed`, and per-message round trips on `EmbedStream`.
//! - [`sse`]: timing server-sent events (first event, gaps).
//! - [`scenario`]: the latency scenarios and their requests.
//! - [`stack`]: the mocks, the proxy, nginx and haproxy a run measures, and the routes file they share.
//! - [`nginx`]: finding, configuring and running nginx as the comparison proxy.
//! - [`haproxy`]: the same for haproxy, the second comparison proxy.
//! - [`propagation`]: the control plane's config, its admin API, and waiting for proxies to
//!   route a change.
//! - [`rss`]: resident memory of a process.
//! - [`report`]: hdrhistogram summaries, the side-by-side table and the "added" row.
//! - [`machine`]: the command line and machine description recorded with every result.
//! - [`budget`]: allocations and syscalls one proxied request may cost (issue 18).
//! - [`keyed`]: the keys-mode routes (1 000 keys, an rpm-limited bench key).
//!
//! The processes a run measures are started, waited for and killed by `multiverse-testkit`.

pub mod budget;
pub mod engine;
pub mod grpc;
pub mod h2;
pub mod haproxy;
pub mod http;
pub mod keyed;
pub mod machine;
pub mod nginx;
pub mod propagation;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod schedule;
pub mod sse;
pub mod stack;
