//! The processes a benchmark run measures: the mock backends, `multiverse-proxy` in front of
//! them (standalone, or fed by a control plane), nginx in front of the same mocks, and the
//! addresses each target answers on.
//!
//! Spawn from the main thread (see [`super::process`]): children get a parent-death signal
//! tied to the spawning thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::http::Http1Pool;
use super::nginx::{self, Nginx, Upstreams};
use super::process::{free_port, ChildProcess};

/// How long a child gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Children's environment: plain info-level logs.
pub const CHILD_ENV: [(&str, &str); 2] = [("RUST_LOG", "info"), ("NO_COLOR", "1")];

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

/// The binaries a run uses.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// mock-openai.
    pub mock_openai: PathBuf,
    /// mock-tei.
    pub mock_tei: PathBuf,
    /// multiverse-proxy.
    pub proxy: PathBuf,
    /// multiverse-control.
    pub control: PathBuf,
}

/// The mock backends.
#[derive(Debug)]
pub struct Mocks {
    /// mock-openai.
    pub openai: ChildProcess,
    /// mock-tei (HTTP).
    pub tei_http: ChildProcess,
    /// mock-tei --grpc.
    pub tei_grpc: ChildProcess,
    /// Their addresses: the "direct" target.
    pub addrs: Addrs,
}

impl Mocks {
    /// Starts the three mocks; SSE chunks are `chunk_interval_ms` apart.
    pub fn start(bins: &Binaries, scratch: &Path, chunk_interval_ms: u64) -> anyhow::Result<Self> {
        let mut openai = start_mock_openai(
            bins,
            scratch,
            "mock-openai",
            &[
                "--tokens",
                "16",
                "--latency-ms",
                "0",
                "--chunk-interval-ms",
                &chunk_interval_ms.to_string(),
            ],
        )?;
        let openai_addr = openai.wait_listening(READY_TIMEOUT)?;
        let mut tei_http = start_mock_tei(bins, scratch, "mock-tei-http", false)?;
        let tei_http_addr = tei_http.wait_listening(READY_TIMEOUT)?;
        let mut tei_grpc = start_mock_tei(bins, scratch, "mock-tei-grpc", true)?;
        let grpc_addr = tei_grpc.wait_listening(READY_TIMEOUT)?;
        Ok(Self {
            openai,
            tei_http,
            tei_grpc,
            addrs: Addrs {
                openai_h1: openai_addr,
                openai_h2c: openai_addr,
                tei_http: tei_http_addr,
                grpc: grpc_addr,
            },
        })
    }

    /// Fails if a mock has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.openai.ensure_running()?;
        self.tei_http.ensure_running()?;
        self.tei_grpc.ensure_running()
    }
}

/// Starts a mock-openai named `name` on a free port (wait for it with `wait_listening`).
pub fn start_mock_openai(
    bins: &Binaries,
    scratch: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<ChildProcess> {
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ChildProcess::spawn(name, &bins.mock_openai, &args, &CHILD_ENV, scratch, true)
}

fn start_mock_tei(
    bins: &Binaries,
    scratch: &Path,
    name: &str,
    grpc: bool,
) -> anyhow::Result<ChildProcess> {
    let mut args = vec![
        "--hostname".to_string(),
        "127.0.0.1".into(),
        "--port".into(),
        "0".into(),
        "--name".into(),
        name.into(),
    ];
    if grpc {
        args.push("--grpc".into());
    }
    ChildProcess::spawn(name, &bins.mock_tei, &args, &CHILD_ENV, scratch, true)
}

/// The standalone routes file for `mocks`: `demo` (chat), `bge` (TEI HTTP), `bge-grpc` (TEI
/// gRPC), and `extra_models` more chat models on the OpenAI mock (a big routing table).
pub fn routes_toml(mocks: &Addrs, extra_models: usize) -> String {
    let mut s = String::from("version = \"bench\"\n\n");
    let mut model = |name: &str, kind: &str, id: &str, addr: SocketAddr, protocol: &str| {
        s.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\n\n[[models.endpoints]]\n\
             id = \"{id}\"\naddress = \"{addr}\"\nprotocol = \"{protocol}\"\n\n"
        ));
    };
    model(CHAT_MODEL, "chat", "mock-openai", mocks.openai_h1, "http1");
    model(
        EMBED_MODEL,
        "embedding",
        "mock-tei-http",
        mocks.tei_http,
        "http1",
    );
    model(GRPC_MODEL, "embedding", "mock-tei-grpc", mocks.grpc, "grpc");
    for i in 0..extra_models {
        model(
            &format!("model-{i:05}"),
            "chat",
            "mock-openai",
            mocks.openai_h1,
            "http1",
        );
    }
    s
}

/// A running multiverse-proxy.
#[derive(Debug)]
pub struct ProxyProcess {
    /// The process.
    pub process: ChildProcess,
    /// The client listener (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

impl ProxyProcess {
    /// Starts a standalone proxy named `name` routing by `routes` (written to
    /// `<scratch>/<name>-routes.toml`). Wait for it with [`ProxyProcess::wait_ready`].
    pub fn standalone(
        bins: &Binaries,
        scratch: &Path,
        name: &str,
        routes: &str,
    ) -> anyhow::Result<Self> {
        let file = scratch.join(format!("{name}-routes.toml"));
        std::fs::write(&file, routes)
            .with_context(|| format!("cannot write {}", file.display()))?;
        Self::start(
            bins,
            scratch,
            name,
            &format!("[standalone]\nroutes_file = \"{}\"\n", file.display()),
        )
    }

    /// Starts a proxy named `name` fed by the control plane at `control_url`.
    pub fn with_control(
        bins: &Binaries,
        scratch: &Path,
        name: &str,
        control_url: &str,
    ) -> anyhow::Result<Self> {
        Self::start(
            bins,
            scratch,
            name,
            &format!(
                "[discovery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n\n\
                 [[control_planes]]\nurl = \"{control_url}\"\n"
            ),
        )
    }

    fn start(bins: &Binaries, scratch: &Path, name: &str, body: &str) -> anyhow::Result<Self> {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let config = scratch.join(format!("{name}.toml"));
        let text = format!(
            "node_id = \"{name}\"\n\n[listen]\nclients = \"{listen}\"\nadmin = \"{admin}\"\n\n{body}"
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let args = vec!["--config".to_string(), config.display().to_string()];
        let process = ChildProcess::spawn(name, &bins.proxy, &args, &CHILD_ENV, scratch, false)?;
        Ok(Self {
            process,
            listen,
            admin,
        })
    }

    /// Polls the admin `/ready` until it answers 200.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let pool = Http1Pool::new(self.admin, 1);
        let started = Instant::now();
        loop {
            self.process.ensure_running()?;
            let last = match tokio::time::timeout(Duration::from_secs(1), pool.send(get("/ready")))
                .await
            {
                Ok(Ok(r)) if r.status() == StatusCode::OK => return Ok(()),
                Ok(Ok(r)) => format!("{}: {}", r.status(), snippet(r.body())),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "no answer within 1 s".into(),
            };
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} not ready within {READY_TIMEOUT:?} (GET http://{}/ready: {last}){}",
                    self.process.name(),
                    self.admin,
                    self.process.log_excerpt()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The routing table version `/ready` reports (empty when not ready).
    pub async fn version(&self) -> String {
        let pool = Http1Pool::new(self.admin, 1);
        let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), pool.send(get("/ready"))).await
        else {
            return String::new();
        };
        serde_json::from_slice::<serde_json::Value>(r.body())
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// The stack of the latency scenarios: mocks, a standalone proxy and (when installed) nginx.
#[derive(Debug)]
pub struct Stack {
    /// The mocks (the direct target).
    pub mocks: Mocks,
    /// multiverse-proxy.
    pub proxy: ProxyProcess,
    /// nginx, or why there is none.
    pub nginx: Result<Nginx, String>,
}

impl Stack {
    /// Starts everything (nginx only when `nginx_bin` is given; a failure to start it is an
    /// error, not a silent skip). The proxy is not waited for: see [`ProxyProcess::wait_ready`].
    pub fn start(
        bins: &Binaries,
        scratch: &Path,
        chunk_interval_ms: u64,
        nginx_bin: Result<PathBuf, String>,
        nginx_workers: usize,
    ) -> anyhow::Result<Self> {
        let mocks = Mocks::start(bins, scratch, chunk_interval_ms)?;
        let proxy =
            ProxyProcess::standalone(bins, scratch, "proxy", &routes_toml(&mocks.addrs, 0))?;
        let nginx = match nginx_bin {
            Ok(bin) => {
                let upstreams = Upstreams {
                    openai: mocks.addrs.openai_h1,
                    tei_http: mocks.addrs.tei_http,
                    tei_grpc: mocks.addrs.grpc,
                };
                Ok(Nginx::start(&bin, &upstreams, nginx_workers, scratch)
                    .context("cannot start nginx")?)
            }
            Err(why) => Err(why),
        };
        Ok(Self {
            mocks,
            proxy,
            nginx,
        })
    }

    /// The targets, in interleaving order: direct, proxy and (if running) nginx.
    pub fn targets(&self) -> Vec<(String, Addrs)> {
        let mut targets = vec![
            ("direct".to_string(), self.mocks.addrs),
            ("proxy".to_string(), Addrs::single(self.proxy.listen)),
        ];
        if let Ok(nginx) = &self.nginx {
            targets.push((
                "nginx".to_string(),
                Addrs {
                    openai_h1: nginx.http1,
                    openai_h2c: nginx.http2,
                    tei_http: nginx.http1,
                    grpc: nginx.http2,
                },
            ));
        }
        targets
    }

    /// Fails if any child has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.mocks.ensure_running()?;
        self.proxy.process.ensure_running()?;
        if let Ok(nginx) = &mut self.nginx {
            nginx.process.ensure_running()?;
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

/// A GET request for `path`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// The start of a response body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_file_lists_models() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = routes_toml(&Addrs::single(a), 3);
        assert_eq!(text.matches("[[models]]").count(), 6);
        assert!(text.contains("name = \"bge-grpc\"") && text.contains("protocol = \"grpc\""));
        assert!(text.contains("name = \"model-00002\""));
    }
}
