//! `bench`'s command line ([`Args`]), the scenarios `--only` picks ([`Scenario`]), and the
//! settings in force ([`Settings`], quick or full defaults resolved), recorded in the JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use multiverse_benches::load::machine::{parse_non_negative, parse_positive};
use multiverse_benches::load::scenario::{Concurrency, Latency};

/// A scenario `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// OpenAI chat, non-streaming, HTTP/1.1.
    Chat,
    /// OpenAI chat, non-streaming, h2c.
    ChatH2c,
    /// OpenAI chat, SSE stream: time to first event, inter-event gaps.
    Sse,
    /// TEI HTTP /embed.
    EmbedHttp,
    /// TEI gRPC unary Embed.
    GrpcUnary,
    /// TEI gRPC bidi EmbedStream, per-message round trip.
    GrpcBidi,
    /// Closed-loop maximum throughput (chat HTTP/1.1, gRPC unary).
    Throughput,
    /// Chat HTTP/1.1 latency at each `--rates` rate, then closed-loop chat throughput with
    /// the proxy, nginx and haproxy at each `--rates-threads` thread count (issue 18's table).
    Rates,
    /// Route propagation from the control plane to N proxies; changes under load.
    Propagation,
    /// Proxy RSS idle, under load, over a soak.
    Memory,
    /// A 10k-model routing table: RSS and chat latency.
    #[value(name = "models-10k")]
    #[serde(rename = "models-10k")]
    Models10k,
    /// A proxy in keys mode vs an open one started the same way: chat latency (what the key
    /// check adds).
    Keys,
    /// Prefix-cache hits and TTFT, least_request vs prefix_affinity; prefix_affinity's
    /// hot-path cost.
    Prefix,
    /// The proxy asking streams' usage (`[usage] request_stream_usage`) vs not: sse latency.
    Usage,
    /// Rows/s of 10k short texts: one Arrow batch-embedding call vs `/embed` calls of 1 and of
    /// max_client_batch_size texts.
    Arrow,
    /// /v1/embeddings p50/p99 with one of two endpoints stalling 5 % of its requests, hedging
    /// off vs `hedge_after_ms`.
    Hedge,
    /// Each routing policy's hot-path cost against least_request (one proxy per policy,
    /// interleaved); least_request vs peak_ewma with one slow endpoint of two.
    Policies,
}

impl Scenario {
    pub fn latency(self) -> Option<Latency> {
        Some(match self {
            Scenario::Chat => Latency::Chat,
            Scenario::ChatH2c => Latency::ChatH2c,
            Scenario::Sse => Latency::Sse,
            Scenario::EmbedHttp => Latency::EmbedHttp,
            Scenario::GrpcUnary => Latency::GrpcUnary,
            Scenario::GrpcBidi => Latency::GrpcBidi,
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// Multiverse's benchmark suite: latency, throughput, propagation and memory, side by side
/// with a direct connection, nginx and haproxy.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    long_about = "Starts the mock backends, a standalone multiverse-proxy and (when installed) \
                  nginx and haproxy as the same kind of proxy, and measures: latency under \
                  open-loop load interleaved across direct / proxy / nginx / haproxy (HTTP/1.1, \
                  h2c, SSE, TEI HTTP, gRPC unary and bidi), closed-loop throughput, chat at \
                  several rates and at 1 and 2 proxy threads, route propagation from a control \
                  plane to N proxies (and failed requests while changes are pushed under \
                  load), and the proxy's memory (idle, under load, soak, 10k models). Exit \
                  status: 0 all good, 1 failed requests or missing samples, 2 could not run."
)]
pub struct Args {
    /// A short smoke run of every scenario (a second or two each, low rates); explicit flags
    /// win.
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (comma-separated or repeated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SCENARIO")]
    pub only: Vec<Scenario>,
    /// Write every result to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Open-loop arrivals per second per target in the latency scenarios [default: 2000; 100
    /// with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub rate: Option<f64>,
    /// SSE streams started per second per target [default: 100; 20 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub sse_rate: Option<f64>,
    /// Measured seconds per latency scenario [default: 15; 1 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring [default: 2; 0.3 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_non_negative)]
    pub warmup: Option<f64>,
    /// Pause between two SSE events of the mock, ms.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub chunk_interval_ms: u64,
    /// HTTP/1.1 keep-alive connections per target (the most requests in flight).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,
    /// HTTP/1.1 connections per target for SSE streams.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub sse_connections: u32,
    /// Requests in flight per target on the one h2c / gRPC connection.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub h2_in_flight: u32,
    /// Long-lived EmbedStream streams per target (grpc-bidi).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub bidi_streams: u32,
    /// Closed-loop workers per target (throughput).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Chat requests per second per arm in the prefix scenario [default: 200; 50 with
    /// --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub prefix_rate: Option<f64>,
    /// Embedding requests per second per arm in the hedge scenario [default: 100; 20 with
    /// --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub hedge_rate: Option<f64>,
    /// Chat requests per second per proxy in the policies scenario's hot-path run [default:
    /// 500; 100 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub policies_rate: Option<f64>,
    /// Chat requests per second per arm in the policies scenario's slow-endpoint run
    /// [default: 100; 20 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub slow_rate: Option<f64>,
    /// Seconds of each closed-loop turn [default: 2; 0.5 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    pub slice: Option<f64>,
    /// Closed-loop turns per target [default: 3; 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: Option<u32>,
    /// Proxies fed by the control plane (propagation).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub proxies: u32,
    /// Changes timed one by one (propagation) [default: 20; 4 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub changes: Option<u32>,
    /// Changes pushed during load (propagation) [default: 100; 20 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub load_changes: Option<u32>,
    /// Chat requests per second through the proxy while changes are pushed [default: 500;
    /// 100 with --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub load_rate: Option<f64>,
    /// Pause between two changes pushed under load, ms.
    #[arg(long, value_name = "MS", default_value_t = 30)]
    pub change_interval_ms: u64,
    /// Seconds of the memory soak (600 for the 10-minute soak) [default: 120; 2 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_positive)]
    pub soak_secs: Option<f64>,
    /// Chat requests per second through the proxy during the soak [default: 1000; 100 with
    /// --quick].
    #[arg(long, value_name = "R", value_parser = parse_positive)]
    pub soak_rate: Option<f64>,
    /// Models in the big routing table (models-10k).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub models: usize,
    /// Seconds after its intended send time a request counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_positive)]
    pub timeout: f64,
    /// Tokio worker threads of the open-loop generator (the pacer is one more thread).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Tokio worker threads of the closed-loop generator.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub closed_threads: u32,
    /// nginx worker processes [default: the number of CPUs, as the proxy's threads].
    #[arg(long, value_name = "N")]
    pub nginx_workers: Option<usize>,
    /// The nginx binary [default: `nginx` on PATH, or /usr/sbin/nginx].
    #[arg(long, value_name = "PATH")]
    pub nginx_bin: Option<PathBuf>,
    /// Leave nginx out even when installed.
    #[arg(long)]
    pub no_nginx: bool,
    /// haproxy threads (`nbthread`) [default: the number of CPUs, as the proxy's threads].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub haproxy_threads: Option<u32>,
    /// The haproxy binary [default: `haproxy` on PATH, or /usr/sbin/haproxy].
    #[arg(long, value_name = "PATH")]
    pub haproxy_bin: Option<PathBuf>,
    /// Leave haproxy out even when installed.
    #[arg(long)]
    pub no_haproxy: bool,
    /// Open-loop chat rates per target of the `rates` scenario [default: 50,1000,5000; 50,500
    /// with --quick].
    #[arg(long, value_name = "R,..", value_delimiter = ',', value_parser = parse_positive)]
    pub rates: Vec<f64>,
    /// Proxy threads (nginx workers, haproxy nbthread) of the `rates` scenario's closed loops.
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub rates_threads: Vec<u32>,
    /// Where mock-openai, mock-tei, multiverse-proxy and multiverse-control are [default: next
    /// to this executable].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// The settings in force, as recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub scenarios: Vec<Scenario>,
    pub rate_per_target: f64,
    pub sse_rate_per_target: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub chunk_interval_ms: u64,
    pub concurrency: Concurrency,
    pub closed_concurrency: usize,
    pub closed_slice_s: f64,
    pub closed_rounds: u32,
    pub closed_warmup_s: f64,
    pub proxies: usize,
    pub changes: u32,
    pub load_changes: u32,
    pub load_rate: f64,
    pub change_interval_ms: u64,
    pub soak_s: f64,
    pub soak_rate: f64,
    pub models: usize,
    pub timeout_s: f64,
    pub generator_threads: u32,
    pub closed_generator_threads: u32,
    pub proxy_threads: String,
    pub nginx_workers: usize,
    pub haproxy_threads: usize,
    /// The `rates` scenario: open-loop chat rates per target, closed-loop thread counts.
    pub rates: Vec<f64>,
    pub rates_threads: Vec<usize>,
    pub prefix_rate: f64,
    /// Texts of the arrow scenario (10 000; 300 with --quick).
    pub arrow_rows: usize,
    pub hedge_rate: f64,
    pub policies_rate: f64,
    pub slow_rate: f64,
}

impl Settings {
    pub fn from_args(args: &Args) -> Self {
        let q = args.quick;
        let pick = |full: f64, quick: f64| if q { quick } else { full };
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut scenarios: Vec<Scenario> = if args.only.is_empty() {
            Scenario::value_variants().to_vec()
        } else {
            args.only.clone()
        };
        scenarios.sort();
        scenarios.dedup();
        Self {
            quick: q,
            scenarios,
            rate_per_target: args.rate.unwrap_or(pick(2000.0, 100.0)),
            sse_rate_per_target: args.sse_rate.unwrap_or(pick(100.0, 20.0)),
            duration_s: args.duration.unwrap_or(pick(15.0, 1.0)),
            warmup_s: args.warmup.unwrap_or(pick(2.0, 0.3)),
            chunk_interval_ms: args.chunk_interval_ms,
            concurrency: Concurrency {
                http1_connections: args.connections as usize,
                sse_connections: args.sse_connections as usize,
                h2_in_flight: args.h2_in_flight as usize,
                bidi_streams: args.bidi_streams as usize,
            },
            closed_concurrency: args.concurrency as usize,
            closed_slice_s: args.slice.unwrap_or(pick(2.0, 0.5)),
            closed_rounds: args.rounds.unwrap_or(if q { 1 } else { 3 }),
            closed_warmup_s: pick(1.0, 0.2),
            proxies: args.proxies as usize,
            changes: args.changes.unwrap_or(if q { 4 } else { 20 }),
            load_changes: args.load_changes.unwrap_or(if q { 20 } else { 100 }),
            load_rate: args.load_rate.unwrap_or(pick(500.0, 100.0)),
            change_interval_ms: args.change_interval_ms,
            soak_s: args.soak_secs.unwrap_or(pick(120.0, 2.0)),
            soak_rate: args.soak_rate.unwrap_or(pick(1000.0, 100.0)),
            models: args.models,
            timeout_s: args.timeout,
            generator_threads: args.threads,
            closed_generator_threads: args.closed_threads,
            proxy_threads: format!("default (number of CPUs: {nproc})"),
            nginx_workers: args.nginx_workers.unwrap_or(nproc).max(1),
            haproxy_threads: args.haproxy_threads.map_or(nproc, |n| n as usize),
            rates: if args.rates.is_empty() {
                if q {
                    vec![50.0, 500.0]
                } else {
                    vec![50.0, 1000.0, 5000.0]
                }
            } else {
                args.rates.clone()
            },
            rates_threads: args.rates_threads.iter().map(|&n| n as usize).collect(),
            prefix_rate: args.prefix_rate.unwrap_or(pick(200.0, 50.0)),
            arrow_rows: if q { 300 } else { 10_000 },
            hedge_rate: args.hedge_rate.unwrap_or(pick(100.0, 20.0)),
            policies_rate: args.policies_rate.unwrap_or(pick(500.0, 100.0)),
            slow_rate: args.slow_rate.unwrap_or(pick(100.0, 20.0)),
        }
    }

    pub fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn scenario_names() {
        assert_eq!(Scenario::Models10k.name(), "models-10k");
        assert_eq!(Scenario::ChatH2c.name(), "chat-h2c");
        assert_eq!(Scenario::GrpcBidi.latency(), Some(Latency::GrpcBidi));
        assert_eq!(Scenario::Propagation.latency(), None);
        let args = Args::parse_from(["bench", "--only", "chat,models-10k", "--quick"]);
        let s = Settings::from_args(&args);
        assert_eq!(s.scenarios, vec![Scenario::Chat, Scenario::Models10k]);
        assert_eq!(s.rate_per_target, 100.0);
    }

    #[test]
    fn rates_and_haproxy_flags() {
        let s = Settings::from_args(&Args::parse_from(["bench"]));
        assert_eq!(s.rates, vec![50.0, 1000.0, 5000.0]);
        assert_eq!(s.rates_threads, vec![1, 2]);
        assert!(s.has(Scenario::Rates));
        let args = Args::parse_from([
            "bench",
            "--only",
            "rates",
            "--rates",
            "10,20",
            "--rates-threads",
            "2",
            "--haproxy-threads",
            "3",
            "--no-haproxy",
        ]);
        assert!(args.no_haproxy);
        let s = Settings::from_args(&args);
        assert_eq!(s.scenarios, vec![Scenario::Rates]);
        assert_eq!(s.rates, vec![10.0, 20.0]);
        assert_eq!(s.rates_threads, vec![2]);
        assert_eq!(s.haproxy_threads, 3);
        assert!(Args::try_parse_from(["bench", "--rates", "0"]).is_err());
        assert!(Args::try_parse_from(["bench", "--rates-threads", "0"]).is_err());
    }
}
