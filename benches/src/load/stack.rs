//! The processes a benchmark run measures: the mock backends, `multiverse-proxy` in front of
//! them (standalone, or fed by a control plane), nginx and haproxy in front of the same mocks,
//! and the addresses each target answers on. Mocks, proxies and control planes are started by the test
//! kit's stack launcher (`multiverse_testkit::stack`), configured through the binaries' own
//! config types.
//!
//! Spawn from the main thread (see `multiverse_testkit::process`): children get a parent-death
//! signal tied to the spawning thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use multiverse_proxy::config::{ControlPlaneConfig, ProxyConfig};
use multiverse_proxy::standalone::RoutesFile;
use multiverse_testkit::routes::{endpoint, model};
use multiverse_testkit::stack::Launch;
use multiverse_testkit::{MockOpenAi, MockTei, Proxy};

use super::haproxy::Haproxy;
use super::nginx::{self, Nginx, Upstreams};

/// The chat model every OpenAI scenario asks for.
pub const CHAT_MODEL: &str = "demo";
/// The embedding model served by TEI over HTTP.
pub const EMBED_MODEL: &str = "bge";
/// The embedding model served by TEI over gRPC.
pub const GRPC_MODEL: &str = "bge-grpc";

/// Where one target answers each kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// OpenAI routes over HTTP/1.1.
    pub openai_h1: SocketAddr,
    /// OpenAI routes over h2c (prior knowledge).
    pub openai_h2c: SocketAddr,
    /// TEI HTTP routes.
    pub tei_http: SocketAddr,
    /// TEI gRPC.
    pub grpc: SocketAddr,
}

impl Addrs {
    /// Everything on one address (multiverse-proxy's single client port).
    pub fn single(addr: SocketAddr) -> Self {
        Self {
            openai_h1: addr,
            openai_h2c: addr,
            tei_http: addr,
            grpc: addr,
        }
    }
}

/// The mock backends.
#[derive(Debug)]
pub struct Mocks {
    /// mock-openai.
    pub openai: MockOpenAi,
    /// mock-tei (HTTP).
    pub tei_http: MockTei,
    /// mock-tei --grpc.
    pub tei_grpc: MockTei,
    /// Their addresses: the "direct" target.
    pub addrs: Addrs,
}

impl Mocks {
    /// Starts the three mocks; SSE chunks are `chunk_interval_ms` apart.
    pub fn start(launch: &Launch, chunk_interval_ms: u64) -> anyhow::Result<Self> {
        let interval = chunk_interval_ms.to_string();
        let openai = MockOpenAi::try_start(
            launch,
            "mock-openai",
            &[
                "--tokens",
                "16",
                "--latency-ms",
                "0",
                "--chunk-interval-ms",
                &interval,
            ],
        )?;
        let tei_http = MockTei::try_start(launch, "mock-tei-http", &[])?;
        let tei_grpc = MockTei::try_start(launch, "mock-tei-grpc", &["--grpc"])?;
        let addrs = Addrs {
            openai_h1: openai.addr,
            openai_h2c: openai.addr,
            tei_http: tei_http.addr,
            grpc: tei_grpc.addr,
        };
        Ok(Self {
            openai,
            tei_http,
            tei_grpc,
            addrs,
        })
    }

    /// The mocks' process ids.
    pub fn pids(&self) -> Vec<u32> {
        vec![
            self.openai.proc.pid(),
            self.tei_http.proc.pid(),
            self.tei_grpc.proc.pid(),
        ]
    }

    /// What nginx and haproxy proxy to.
    pub fn upstreams(&self) -> Upstreams {
        Upstreams {
            openai: self.addrs.openai_h1,
            tei_http: self.addrs.tei_http,
            tei_grpc: self.addrs.grpc,
        }
    }

    /// Fails if a mock has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        self.openai.proc.ensure_running()?;
        self.tei_http.proc.ensure_running()?;
        self.tei_grpc.proc.ensure_running()
    }
}

/// The standalone routes file for `mocks`: `demo` (chat), `bge` (TEI HTTP), `bge-grpc` (TEI
/// gRPC), and `extra_models` more chat models on the OpenAI mock (a big routing table).
pub fn routes(mocks: &Addrs, extra_models: usize) -> RoutesFile {
    let one = |name: &str, kind: &str, id: &str, addr: SocketAddr, protocol: &str| {
        model(name, kind, vec![endpoint(id, addr, protocol, "healthy")])
    };
    let mut models = vec![
        one(CHAT_MODEL, "chat", "mock-openai", mocks.openai_h1, "http1"),
        one(
            EMBED_MODEL,
            "embedding",
            "mock-tei-http",
            mocks.tei_http,
            "http1",
        ),
        one(GRPC_MODEL, "embedding", "mock-tei-grpc", mocks.grpc, "grpc"),
    ];
    models.extend((0..extra_models).map(|i| {
        one(
            &format!("model-{i:05}"),
            "chat",
            "mock-openai",
            mocks.openai_h1,
            "http1",
        )
    }));
    RoutesFile {
        version: Some("bench".into()),
        models,
        auth: None,
    }
}

/// Starts a standalone proxy named `name` routing by `routes` (written to
/// `<dir>/<name>-routes.toml`), with the proxy's default settings. Wait for it with
/// `Proxy::try_wait_ready`.
pub fn standalone_proxy(launch: &Launch, name: &str, routes: &RoutesFile) -> anyhow::Result<Proxy> {
    Proxy::try_spawn_standalone(launch, name, ProxyConfig::default(), routes)
}

/// [`standalone_proxy`] with `threads` worker threads (`[server] threads`).
pub fn standalone_proxy_threads(
    launch: &Launch,
    name: &str,
    routes: &RoutesFile,
    threads: usize,
) -> anyhow::Result<Proxy> {
    let mut config = ProxyConfig::default();
    config.server.threads = Some(threads);
    Proxy::try_spawn_standalone(launch, name, config, routes)
}

/// Where nginx answers each kind of traffic.
pub fn nginx_addrs(n: &Nginx) -> Addrs {
    Addrs {
        openai_h1: n.http1,
        openai_h2c: n.http2,
        tei_http: n.http1,
        grpc: n.http2,
    }
}

/// Where haproxy answers each kind of traffic.
pub fn haproxy_addrs(h: &Haproxy) -> Addrs {
    Addrs {
        openai_h1: h.http1,
        openai_h2c: h.http2,
        tei_http: h.http1,
        grpc: h.http2,
    }
}

/// Starts a proxy named `name` fed by the control plane at `control_url`, reconnecting fast.
pub fn control_fed_proxy(launch: &Launch, name: &str, control_url: &str) -> anyhow::Result<Proxy> {
    let mut config = ProxyConfig::default();
    config.discovery.backoff_initial_ms = 50;
    config.discovery.backoff_max_ms = 500;
    config.control_planes = vec![ControlPlaneConfig {
        url: control_url.to_string(),
    }];
    Proxy::try_spawn(launch, name, config)
}

/// A client for the children's admin endpoints (readiness, versions): every request gets at
/// most 2 s.
pub fn admin_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("cannot build an HTTP client")
}

/// The stack of the latency scenarios: mocks, a standalone proxy and (when installed) nginx
/// and haproxy.
#[derive(Debug)]
pub struct Stack {
    /// The mocks (the direct target).
    pub mocks: Mocks,
    /// multiverse-proxy.
    pub proxy: Proxy,
    /// nginx, or why there is none.
    pub nginx: Result<Nginx, String>,
    /// haproxy, or why there is none.
    pub haproxy: Result<Haproxy, String>,
}

/// The comparison proxies a [`Stack`] starts: each binary (or why there is none) and its
/// worker processes / threads.
#[derive(Debug, Clone)]
pub struct Others {
    pub nginx_bin: Result<PathBuf, String>,
    pub nginx_workers: usize,
    pub haproxy_bin: Result<PathBuf, String>,
    pub haproxy_threads: usize,
}

impl Stack {
    /// Starts everything (nginx and haproxy only when their binaries are given; a failure to
    /// start one is an error, not a silent skip). The proxy is not waited for: see
    /// `Proxy::try_wait_ready`.
    pub fn start(launch: &Launch, chunk_interval_ms: u64, others: &Others) -> anyhow::Result<Self> {
        let mocks = Mocks::start(launch, chunk_interval_ms)?;
        let proxy = standalone_proxy(launch, "proxy", &routes(&mocks.addrs, 0))?;
        let upstreams = mocks.upstreams();
        let nginx = match &others.nginx_bin {
            Ok(bin) => Ok(
                Nginx::start(bin, &upstreams, others.nginx_workers, &launch.dir)
                    .context("cannot start nginx")?,
            ),
            Err(why) => Err(why.clone()),
        };
        let haproxy = match &others.haproxy_bin {
            Ok(bin) => Ok(
                Haproxy::start(bin, &upstreams, others.haproxy_threads, &launch.dir)
                    .context("cannot start haproxy")?,
            ),
            Err(why) => Err(why.clone()),
        };
        Ok(Self {
            mocks,
            proxy,
            nginx,
            haproxy,
        })
    }

    /// The targets, in interleaving order: direct, proxy and (if running) nginx and haproxy.
    pub fn targets(&self) -> Vec<(String, Addrs)> {
        let mut targets = vec![
            ("direct".to_string(), self.mocks.addrs),
            ("proxy".to_string(), Addrs::single(self.proxy.listen)),
        ];
        if let Ok(nginx) = &self.nginx {
            targets.push(("nginx".to_string(), nginx_addrs(nginx)));
        }
        if let Ok(haproxy) = &self.haproxy {
            targets.push(("haproxy".to_string(), haproxy_addrs(haproxy)));
        }
        targets
    }

    /// Fails if any child has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        self.mocks.ensure_running()?;
        self.proxy.proc.ensure_running()?;
        if let Ok(nginx) = &self.nginx {
            nginx.proc.ensure_running()?;
        }
        if let Ok(haproxy) = &self.haproxy {
            haproxy.proc.ensure_running()?;
        }
        Ok(())
    }
}

/// nginx to use: found on the machine unless `disabled`; `Err` says why there is none.
pub fn nginx_binary(explicit: Option<&Path>, disabled: bool) -> Result<PathBuf, String> {
    if disabled {
        return Err("disabled with --no-nginx".into());
    }
    match explicit {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(format!("{} not found", path.display())),
        None => nginx::find()
            .ok_or_else(|| "no nginx binary found (`nginx` on PATH or /usr/sbin/nginx)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_file_lists_models() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let file = routes(&Addrs::single(a), 3);
        assert_eq!(file.models.len(), 6);
        let grpc = &file.models[2];
        assert_eq!(grpc.name, "bge-grpc");
        assert_eq!(grpc.endpoints[0].protocol, "grpc");
        assert_eq!(file.models[5].name, "model-00002");
        let text = multiverse_testkit::config_file::to_toml(&file).unwrap();
        assert_eq!(text.matches("[[models]]").count(), 6);
    }
}
