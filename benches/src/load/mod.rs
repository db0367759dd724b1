//! Load generation and latency reporting for Multiverse's benchmarks.
//!
//! The project's rule is that speed is shown by benchmarks run under open-loop load, recorded
//! in hdrhistograms and compared side by side with a direct connection in the same run. These
//! modules are the reusable parts of that; `latency-check` (src/bin/latency-check.rs) is the
//! first program built from them, and the full benchmark suite (gRPC, SSE, comparison with
//! nginx) will reuse them:
//!
//! - [`schedule`]: open-loop, constant-rate arrivals; latency is measured from each request's
//!   *intended* send time, so coordinated omission is corrected.
//! - [`http`]: a bounded pool of HTTP/1.1 keep-alive connections to one target (hyper).
//! - [`report`]: hdrhistogram summaries, the side-by-side table and the "added" row.
//! - [`machine`]: the command line and machine description recorded with every result.
//! - [`process`]: child processes (mocks, the proxy) that are killed with the benchmark.

pub mod http;
pub mod machine;
pub mod process;
pub mod report;
pub mod schedule;
