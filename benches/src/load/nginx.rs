//! nginx as the comparison proxy: found on the machine (`nginx` on `PATH`, or
//! `/usr/sbin/nginx`), configured like Multiverse's standalone proxy for the same backends and
//! run as a child process (its own process group, killed with its workers).
//!
//! The configuration ([`config`]) has two listeners: an HTTP/1.1 one for the OpenAI and TEI
//! HTTP routes (`proxy_pass` to keep-alive upstreams, `proxy_http_version 1.1`,
//! `proxy_buffering off` so SSE streams through), and an HTTP/2 cleartext one (prior
//! knowledge) for gRPC (`grpc_pass`) and for h2c clients of the OpenAI routes. Access logs are
//! off, keep-alive request limits are lifted (nginx closes a client or upstream connection
//! after 1000 requests by default), and the worker count matches the proxy's threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use multiverse_testkit::{try_free_addr, Proc, READY_TIMEOUT};

/// The nginx binary, if one is installed.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nginx");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// `nginx -v`'s answer, e.g. "nginx/1.22.1".
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            text.trim()
                .strip_prefix("nginx version: ")
                .unwrap_or(text.trim())
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The upstreams nginx proxies to.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams {
    /// The OpenAI-compatible backend (HTTP/1.1).
    pub openai: SocketAddr,
    /// TEI over HTTP.
    pub tei_http: SocketAddr,
    /// TEI over gRPC.
    pub tei_grpc: SocketAddr,
}

/// TEI's HTTP routes, as the proxy knows them.
const TEI_HTTP_ROUTES: &str =
    "embed|embed_sparse|embed_all|rerank|predict|similarity|tokenize|decode|info";

/// The nginx.conf for `upstreams` with its listeners on `http1` and `http2`, everything else
/// (temp files, pid) under `scratch`.
pub fn config(
    upstreams: &Upstreams,
    http1: SocketAddr,
    http2: SocketAddr,
    workers: usize,
    scratch: &Path,
) -> String {
    let s = scratch.display();
    let Upstreams {
        openai,
        tei_http,
        tei_grpc,
    } = upstreams;
    format!(
        r#"# Written by multiverse's bench: nginx as the same kind of proxy as multiverse-proxy.
worker_processes {workers};
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {s}/client_body;
    proxy_temp_path {s}/proxy;
    fastcgi_temp_path {s}/fastcgi;
    uwsgi_temp_path {s}/uwsgi;
    scgi_temp_path {s}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 8m;
    upstream openai {{
        server {openai};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    upstream tei_http {{
        server {tei_http};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    upstream tei_grpc {{
        server {tei_grpc};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 300s;
    # HTTP/1.1: OpenAI routes and TEI HTTP routes.
    server {{
        listen {http1};
        location ~ ^/({TEI_HTTP_ROUTES})$ {{
            proxy_pass http://tei_http;
        }}
        location / {{
            proxy_pass http://openai;
        }}
    }}
    # HTTP/2 cleartext, prior knowledge: gRPC, and h2c clients of the OpenAI routes.
    server {{
        listen {http2} http2;
        location /tei.v1. {{
            grpc_pass grpc://tei_grpc;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
        location / {{
            proxy_pass http://openai;
        }}
    }}
}}
"#
    )
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    /// The master process (its workers share its process group).
    pub proc: Proc,
    /// The HTTP/1.1 listener.
    pub http1: SocketAddr,
    /// The HTTP/2 cleartext listener.
    pub http2: SocketAddr,
    /// `nginx -v`.
    pub version: String,
}

/// How nginx is run: as usual (a master and `workers` worker processes), or as one process
/// under a measuring tool.
#[derive(Debug, Clone, Default)]
pub struct RunAs {
    /// A command that runs nginx, e.g. `["valgrind", "--tool=callgrind"]` (empty: nginx itself).
    pub wrapper: Vec<String>,
    /// `master_process off`: the one process serves the connections itself (with one worker's
    /// configuration), so a tool watching that process sees every request.
    pub single_process: bool,
}

impl Nginx {
    /// Writes the configuration under `scratch` and starts `bin` in the foreground, waiting
    /// until both listeners accept connections.
    pub fn start(
        bin: &Path,
        upstreams: &Upstreams,
        workers: usize,
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_as(bin, upstreams, workers, scratch, &RunAs::default())
    }

    /// [`Nginx::start`], run as `run_as` says.
    pub fn start_as(
        bin: &Path,
        upstreams: &Upstreams,
        workers: usize,
        scratch: &Path,
        run_as: &RunAs,
    ) -> anyhow::Result<Self> {
        let dir = scratch.join("nginx");
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let http1 = try_free_addr()?;
        let http2 = try_free_addr()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(upstreams, http1, http2, workers, &dir))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let mut globals = format!(
            "daemon off; pid {}; error_log stderr;",
            dir.join("nginx.pid").display()
        );
        if run_as.single_process {
            globals.push_str(" master_process off;");
        }
        let mut args = run_as.wrapper.get(1..).unwrap_or_default().to_vec();
        if !run_as.wrapper.is_empty() {
            args.push(bin.display().to_string());
        }
        args.extend([
            "-p".to_string(),
            format!("{}/", dir.display()),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            "stderr".into(),
            "-g".into(),
            globals,
        ]);
        let program = run_as.wrapper.first().map_or(bin, Path::new);
        let proc = Proc::try_spawn_group("nginx", program, &args, &[], scratch)?;
        let started = Instant::now();
        loop {
            proc.ensure_running()?;
            let up = |addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            if up(http1).is_ok() && up(http2).is_ok() {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "nginx did not listen on {http1} and {http2} within {READY_TIMEOUT:?}{}",
                    proc.log_excerpt()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            proc,
            http1,
            http2,
            version: version(bin),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_both_listeners_and_routes() {
        let up = Upstreams {
            openai: "127.0.0.1:1".parse().unwrap(),
            tei_http: "127.0.0.1:2".parse().unwrap(),
            tei_grpc: "127.0.0.1:3".parse().unwrap(),
        };
        let text = config(
            &up,
            "127.0.0.1:10".parse().unwrap(),
            "127.0.0.1:11".parse().unwrap(),
            2,
            Path::new("/tmp/x"),
        );
        assert!(text.contains("listen 127.0.0.1:10;"));
        assert!(text.contains("listen 127.0.0.1:11 http2;"));
        assert!(text.contains("grpc_pass grpc://tei_grpc;"));
        assert!(text.contains("server 127.0.0.1:3;"));
        assert!(text.contains("proxy_buffering off;"));
        assert!(text.contains("worker_processes 2;"));
        // Balanced braces.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
