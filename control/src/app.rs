//! The control plane assembled. [`App::build`] turns a configuration into running parts: it
//! opens the durable state, restores the backends and the TEI instances, starts the health
//! checks and the route republisher, and binds both listeners (so [`App::addrs`] knows the
//! ports, even for `:0`). [`App::serve`] then serves route discovery (gRPC) and the operator API
//! (HTTP) until its shutdown future resolves, and stops the TEI instances before it returns.
//! `main.rs` does nothing else than this; tests run it in-process the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::auth::Keys as AdminKeys;
use crate::api::client_cert::ClientCerts;
use crate::api::client_limit::ClientLimit;
use crate::api::{self, ApiState};
use crate::backends::admission::Admission;
use crate::backends::checker::Checker;
use crate::backends::clients::{Clients, USER_AGENT};
use crate::backends::registry::Registry;
use crate::backends::resolve::SystemResolver;
use crate::changes::Changes;
use crate::config::ControlConfig;
use crate::discovery::nodes::Nodes;
use crate::discovery::publisher::Publisher;
use crate::discovery::{self, DiscoveryService};
use crate::events::EventBus;
use crate::gpu;
use crate::instances::logs;
use crate::instances::process::RunDir;
use crate::instances::supervisor::Settings;
use crate::instances::{Deps, Manager, ManagerSettings};
use crate::keys::leases::Leases;
use crate::keys::Keys;
use crate::metrics::ControlMetrics;
use crate::models::Policies;
use crate::routes;
use crate::store::{StateFile, Store};
use crate::tls::{ClientAuth, ServerTls};
use multiverse_common::signals::Hangups;

/// Where the listeners are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The operator API.
    pub api: SocketAddr,
    /// Route discovery for proxies.
    pub discovery: SocketAddr,
}

/// A control plane, built and bound, not yet serving.
pub struct App {
    id: String,
    addrs: Addrs,
    api_listener: TcpListener,
    discovery_listener: TcpListener,
    discovery_tls: Option<Arc<ServerTls>>,
    /// SIGHUP, installed at build so a signal right after start reloads instead of killing.
    hangups: Hangups,
    api: ApiState,
    manager: Arc<Manager>,
    events: Arc<EventBus>,
    state_file: StateFile,
    store: Store,
    /// `[load]`: the engine-metrics scraper's settings.
    load: crate::load::LoadSettings,
}

impl App {
    /// Validates `cfg` and builds everything it describes (see the module docs). Errors name
    /// what failed: the state file, a listener, the configuration key.
    pub async fn build(cfg: ControlConfig) -> anyhow::Result<App> {
        cfg.validate(None)?;
        let id = cfg.id();
        let keys = cfg.admin_keys(None)?;
        if keys.is_empty() {
            tracing::warn!("no [admin] api_keys configured: the /admin API refuses every request");
        }
        let state_file = StateFile::new(&cfg.data_dir());
        let save_interval = Duration::from_millis(cfg.state.save_interval_ms);
        let (store, persisted) = Store::open_batched(state_file.clone(), save_interval)?;
        if !save_interval.is_zero() {
            tracing::info!(
                save_interval_ms = cfg.state.save_interval_ms,
                "batched persistence: a crash loses at most the last interval of changes"
            );
        }
        let changes = Changes::new();
        let inference_keys = Arc::new(Keys::open(
            cfg.inference_auth.mode,
            store.clone(),
            changes.clone(),
            persisted.keys,
        ));
        let http = reqwest::Client::builder().user_agent(USER_AGENT).build()?;
        let events = EventBus::with_webhooks(cfg.webhooks.clone(), http.clone());
        let policies = Arc::new(
            Policies::open(
                cfg.models.clone(),
                store.clone(),
                changes.clone(),
                persisted.policies,
            )
            .with_events(events.clone()),
        );
        let simulated_dir = simulated_process_dir(&cfg)?;
        let identity = crate::instances::process::resolve_identity(
            cfg.instances.user.as_deref(),
            cfg.instances.group.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("[instances] user/group: {e}"))?;
        let metrics = ControlMetrics::new();
        let registry = Arc::new(
            Registry::open(
                store.clone(),
                changes.clone(),
                persisted.backends,
                &cfg.backends,
                cfg.admin.max_backends,
            )
            .with_events(events.clone())
            .with_metrics(metrics.clone()),
        );
        let gpus = gpu::fake::probe_with(&cfg.gpu.simulated, simulated_dir.as_deref());
        let run_dir = cfg.data_dir().join("run");
        let manager = Manager::open(
            manager_settings(&cfg, simulated_dir.as_deref(), identity),
            cfg.templates.clone(),
            persisted.instances,
            Deps {
                metrics: metrics.clone(),
                store: store.clone(),
                events: events.clone(),
                changes: changes.clone(),
                gpus: gpus.clone(),
                http,
                run_dir: RunDir::new(run_dir.clone())
                    .with_context(|| format!("cannot create {}", run_dir.display()))?,
            },
        );
        let publisher = Publisher::start(
            routes::current(&registry, &manager, &inference_keys, &policies),
            persisted.version_floor,
            Some(store.clone()),
            changes.clone(),
        )
        .await;
        tokio::spawn(routes::republish(
            changes,
            registry.clone(),
            manager.clone(),
            inference_keys.clone(),
            policies.clone(),
            publisher.clone(),
            Duration::from_millis(cfg.discovery.coalesce_ms),
        ));
        let roots = match &cfg.health.tls_ca_file {
            Some(path) => backend_roots(path)?,
            None => Vec::new(),
        };
        let clients = Arc::new(Clients::new(Arc::new(SystemResolver), roots)?);
        let checker = Arc::new(Checker::new(
            registry.clone(),
            clients.clone(),
            cfg.health.clone(),
            metrics.clone(),
        ));
        tokio::spawn(checker.clone().run());

        let api_listener = bind(&cfg.listen.api, "listen.api").await?;
        let discovery_listener = bind(&cfg.listen.discovery, "listen.discovery").await?;
        // Every TLS file is read now: a bad one stops the start, naming it.
        let hangups = multiverse_common::signals::hangups().context("cannot watch SIGHUP")?;
        let discovery_tls = match &cfg.discovery.tls {
            Some(tls) => Some(
                ServerTls::load("discovery.tls", tls, &[b"h2"], ClientAuth::Required)
                    .map_err(|e| anyhow::anyhow!("discovery.tls: {e}"))?,
            ),
            None => None,
        };
        let api_tls = match &cfg.admin.tls {
            Some(tls) => {
                let server = ServerTls::load(
                    "admin.tls",
                    &tls.listener(),
                    // axum serves HTTP/1.1 here (its `http2` feature is off).
                    &[b"http/1.1"],
                    ClientAuth::Optional,
                )
                .map_err(|e| anyhow::anyhow!("admin.tls: {e}"))?;
                let trusted_proxies = tls
                    .trusted_proxies()
                    .map_err(|(i, m)| anyhow::anyhow!("admin.tls.trusted_proxies[{i}]: {m}"))?;
                Some(Arc::new(ClientCerts {
                    tls: server,
                    trusted_proxies,
                    required: tls.client_ca_file.is_some(),
                }))
            }
            None => None,
        };
        let addrs = Addrs {
            api: api_listener.local_addr()?,
            discovery: discovery_listener.local_addr()?,
        };
        let api = ApiState {
            control_plane_id: id.clone(),
            publisher,
            nodes: Arc::new(Nodes::default()),
            admission: Arc::new(Admission::new(
                registry.clone(),
                clients,
                cfg.health.clone(),
                cfg.admin.allow_private_backends,
            )),
            registry,
            checker,
            metrics,
            keys: Arc::new(AdminKeys::new(keys)),
            inference_keys,
            policies,
            client_limit: (cfg.admin.per_ip_rpm > 0)
                .then(|| Arc::new(ClientLimit::new(cfg.admin.per_ip_rpm))),
            instances: manager.clone(),
            gpus,
            events: events.clone(),
            public_read: cfg.admin.public_read,
            max_body_bytes: cfg.admin.max_body_bytes,
            ui: Arc::new(cfg.ui.clone()),
            conn_limit: multiverse_common::conn_limit::ConnLimit::new(
                cfg.admin.max_connections,
                cfg.admin.max_connections_per_ip,
            ),
            header_limits: crate::api::http_server::HeaderLimits {
                max_bytes: cfg.admin.max_header_bytes,
                max_headers: cfg.admin.max_headers,
            },
            tls: api_tls,
            spans: api::spans::ApiSpans {
                otlp: match cfg.tracing.otlp_endpoint.clone() {
                    Some(endpoint) => {
                        let settings = multiverse_common::otlp::OtlpSettings {
                            endpoint,
                            service_name: cfg.tracing.service_name.clone(),
                        };
                        let otlp = multiverse_common::otlp::Otlp::start(&settings)
                            .context("tracing.otlp_endpoint")?;
                        tracing::info!(endpoint = %settings.endpoint, "exporting API spans over OTLP");
                        Some(Arc::new(otlp))
                    }
                    None => None,
                },
                sample_ratio: cfg.tracing.sample_ratio,
            },
        };
        Ok(App {
            id,
            addrs,
            api_listener,
            discovery_listener,
            discovery_tls,
            hangups,
            api,
            manager,
            events,
            state_file,
            store,
            load: cfg.load.clone(),
        })
    }

    /// The bound listeners.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Serves until `shutdown` resolves, then stops the TEI instances, ends open event and log
    /// streams, and lets both servers finish their requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let leases = Leases::new(self.api.inference_keys.clone());
        tokio::spawn(leases.clone().run());
        let service = DiscoveryService::new(
            self.id.clone(),
            self.api.publisher.clone(),
            self.api.nodes.clone(),
            self.api.metrics.clone(),
            leases,
            {
                let publisher = self.api.publisher.clone();
                crate::load::spawn(
                    &self.load,
                    Box::new(move || crate::load::targets(&publisher.current().snapshot)),
                )
            },
        );
        let reloadable: Vec<Arc<ServerTls>> = self
            .discovery_tls
            .iter()
            .cloned()
            .chain(self.api.tls.iter().map(|c| c.tls.clone()))
            .collect();
        tokio::spawn(crate::tls::reload_on_hangup(self.hangups, reloadable));
        let grpc = discovery::serve(
            self.discovery_listener,
            service,
            self.discovery_tls,
            wait_stop(stop_rx.clone()),
        );
        let backends = self.api.registry.list().len();
        let http = api::serve(self.api_listener, self.api, wait_stop(stop_rx));
        tracing::info!(
            id = %self.id,
            api = %self.addrs.api,
            discovery = %self.addrs.discovery,
            backends,
            state = %self.state_file.path().display(),
            "multiverse-control started"
        );
        let grpc = tokio::spawn(grpc);
        let http = tokio::spawn(http);
        shutdown.await;
        tracing::info!("shutting down: stopping TEI instances");
        self.manager.shutdown().await;
        // Batched persistence: what is not saved yet is saved now.
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "shutting down: the last changes could not be saved");
        }
        // Open SSE streams (events, log follows) would hold the HTTP server open: end them.
        self.events.close();
        let _ = stop_tx.send(true);
        let (g, h) = tokio::join!(grpc, http);
        g??;
        h??;
        Ok(())
    }
}

async fn bind(addr: &str, key: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("`{addr}` is not an ip:port address ({key})"))?;
    TcpListener::bind(parsed)
        .await
        .with_context(|| format!("cannot listen on {parsed} ({key})"))
}

/// The CA certificates of `[health] tls_ca_file` (a bad file stops the start, naming it).
fn backend_roots(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let what = || format!("health.tls_ca_file: {}", path.display());
    let pem = std::fs::read(path).with_context(what)?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).with_context(what)?;
    if roots.is_empty() {
        anyhow::bail!("{}: no PEM certificate in it", what());
    }
    Ok(roots)
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// With simulated GPUs, the directory their processes' VRAM records go to
/// (`<data_dir>/simulated-gpus`, created and emptied of an earlier run's records).
fn simulated_process_dir(cfg: &ControlConfig) -> anyhow::Result<Option<std::path::PathBuf>> {
    if cfg.gpu.simulated.is_empty() {
        return Ok(None);
    }
    let dir = cfg.data_dir().join("simulated-gpus");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(Some(dir))
}

/// The instance manager's settings from `[instances]` and `[gpu]`.
fn manager_settings(
    cfg: &ControlConfig,
    simulated_dir: Option<&std::path::Path>,
    (uid, gid): (Option<u32>, Option<u32>),
) -> ManagerSettings {
    let inst = &cfg.instances;
    let ms = Duration::from_millis;
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
            env: simulated_dir
                .map(|d| {
                    vec![(
                        gpu::fake::PROCESS_DIR_ENV.to_string(),
                        d.display().to_string(),
                    )]
                })
                .unwrap_or_default(),
            uid,
            gid,
            otlp_endpoint: cfg.tracing.otlp_endpoint.clone(),
            cgroups: {
                let c = crate::instances::cgroup::detect(
                    inst.cgroup_root.as_deref().map(std::path::Path::new),
                );
                match &c {
                    crate::instances::cgroup::Cgroups::Writable(root) => {
                        tracing::info!(root = %root.display(), "instances with max_cpu_percent or max_memory_mb get their own cgroup")
                    }
                    crate::instances::cgroup::Cgroups::Unavailable(reason) => {
                        tracing::info!(%reason, "no per-instance cgroups: max_cpu_percent is not enforced")
                    }
                }
                c
            },
        },
        port_range: (inst.port_range[0], inst.port_range[1]),
        max_instances: inst.max_instances,
        min_free_vram_bytes: cfg.gpu.min_free_vram_mb * 1024 * 1024,
        placement: cfg.gpu.placement,
        limits_interval: ms(inst.limits_interval_ms),
        log_dir: logs::log_dir(Some(
            &inst
                .log_dir
                .clone()
                .unwrap_or_else(|| cfg.data_dir().join("logs")),
        )),
        log_max_bytes: inst.log_max_bytes,
        log_keep: inst.log_keep,
    }
}
