//! `multiverse-control` command line: load the configuration, publish the routes of the
//! declared backends, serve discovery (gRPC) and the operator API (HTTP) until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use multiverse_proto::discovery::v1::route_discovery_server::RouteDiscoveryServer;

use multiverse_control::api::auth::Keys;
use multiverse_control::api::{self, ApiState};
use multiverse_control::backends::admission::Admission;
use multiverse_control::backends::checker::Checker;
use multiverse_control::backends::clients::Clients;
use multiverse_control::backends::registry::Registry;
use multiverse_control::backends::resolve::SystemResolver;
use multiverse_control::changes::Changes;
use multiverse_control::config::ControlConfig;
use multiverse_control::discovery::nodes::Nodes;
use multiverse_control::discovery::publisher::Publisher;
use multiverse_control::discovery::DiscoveryService;
use multiverse_control::events::EventBus;
use multiverse_control::gpu;
use multiverse_control::instances::logs;
use multiverse_control::instances::process::RunDir;
use multiverse_control::instances::supervisor::Settings;
use multiverse_control::instances::{Deps, Manager, ManagerSettings};
use multiverse_control::metrics::ControlMetrics;
use multiverse_control::routes;
use multiverse_control::store::{StateFile, Store};

/// Multiverse control plane: backends, routes and discovery for proxies.
#[derive(Debug, Parser)]
#[command(name = "multiverse-control", version)]
struct Cli {
    /// TOML configuration file (see config/control.toml); flags override it.
    #[arg(short, long, env = "MULTIVERSE_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Operator API listener [default: 127.0.0.1:9000].
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Discovery gRPC listener for proxies [default: 127.0.0.1:9001].
    #[arg(long, value_name = "ADDR")]
    discovery_listen: Option<String>,
    /// Directory of the durable state (state.toml) [default: data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Control plane id sent to proxies [default: cp-<host name>].
    #[arg(long)]
    id: Option<String>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("multiverse-control: {e:#}");
        std::process::exit(2);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(path) => ControlConfig::from_file(path)?,
        None => ControlConfig::default(),
    };
    if let Some(v) = cli.api_listen {
        cfg.listen.api = v;
    }
    if let Some(v) = cli.discovery_listen {
        cfg.listen.discovery = v;
    }
    if cli.id.is_some() {
        cfg.id = cli.id;
    }
    if cli.data_dir.is_some() {
        cfg.data_dir = cli.data_dir;
    }
    cfg.log.json |= cli.log_json;
    cfg.validate(cli.config.as_deref())?;
    multiverse_common::telemetry::init(cfg.log.json)?;

    let id = cfg.id();
    let keys = cfg.admin_keys(cli.config.as_deref())?;
    if keys.is_empty() {
        tracing::warn!("no [admin] api_keys configured: the /admin API refuses every request");
    }
    let state_file = StateFile::new(&cfg.data_dir());
    let (store, persisted) = Store::open(state_file.clone())?;
    let changes = Changes::new();
    let registry = Arc::new(Registry::open(
        store.clone(),
        changes.clone(),
        persisted.backends,
        &cfg.backends,
        cfg.admin.max_backends,
    ));
    let nodes = Arc::new(Nodes::default());
    let metrics = ControlMetrics::new();
    let http = reqwest::Client::builder()
        .user_agent(concat!("multiverse-control/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let gpus = gpu::fake::probe_with(&cfg.gpu.simulated);
    let events = EventBus::with_webhooks(cfg.webhooks.clone(), http.clone());
    let inst = &cfg.instances;
    let ms = std::time::Duration::from_millis;
    let manager = Manager::open(
        ManagerSettings {
            supervision: Settings {
                program: inst.binary.clone(),
                grpc_program: inst
                    .grpc_binary
                    .clone()
                    .unwrap_or_else(|| inst.binary.clone()),
                grpc_args: inst.grpc_args.clone(),
                hostname: inst.hostname.clone(),
                advertise_host: inst.advertise_host.clone(),
                stop_grace: ms(inst.stop_grace_ms),
                drain: ms(inst.drain_ms),
                startup_timeout: ms(inst.startup_timeout_ms),
                startup_interval: ms(inst.startup_probe_interval_ms),
                liveness_interval: ms(inst.liveness_interval_ms),
                liveness_failures: inst.liveness_failures,
                probe_timeout: ms(inst.probe_timeout_ms),
                backoff_initial: ms(inst.restart_backoff_initial_ms),
                backoff_max: ms(inst.restart_backoff_max_ms),
                crash_loop_restarts: inst.crash_loop_restarts,
                crash_loop_window: ms(inst.crash_loop_window_ms),
            },
            port_range: (inst.port_range[0], inst.port_range[1]),
            max_instances: inst.max_instances,
            min_free_vram_bytes: cfg.gpu.min_free_vram_mb * 1024 * 1024,
            log_dir: logs::log_dir(Some(
                &inst
                    .log_dir
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir().join("logs")),
            )),
            log_max_bytes: inst.log_max_bytes,
            log_keep: inst.log_keep,
        },
        cfg.templates.clone(),
        persisted.instances,
        Deps {
            store,
            events: events.clone(),
            changes: changes.clone(),
            gpus: gpus.clone(),
            http: http.clone(),
            run_dir: RunDir::new(cfg.data_dir().join("run")).with_context(|| {
                format!("cannot create {}", cfg.data_dir().join("run").display())
            })?,
        },
    );
    let publisher = Publisher::new(routes::snapshot(&registry.routable(), &manager.routable()));
    tokio::spawn(routes::republish(
        changes,
        registry.clone(),
        manager.clone(),
        publisher.clone(),
        std::time::Duration::from_millis(cfg.discovery.coalesce_ms),
    ));
    let clients = Arc::new(Clients::new(Arc::new(SystemResolver))?);
    let checker = Arc::new(Checker::new(
        registry.clone(),
        clients.clone(),
        cfg.health.clone(),
        metrics.clone(),
    ));
    tokio::spawn(checker.clone().run());

    let discovery_addr: SocketAddr = cfg.listen.discovery.parse()?;
    let api_addr: SocketAddr = cfg.listen.api.parse()?;
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot listen on {api_addr} (listen.api)"))?;
    let discovery_listener = tokio::net::TcpListener::bind(discovery_addr)
        .await
        .with_context(|| format!("cannot listen on {discovery_addr} (listen.discovery)"))?;

    let shutdown = multiverse_common::signals::termination();
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(RouteDiscoveryServer::new(DiscoveryService::new(
            id.clone(),
            publisher.clone(),
            nodes.clone(),
            metrics.clone(),
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(discovery_listener),
            wait_stop(stop_rx.clone()),
        );
    let app = api::router(ApiState {
        control_plane_id: id.clone(),
        publisher,
        nodes,
        registry: registry.clone(),
        metrics,
        admission: Arc::new(Admission::new(
            registry.clone(),
            clients,
            cfg.health.clone(),
            cfg.admin.allow_private_backends,
        )),
        checker,
        keys: Arc::new(Keys::new(keys)),
        instances: manager.clone(),
        gpus,
        events: events.clone(),
    });
    let http = axum::serve(api_listener, app).with_graceful_shutdown(wait_stop(stop_rx));

    tracing::info!(
        id = %id,
        api = %api_addr,
        discovery = %discovery_addr,
        backends = registry.list().len(),
        state = %state_file.path().display(),
        "multiverse-control started"
    );
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(async move { http.await });
    shutdown.await;
    tracing::info!("shutting down: stopping TEI instances");
    manager.shutdown().await;
    // Open SSE streams (events, log follows) would hold the HTTP server open: end them.
    events.close();
    let _ = stop_tx.send(true);
    let (g, h) = tokio::join!(grpc, http);
    g??;
    h??;
    Ok(())
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
