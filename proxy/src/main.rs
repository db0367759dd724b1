//! `multiverse-proxy` command line: load the configuration, then run the client listener, the
//! admin listener and the discovery client in one pingora server.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use multiverse_proxy::admin::Admin;
use multiverse_proxy::config::{ms, ControlPlaneConfig, ProxyConfig};
use multiverse_proxy::discovery::{Discovery, DiscoveryConfig};
use multiverse_proxy::gateway::{Gateway, GatewayConfig};
use multiverse_proxy::lifecycle::{Active, Drain, Listening};
use multiverse_proxy::observe::Metrics;
use multiverse_proxy::outlier::OutlierConfig;
use multiverse_proxy::standalone::{self, Reloader};
use multiverse_proxy::upstream::UpstreamDefaults;
use multiverse_proxy::TableState;

/// glibc malloc was ~10% of the proxy's CPU under load (perf, issue 6); mimalloc's per-thread
/// free lists take most of that away.
#[cfg(not(any(debug_assertions, feature = "alloc-count")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Debug builds (the ones the tests start) and the `alloc-count` feature count allocations and
/// serve the counts on `MULTIVERSE_PROXY_ALLOC_COUNT` (an address): the per-request allocation
/// budget (issue 18, benches/tests/request_budget.rs) is read from there.
#[cfg(any(debug_assertions, feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: multiverse_alloc_count::Counting<mimalloc::MiMalloc> =
    multiverse_alloc_count::Counting(mimalloc::MiMalloc);

/// Multiverse data plane: routes OpenAI-compatible traffic to model servers by `model`.
#[derive(Debug, Parser)]
#[command(name = "multiverse-proxy", version)]
struct Cli {
    /// TOML configuration file (see config/proxy.toml); flags override it.
    #[arg(short, long, env = "MULTIVERSE_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Client listener for HTTP/1.1 and h2c [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener (/ready, /metrics, /config_dump) [default: 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Control plane discovery URL, e.g. http://127.0.0.1:9001 (repeatable; replaces the file's).
    #[arg(long = "control-plane", value_name = "URL")]
    control_planes: Vec<String>,
    /// Standalone mode: static routes file (see config/routes.toml), reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "control_planes")]
    routes: Option<PathBuf>,
    /// Id this proxy reports to control planes [default: host name].
    #[arg(long)]
    node_id: Option<String>,
    /// Worker threads (replaces the file's `server.threads`) [default: the number of CPUs].
    #[arg(long, value_name = "N", env = "MULTIVERSE_PROXY_THREADS")]
    threads: Option<usize>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

/// mimalloc v3's `mi_option_purge_delay` (`mi_option_e` in its mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// With mimalloc's defaults a 10k-model table left 85 MiB of RSS behind after it was replaced:
/// freed pages are returned only after a delay, and only by a thread that allocates again, which
/// the idle table-building thread never does. Returning them at once costs ~0.2 `madvise` per
/// proxied request and brings that case to ~30 MiB (`bench --only memory,models-10k`).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: `mi_option_set` only stores a value in mimalloc's option table; it may be called at
    // any time from any thread, and the number is mimalloc v3's enum value.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() {
    if let Err(e) = run() {
        eprintln!("multiverse-proxy: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    tune_allocator();
    #[cfg(any(debug_assertions, feature = "alloc-count"))]
    multiverse_alloc_count::serve_from_env("MULTIVERSE_PROXY_ALLOC_COUNT")?;
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(path) => ProxyConfig::from_file(path)?,
        None => ProxyConfig::default(),
    };
    if let Some(v) = cli.listen {
        cfg.listen.clients = v;
    }
    if let Some(v) = cli.admin_listen {
        cfg.listen.admin = v;
    }
    if !cli.control_planes.is_empty() {
        cfg.control_planes = cli
            .control_planes
            .into_iter()
            .map(|url| ControlPlaneConfig { url })
            .collect();
    }
    if cli.routes.is_some() {
        cfg.standalone.routes_file = cli.routes;
        cfg.control_planes.clear();
    }
    if cli.node_id.is_some() {
        cfg.node_id = cli.node_id;
    }
    if cli.threads.is_some() {
        cfg.server.threads = cli.threads;
    }
    cfg.log.json |= cli.log_json;
    cfg.validate(cli.config.as_deref())?;
    multiverse_common::telemetry::init(cfg.log.json)?;

    let metrics = Metrics::new();
    let source = match &cfg.standalone.routes_file {
        Some(path) => format!("static:{}", path.display()),
        None => "control-plane".to_string(),
    };
    let state = Arc::new(TableState::new(source, metrics.clone()));
    let active = Arc::new(Active::default());
    let node_id = cfg.node_id();

    let threads = cfg
        .server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let conf = ServerConf {
        threads,
        // Thread per core, as nginx and Envoy workers: each thread accepts its own connections
        // and runs all of their tasks (vendored pingora-runtime patch), and upstream connections
        // are pooled per thread (`upstream::peer`). Work stealing cost ~20% more CPU per request
        // in cross-thread wake-ups (issue 6).
        work_stealing: false,
        listener_tasks_per_fd: threads,
        // pingora serves open requests for the grace period after SIGTERM; `Drain` exits
        // earlier once none is left.
        grace_period_seconds: Some(cfg.server.drain_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = Gateway::new(
        state.clone(),
        active.clone(),
        metrics.clone(),
        GatewayConfig {
            upstream: UpstreamDefaults {
                connect_timeout: ms(cfg.upstream.connect_timeout_ms),
                read_timeout: ms(cfg.upstream.read_timeout_ms),
                max_h2_streams: cfg.upstream.max_h2_streams,
            },
            max_body_bytes: cfg.limits.max_body_bytes,
            outlier: OutlierConfig {
                consecutive_failures: cfg.outlier.consecutive_gateway_failures,
                base_ejection: ms(cfg.outlier.base_ejection_ms),
                max_ejection: ms(cfg.outlier.max_ejection_ms),
                max_ejection_percent: cfg.outlier.max_ejection_percent,
            },
            header_timeout: ms(cfg.clients.header_timeout_ms),
        },
    );
    let mut proxy =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, gateway, "clients");
    proxy.add_tcp(&cfg.listen.clients);
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = client_options(&cfg);
        options.h2c = true;
        app.server_options = Some(options);
    }
    let listening = Arc::new(Listening::default());
    let flag = listening.clone();
    proxy.on_listening(move |bound| match bound {
        Ok(()) => flag.set(),
        Err(e) => exit_unbound("listen.clients", &e),
    });

    let mut admin = Service::new(
        "admin".to_string(),
        pingora_core::apps::http_app::HttpServer::new_app(Admin {
            state: state.clone(),
            metrics: metrics.clone(),
            node_id: node_id.clone(),
            listening,
        }),
    );
    admin.add_tcp(&cfg.listen.admin);
    if let Some(app) = admin.app_logic_mut() {
        app.server_options = Some(client_options(&cfg));
    }
    admin.on_listening(|bound| {
        if let Err(e) = bound {
            exit_unbound("listen.admin", &e);
        }
    });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service(
        "drain",
        Drain {
            active,
            grace: std::time::Duration::from_secs(cfg.server.drain_grace_seconds),
        },
    ));
    match &cfg.standalone.routes_file {
        Some(path) => {
            let version = standalone::reload(path, &state).map_err(anyhow::Error::msg)?;
            tracing::info!(file = %path.display(), %version, "standalone mode: static routes loaded");
            server.add_service(background_service(
                "routes-reloader",
                Reloader {
                    path: path.clone(),
                    state,
                },
            ));
        }
        None => {
            server.add_service(background_service(
                "discovery",
                Discovery::new(
                    DiscoveryConfig {
                        control_planes: cfg.control_planes.iter().map(|c| c.url.clone()).collect(),
                        node_id: node_id.clone(),
                        connect_timeout: ms(cfg.discovery.connect_timeout_ms),
                        keepalive_interval: ms(cfg.discovery.keepalive_interval_ms),
                        backoff_initial: ms(cfg.discovery.backoff_initial_ms),
                        backoff_max: ms(cfg.discovery.backoff_max_ms),
                        withdraw_after: (cfg.discovery.withdraw_after_ms > 0)
                            .then(|| ms(cfg.discovery.withdraw_after_ms)),
                    },
                    state,
                    metrics,
                ),
            ));
        }
    }
    tracing::info!(
        clients = %cfg.listen.clients,
        admin = %cfg.listen.admin,
        node_id = %node_id,
        "multiverse-proxy starting"
    );
    server.run_forever()
}

/// Header and keep-alive timeouts of client connections (`[clients]`).
fn client_options(cfg: &ProxyConfig) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.header_read_timeout = Some(ms(cfg.clients.header_timeout_ms));
    options.keepalive_idle_timeout = Some(ms(cfg.clients.keepalive_timeout_ms));
    options.h2_idle_timeout = Some(ms(cfg.clients.keepalive_timeout_ms));
    options
}

/// A listener that cannot be bound ends the process: running on without it would be a proxy
/// that is alive but never ready.
fn exit_unbound(key: &str, e: &pingora_error::Error) -> ! {
    tracing::error!(key, error = %e, "cannot listen; exiting");
    std::process::exit(2);
}
