//! The targets a run measures, started natively or under a measuring tool (a wrapper command
//! such as `valgrind --tool=callgrind`): `multiverse-proxy` standalone with one worker thread,
//! routing the mocks (open, or in keys mode with the table of `bench --only keys`:
//! [`multiverse_benches::load::keyed`]), and nginx configured as the same kind of proxy, as one
//! process.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use multiverse_alloc_count::Counts;
use multiverse_benches::load::keyed::keyed_routes;
use multiverse_benches::load::nginx::{Nginx, RunAs, Upstreams};
use multiverse_benches::load::scenario::Latency;
use multiverse_benches::load::stack::{self, Addrs};
use multiverse_proxy::config::ProxyConfig;
use multiverse_testkit::{config_file, try_free_addr, Launch, Proc, Proxy};

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Proxy,
    /// The same proxy in keys mode (1 000 keys), the requests carrying the rpm-limited bench
    /// key: its rows less `proxy`'s are what checking a key costs.
    ProxyKeys,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Proxy => "proxy",
            Kind::ProxyKeys => "proxy-keys",
            Kind::Nginx => "nginx",
        }
    }

    /// Whether it measures `family`: a keyed proxy only the HTTP families, whose requests
    /// carry the bench key (the gRPC callers send none, so a keyed proxy would refuse them).
    pub fn measures(self, family: Latency) -> bool {
        self != Kind::ProxyKeys || !matches!(family, Latency::GrpcUnary | Latency::GrpcBidi)
    }
}

/// A started target.
pub enum Running {
    Proxy {
        proxy: Proxy,
        /// Where it serves its allocation counts (if the build counts).
        counts: SocketAddr,
    },
    Nginx(Nginx),
}

/// The environment variable the proxy serves its allocation counts on (see main.rs there).
pub const ALLOC_COUNT_ENV: &str = "MULTIVERSE_PROXY_ALLOC_COUNT";

impl Running {
    /// `multiverse-proxy` (`bin`) with one worker thread, routing `mocks` by a standalone
    /// routes file (in keys mode when `keyed`), run by `wrapper` (empty: directly).
    pub fn proxy(
        launch: &Launch,
        bin: &Path,
        mocks: &Addrs,
        keyed: bool,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let name = match (keyed, wrapper.is_empty()) {
            (false, true) => "proxy",
            (false, false) => "proxy-wrapped",
            (true, true) => "proxy-keys",
            (true, false) => "proxy-keys-wrapped",
        };
        let routes = Proxy::routes_file(&launch.dir, name);
        let open = stack::routes(mocks, 0);
        let file = if keyed { keyed_routes(&open) } else { open };
        config_file::write(&routes, &file)?;
        let listen = try_free_addr()?;
        let admin = try_free_addr()?;
        let counts = try_free_addr()?;
        let mut config = ProxyConfig {
            node_id: Some(name.into()),
            ..ProxyConfig::default()
        };
        config.server.threads = Some(1);
        config.listen.clients = listen.to_string();
        config.listen.admin = admin.to_string();
        config.standalone.routes_file = Some(routes);
        let path = launch.file(&format!("{name}.toml"));
        config_file::write(&path, &config)?;
        let mut args = wrapper.get(1..).unwrap_or_default().to_vec();
        if !wrapper.is_empty() {
            args.push(bin.display().to_string());
        }
        args.extend(["--config".to_string(), path.display().to_string()]);
        let program = wrapper.first().map_or(bin, Path::new);
        let mut env = launch.env.clone();
        env.push((ALLOC_COUNT_ENV.into(), counts.to_string()));
        let proc = Proc::try_spawn(name, program, &args, &env, &launch.dir, false)?;
        Ok(Running::Proxy {
            proxy: Proxy {
                proc,
                listen,
                admin,
            },
            counts,
        })
    }

    /// nginx (`bin`) as one process in front of `mocks`, run by `wrapper`.
    pub fn nginx(
        launch: &Launch,
        bin: &Path,
        mocks: &Addrs,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let upstreams = Upstreams {
            openai: mocks.openai_h1,
            tei_http: mocks.tei_http,
            tei_grpc: mocks.grpc,
        };
        let run_as = RunAs {
            wrapper: wrapper.to_vec(),
            single_process: true,
        };
        let dir = launch.dir.join(if wrapper.is_empty() {
            "nginx-native"
        } else {
            "nginx-wrapped"
        });
        Ok(Running::Nginx(Nginx::start_as(
            bin, &upstreams, 1, &dir, &run_as,
        )?))
    }

    /// Waits until it serves (the proxy: routes; nginx was waited for when started).
    pub async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        match self {
            Running::Proxy { proxy, .. } => proxy.try_wait_ready(client).await,
            Running::Nginx(_) => Ok(()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc().pid()
    }

    fn proc(&self) -> &Proc {
        match self {
            Running::Proxy { proxy, .. } => &proxy.proc,
            Running::Nginx(n) => &n.proc,
        }
    }

    /// Fails if it has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        self.proc().ensure_running()
    }

    /// Where it serves each kind of traffic.
    pub fn addrs(&self) -> Addrs {
        match self {
            Running::Proxy { proxy, .. } => Addrs::single(proxy.listen),
            Running::Nginx(n) => Addrs {
                openai_h1: n.http1,
                openai_h2c: n.http2,
                tei_http: n.http1,
                grpc: n.http2,
            },
        }
    }

    /// The proxy's allocation counts now (`None` for nginx or a build that does not count).
    pub fn allocations(&self) -> Option<Counts> {
        match self {
            Running::Proxy { counts, .. } => {
                multiverse_alloc_count::read(*counts, Duration::from_secs(5)).ok()
            }
            Running::Nginx(_) => None,
        }
    }
}
