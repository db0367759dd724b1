//! The library entry point: a proxy built from a [`ProxyConfig`], started, and stopped.
//!
//! [`Proxy::start`] binds both listeners first (so a bad address is an error here, port 0 works,
//! and both accept connections when it returns), loads a standalone routes file if one is
//! configured, then runs pingora's services on runtimes of its own: the client listener on
//! `server.threads` threads (thread per core: each thread accepts and serves its own
//! connections), the admin listener and the route source on one more. It owns no signals and
//! never exits the process: the binary ([`crate::cli`]) waits for SIGTERM / SIGINT and calls
//! [`Proxy::stop`]; a test starts as many proxies as it likes in-process and stops them the same
//! way (or drops them).
//!
//! Pingora's `Server` is not used: its `run` sleeps the whole grace period on shutdown, owns the
//! process's signals and binds listeners inside its services, where their addresses cannot be
//! learned. Its services are started here exactly as `Server::run` starts them, with the
//! pre-bound sockets handed over as inherited listening fds. An address still in use (a previous
//! process draining) is left to pingora, which retries the bind every second for 30 s; until
//! then `/ready` says 503, and if it never binds, [`Proxy::failed`] says why.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use multiverse_common::conn_limit::ConnLimit;
use multiverse_common::otlp::{Otlp, OtlpError};
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora_core::protocols::tls::CaType;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use pingora_runtime::Runtime;
use tokio::sync::watch;

use crate::batch;
use crate::config::{ms, ConfigError, ProxyConfig};
use crate::ops::admin::{Admin, Listening};
use crate::ops::drain::{self, Active};
use crate::ops::metrics::Metrics;
use crate::ops::planes::PlanesStatus;
use crate::request::connection;
use crate::request::cors::Cors;
use crate::request::gateway::{AffinityConfig, Gateway, GatewayConfig};
use crate::request::prefix_hash::PrefixScan;
use crate::request::upstream::UpstreamDefaults;
use crate::routing::outlier::OutlierConfig;
use crate::routing::TableState;
use crate::sources::discovery::ClientTls;
use crate::sources::discovery::{Discovery, DiscoveryConfig};
use crate::sources::standalone::{self, Reloader};
use crate::tls::{load_certs, load_pair, load_upstream_ca, CertReloader, CertStore, TlsError};

/// How long runtimes get to stop their tasks after a graceful stop's drain.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

/// Why a proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {key} = {addr}")]
    Bind {
        key: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The standalone routes file cannot be loaded (the message names the file and the key).
    #[error("{0}")]
    Routes(String),
    /// The TLS client listener's certificate or key cannot be used (the message names the
    /// file).
    #[error("clients_tls: {0}")]
    Tls(#[from] TlsError),
    /// An upstream TLS file cannot be used.
    #[error("{key}: {source}")]
    Upstream {
        key: &'static str,
        #[source]
        source: TlsError,
    },
    /// A control-plane TLS file cannot be used.
    #[error("{key}: {source}")]
    Discovery {
        key: &'static str,
        #[source]
        source: TlsError,
    },
    /// `[tracing] otlp_endpoint`: the span exporter cannot be set up.
    #[error("tracing.otlp_endpoint: {0}")]
    Otlp(#[from] OtlpError),
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, let active requests finish within `server.drain_grace_seconds`, then
    /// stop (SIGTERM).
    Graceful,
    /// Stop now; open requests are cut (SIGINT).
    Fast,
}

/// A running proxy.
pub struct Proxy {
    clients: SocketAddr,
    clients_tls: Option<SocketAddr>,
    batch_embed: Option<SocketAddr>,
    admin: SocketAddr,
    node_id: String,
    state: Arc<TableState>,
    active: Arc<Active>,
    grace: Duration,
    shutdown: watch::Sender<bool>,
    runtimes: Vec<(&'static str, Runtime)>,
    /// Why a listener left to pingora could not be bound (set at most once).
    failure: watch::Receiver<Option<String>>,
    /// The span exporter (`[tracing] otlp_endpoint`), flushed at the stop.
    otlp: Option<Arc<Otlp>>,
}

/// A listener's socket: bound here, or (its address in use) left to pingora's bind retries.
enum Bound {
    Socket(TcpListener, SocketAddr),
    Later(SocketAddr),
}

impl Bound {
    fn addr(&self) -> SocketAddr {
        match self {
            Bound::Socket(_, addr) | Bound::Later(addr) => *addr,
        }
    }
}

impl Proxy {
    /// Builds and starts a proxy from a configuration (validated here too). Returns once both
    /// listeners accept connections (routes may still be on their way: see
    /// [`Proxy::is_ready`]).
    pub fn start(cfg: &ProxyConfig) -> Result<Proxy, StartError> {
        cfg.validate(None)?;
        let clients_listener = bind("listen.clients", &cfg.listen.clients)?;
        let admin_listener = bind("listen.admin", &cfg.listen.admin)?;
        let (clients, admin) = (clients_listener.addr(), admin_listener.addr());
        // The TLS listener's certificate loads before its socket binds: a bad file is an
        // error here, naming it.
        let tls = match (
            &cfg.clients_tls.listen,
            &cfg.clients_tls.cert_file,
            &cfg.clients_tls.key_file,
        ) {
            (Some(addr), Some(cert), Some(key)) => {
                let store = Arc::new(CertStore::load(cert, key)?);
                Some((bind("clients_tls.listen", addr)?, store))
            }
            _ => None,
        };
        let clients_tls = tls.as_ref().map(|(bound, _)| bound.addr());
        // The batch-embedding listener is tonic's, not pingora's: bound here, served below.
        let batch_listener = match &cfg.batch_embed.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr).map_err(|source| StartError::Bind {
                    key: "batch_embed.listen",
                    addr: addr.clone(),
                    source,
                })?;
                let bound = l.local_addr().map_err(|source| StartError::Bind {
                    key: "batch_embed.listen",
                    addr: addr.clone(),
                    source,
                })?;
                Some((l, bound))
            }
            None => None,
        };
        let batch_embed = batch_listener.as_ref().map(|(_, a)| *a);
        let discovery_tls = discovery_tls(cfg)?;
        let upstream_ca = match &cfg.upstream.tls_ca_file {
            Some(path) => Some(
                load_upstream_ca(path).map_err(|source| StartError::Upstream {
                    key: "upstream.tls_ca_file",
                    source,
                })?,
            ),
            None => None,
        };
        let (failed, failure) = watch::channel(None);
        let failed = Arc::new(failed);
        let otlp = match cfg.tracing.otlp() {
            Some(settings) => {
                let otlp = Arc::new(Otlp::start(&settings)?);
                tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, "exporting spans over OTLP");
                Some(otlp)
            }
            None => None,
        };

        let metrics = Metrics::new();
        let source = match &cfg.standalone.routes_file {
            Some(path) => format!("static:{}", path.display()),
            None => "control-plane".to_string(),
        };
        let on_swap = metrics.clone();
        let state = Arc::new(TableState::new(
            source,
            Box::new(move |table| {
                on_swap.table_applied(&table.version, table.policy_conflicts.keys())
            }),
        ));
        if let Some(path) = &cfg.standalone.routes_file {
            let version = standalone::reload(path, &state).map_err(StartError::Routes)?;
            tracing::info!(file = %path.display(), %version, "standalone mode: static routes loaded");
        }

        let threads = cfg
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let conf = Arc::new(ServerConf {
            threads,
            // Thread per core, as nginx and Envoy workers: each thread accepts its own
            // connections and runs all of their tasks (vendored pingora-runtime patch), and
            // upstream connections are pooled per thread (`upstream::peer`). Work stealing cost
            // ~20% more CPU per request in cross-thread wake-ups (issue 6).
            work_stealing: false,
            listener_tasks_per_fd: threads,
            ..ServerConf::default()
        });
        let active = Arc::new(Active::default());
        let node_id = cfg.node_id();

        let gateway = Gateway::new(
            state.clone(),
            active.clone(),
            metrics.clone(),
            gateway_config(cfg, upstream_ca, otlp.clone()),
        );
        let mut proxy = pingora_proxy::http_proxy_service_with_name(&conf, gateway, "clients");
        proxy.add_tcp(&clients.to_string());
        let mut cert_reloader = None;
        if let Some((bound, store)) = &tls {
            // Both listeners serve the same gateway; TLS connections pick h2 or HTTP/1.1 by ALPN.
            // No paths: the resolver serves the pair (pingora reads no file when one is set).
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| TlsError::Invalid {
                    what: "certificate",
                    path: store.cert_file().to_path_buf(),
                    reason: e.to_string(),
                })?;
            settings.set_cert_resolver(store.clone());
            settings.enable_h2();
            proxy.add_tls_with_settings(&bound.addr().to_string(), None, settings);
            cert_reloader = Some(background_service(
                "tls-cert-reloader",
                CertReloader {
                    store: store.clone(),
                },
            ));
        }
        if let Some(app) = proxy.app_logic_mut() {
            let mut options = client_options(cfg);
            options.h2c = true;
            app.server_options = Some(options);
            app.h2_options = Some(h2_options(cfg));
        }
        // Both client listeners (cleartext and TLS) share the connection limits.
        proxy.set_admission(connection::admission(
            ConnLimit::new(
                cfg.clients.max_connections,
                cfg.clients.max_connections_per_ip,
            ),
            metrics.clone(),
        ));
        // `/ready` waits until the client listener's accept loops run (its socket accepts
        // connections from here on already: it is bound above).
        let listening = Arc::new(Listening::default());
        let planes = Arc::new(PlanesStatus::default());
        let flag = listening.clone();
        let report = failed.clone();
        proxy.on_listening(move |taken| match taken {
            Ok(()) => flag.set(),
            Err(e) => unbound(&report, "listen.clients", clients, &e),
        });
        let mut admin_service = Service::new(
            "admin".to_string(),
            HttpServer::new_app(Admin {
                state: state.clone(),
                metrics: metrics.clone(),
                planes: planes.clone(),
                node_id: node_id.clone(),
                listening,
            }),
        );
        admin_service.add_tcp(&admin.to_string());
        if let Some(app) = admin_service.app_logic_mut() {
            app.server_options = Some(client_options(cfg));
        }
        admin_service.set_admission(connection::admin_admission(
            ConnLimit::new(cfg.admin.max_connections, cfg.admin.max_connections_per_ip),
            metrics.clone(),
        ));
        let report = failed.clone();
        admin_service.on_listening(move |taken| {
            if let Err(e) = taken {
                unbound(&report, "listen.admin", admin, &e);
            }
        });
        let source: Box<dyn ServiceWithDependents> = match &cfg.standalone.routes_file {
            Some(path) => Box::new(background_service(
                "routes-reloader",
                Reloader {
                    path: path.clone(),
                    state: state.clone(),
                },
            )),
            None => Box::new(background_service(
                "discovery",
                Discovery::new(
                    discovery_config(cfg, &node_id, discovery_tls),
                    state.clone(),
                    metrics,
                    planes,
                ),
            )),
        };

        // Built before anything runs, so its failure leaves nothing started.
        let batch = match batch_listener {
            Some((listener, _)) => Some((
                listener,
                batch::Service::new(
                    state.clone(),
                    &cfg.batch_embed,
                    gateway_config(cfg, None, None).outlier,
                    ms(cfg.upstream.connect_timeout_ms),
                )
                .map_err(StartError::Routes)?,
            )),
            None => None,
        };
        let mut fds = Fds::new();
        let tls_listener = tls.map(|(bound, _)| bound);
        for bound in [Some(clients_listener), Some(admin_listener), tls_listener]
            .into_iter()
            .flatten()
        {
            if let Bound::Socket(listener, addr) = bound {
                // pingora takes the socket over as an inherited listener of this address.
                fds.add(addr.to_string(), listener.into_raw_fd());
            }
        }
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(fds));
        let (shutdown, watch) = watch::channel(false);
        let serve = runtime("clients", threads);
        let ops = runtime("ops", 1);
        spawn(&serve, Box::new(proxy), &fds, &watch, threads);
        spawn(&ops, Box::new(admin_service), &fds, &watch, 1);
        spawn(&ops, source, &fds, &watch, 1);
        if let Some(reloader) = cert_reloader {
            spawn(&ops, Box::new(reloader), &fds, &watch, 1);
        }
        let mut runtimes = vec![("clients", serve), ("ops", ops)];
        if let Some((listener, service)) = batch {
            // Its own runtime: decoding and encoding large batches must not delay the ops
            // runtime's discovery and admin work, nor the client threads.
            let rt = runtime("batch", threads.clamp(1, 2));
            let mut stop = watch.clone();
            rt.get_handle().spawn(batch::serve(
                listener,
                service,
                cfg.batch_embed.max_request_bytes,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
            runtimes.push(("batch", rt));
        }
        tracing::info!(clients = %clients, clients_tls = ?clients_tls, batch_embed = ?batch_embed, admin = %admin, node_id = %node_id, threads, "multiverse-proxy started");
        Ok(Proxy {
            clients,
            clients_tls,
            batch_embed,
            admin,
            node_id,
            state,
            active,
            grace: Duration::from_secs(cfg.server.drain_grace_seconds),
            shutdown,
            runtimes,
            failure,
            otlp,
        })
    }

    /// The client listener's address (the bound port when the config said 0).
    pub fn clients_addr(&self) -> SocketAddr {
        self.clients
    }

    /// The batch-embedding listener's address, when `[batch_embed] listen` sets one.
    pub fn batch_embed_addr(&self) -> Option<SocketAddr> {
        self.batch_embed
    }

    /// The TLS client listener's address, when `[clients_tls]` configures one.
    pub fn clients_tls_addr(&self) -> Option<SocketAddr> {
        self.clients_tls
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The id this proxy reports to control planes.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether a routing table has been received (what `/ready` answers).
    pub fn is_ready(&self) -> bool {
        self.state.is_ready()
    }

    /// Resolves if a listener whose address was in use at start could not be bound in the end
    /// (the message names the key); pends forever otherwise.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        let reason = match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The routing state (the current table, its version).
    pub fn state(&self) -> &Arc<TableState> {
        &self.state
    }

    /// Stops the proxy; returns how many requests were still active when it stopped (always 0
    /// for a graceful stop that drained in time). Both listeners are closed when it returns.
    pub async fn stop(mut self, how: Stop) -> usize {
        let _ = self.shutdown.send(true);
        let left = match how {
            Stop::Graceful => drain::drain(&self.active, self.grace).await,
            Stop::Fast => self.active.count(),
        };
        let timeout = match how {
            Stop::Graceful => RUNTIME_STOP,
            Stop::Fast => Duration::ZERO,
        };
        let runtimes = std::mem::take(&mut self.runtimes);
        if tokio::task::spawn_blocking(move || stop_runtimes(runtimes, timeout))
            .await
            .is_err()
        {
            tracing::warn!("stopping the runtimes failed");
        }
        if let Some(otlp) = self.otlp.take() {
            // The last requests' spans go out before the process ends (blocks up to the
            // export timeout).
            let _ = tokio::task::spawn_blocking(move || otlp.flush()).await;
        }
        left
    }
}

impl Drop for Proxy {
    /// A proxy dropped without [`Proxy::stop`] stops at once (open requests are cut).
    fn drop(&mut self) {
        if self.runtimes.is_empty() {
            return;
        }
        let _ = self.shutdown.send(true);
        stop_runtimes(std::mem::take(&mut self.runtimes), Duration::ZERO);
    }
}

/// Binds `addr` for the listener named by the config `key`. A fixed address in use is left to
/// pingora, which retries it (a previous process may still be draining on it).
fn bind(key: &'static str, addr: &str) -> Result<Bound, StartError> {
    let err = |source| StartError::Bind {
        key,
        addr: addr.to_string(),
        source,
    };
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match addr.parse::<SocketAddr>() {
            Ok(fixed) if fixed.port() != 0 => {
                tracing::warn!(key, addr, "address in use: retrying every second for 30 s");
                return Ok(Bound::Later(fixed));
            }
            _ => return Err(err(e)),
        },
        Err(e) => return Err(err(e)),
    };
    // pingora's accept loops need a non-blocking socket.
    listener.set_nonblocking(true).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok(Bound::Socket(listener, bound))
}

/// A listener left to pingora could not be bound: reported once through [`Proxy::failed`].
fn unbound(
    report: &watch::Sender<Option<String>>,
    key: &str,
    addr: SocketAddr,
    e: &pingora_error::Error,
) {
    let reason = format!("cannot listen on {key} = {addr}: {e}");
    tracing::error!(%reason, "a listener could not be bound");
    report.send_if_modified(|failure| {
        let first = failure.is_none();
        if first {
            *failure = Some(reason);
        }
        first
    });
}

/// A no-steal (thread per core) runtime, as pingora builds them.
fn runtime(name: &str, threads: usize) -> Runtime {
    pingora_runtime::RuntimeBuilder::new(threads, name)
        .work_steal(false)
        .build()
}

/// Starts one of pingora's services on `rt`, as `Server::run` does.
fn spawn(
    rt: &Runtime,
    mut service: Box<dyn ServiceWithDependents>,
    fds: &ListenFds,
    shutdown: &watch::Receiver<bool>,
    listeners_per_fd: usize,
) {
    let (fds, shutdown) = (fds.clone(), shutdown.clone());
    rt.get_handle().spawn(async move {
        let (ready, _) = watch::channel(false);
        let name = service.name().to_string();
        service
            .start_service(
                Some(fds),
                shutdown,
                listeners_per_fd,
                ServiceReadyNotifier::new(ready),
            )
            .await;
        tracing::debug!(service = %name, "service stopped");
    });
}

/// Stops the runtimes in parallel (each on its own thread, so this works from any context) and
/// waits for them.
fn stop_runtimes(runtimes: Vec<(&'static str, Runtime)>, timeout: Duration) {
    let stopping: Vec<_> = runtimes
        .into_iter()
        .map(|(name, rt)| {
            (
                name,
                std::thread::spawn(move || rt.shutdown_timeout(timeout)),
            )
        })
        .collect();
    for (name, t) in stopping {
        if t.join().is_err() {
            tracing::warn!(runtime = name, "runtime did not stop cleanly");
        }
    }
}

/// Header and keep-alive timeouts of client connections (`[clients]`; the admin listener's
/// too).
fn client_options(cfg: &ProxyConfig) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.header_read_timeout = Some(ms(cfg.clients.header_timeout_ms));
    options.keepalive_idle_timeout = Some(ms(cfg.clients.keepalive_timeout_ms));
    options.h2_idle_timeout = Some(ms(cfg.clients.keepalive_timeout_ms));
    options.max_request_header_bytes = Some(cfg.clients.max_header_bytes);
    options.max_request_headers = Some(cfg.clients.max_headers);
    options
}

/// HTTP/2 settings of client connections: the header list size and the concurrent streams
/// (`[clients]`); pingora's other bounded defaults are kept.
fn h2_options(cfg: &ProxyConfig) -> H2Options {
    let mut options = default_h2_options();
    options.max_header_list_size(u32::try_from(cfg.clients.max_header_bytes).unwrap_or(u32::MAX));
    options.max_concurrent_streams(cfg.clients.h2_max_streams);
    options
}

fn gateway_config(
    cfg: &ProxyConfig,
    tls_ca: Option<Arc<CaType>>,
    otlp: Option<Arc<Otlp>>,
) -> GatewayConfig {
    GatewayConfig {
        upstream: UpstreamDefaults {
            connect_timeout: ms(cfg.upstream.connect_timeout_ms),
            read_timeout: ms(cfg.upstream.read_timeout_ms),
            max_h2_streams: cfg.upstream.max_h2_streams,
            tls_ca,
        },
        max_body_bytes: cfg.limits.max_body_bytes,
        per_ip: (cfg.limits.per_ip_rpm > 0)
            .then_some((cfg.limits.per_ip_rpm, cfg.limits.per_ip_tracked)),
        outlier: OutlierConfig {
            consecutive_failures: cfg.outlier.consecutive_gateway_failures,
            base_ejection: ms(cfg.outlier.base_ejection_ms),
            max_ejection: ms(cfg.outlier.max_ejection_ms),
            max_ejection_percent: cfg.outlier.max_ejection_percent,
        },
        header_timeout: ms(cfg.clients.header_timeout_ms),
        // Validated to be a header name.
        priority_header: http::HeaderName::from_bytes(cfg.limits.priority_header.as_bytes())
            .unwrap_or_else(|_| http::HeaderName::from_static("x-priority")),
        max_header_bytes: cfg.clients.max_header_bytes,
        max_headers: cfg.clients.max_headers,
        trace_sample: cfg.tracing.sample,
        request_stream_usage: cfg.usage.request_stream_usage,
        otlp,
        trace_ratio: cfg.tracing.sample_ratio,
        // `validate` refused any origin that is not a header value; should one get here, CORS
        // stays off (allowing nothing) rather than the proxy failing.
        cors: Cors::new(&cfg.cors.allowed_origins).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cors.allowed_origins: CORS disabled");
            Cors::default()
        }),
        affinity: AffinityConfig {
            scan: PrefixScan {
                max_bytes: cfg.affinity.prefix_bytes,
                messages: cfg.affinity.prefix_messages,
            },
            // `validate` refused a name that is not a header name; the default stands in.
            session_header: http::HeaderName::from_bytes(cfg.affinity.session_header.as_bytes())
                .unwrap_or_else(|_| http::HeaderName::from_static("x-session-id")),
            load_factor: cfg.affinity.load_factor,
        },
    }
}

/// The PEM files `https://` control-plane streams use, read (and checked) now.
fn discovery_tls(cfg: &ProxyConfig) -> Result<ClientTls, StartError> {
    let d = &cfg.discovery;
    let named = |key: &'static str| move |e: TlsError| StartError::Discovery { key, source: e };
    let ca_pem = match &d.tls_ca_file {
        Some(path) => {
            load_certs(path).map_err(named("discovery.tls_ca_file"))?;
            Some(read(path).map_err(named("discovery.tls_ca_file"))?)
        }
        None => None,
    };
    let identity = match (&d.tls_cert_file, &d.tls_key_file) {
        (Some(cert), Some(key)) => {
            load_pair(cert, key).map_err(named("discovery.tls_cert_file"))?;
            Some((
                read(cert).map_err(named("discovery.tls_cert_file"))?,
                read(key).map_err(named("discovery.tls_key_file"))?,
            ))
        }
        _ => None,
    };
    Ok(ClientTls { ca_pem, identity })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what: "PEM",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn discovery_config(cfg: &ProxyConfig, node_id: &str, tls: ClientTls) -> DiscoveryConfig {
    DiscoveryConfig {
        control_planes: cfg.control_planes.iter().map(|c| c.url.clone()).collect(),
        node_id: node_id.to_string(),
        connect_timeout: ms(cfg.discovery.connect_timeout_ms),
        keepalive_interval: ms(cfg.discovery.keepalive_interval_ms),
        backoff_initial: ms(cfg.discovery.backoff_initial_ms),
        backoff_max: ms(cfg.discovery.backoff_max_ms),
        withdraw_after: (cfg.discovery.withdraw_after_ms > 0)
            .then(|| ms(cfg.discovery.withdraw_after_ms)),
        dns_refresh: ms(cfg.discovery.dns_refresh_ms),
        dns_hosts_file: cfg.discovery.dns_hosts_file.clone(),
        tls,
    }
}
