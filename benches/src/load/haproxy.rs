//! haproxy as a second comparison proxy, beside nginx: found on the machine (`haproxy` on
//! `PATH`, or `/usr/sbin/haproxy`), configured like Multiverse's standalone proxy for the same
//! backends and run as a child process in the foreground (`-db`, one process with `nbthread`
//! threads, in its own process group).
//!
//! The configuration ([`config`]) mirrors nginx's (see [`super::nginx`]): an HTTP/1.1
//! frontend for the OpenAI and TEI HTTP routes, and an HTTP/2 cleartext one (prior knowledge,
//! `proto h2`) for gRPC (to TEI's gRPC port over h2) and for h2c clients of the OpenAI routes.
//! Backend connections are kept alive and shared between client connections
//! (`http-reuse always`, as nginx's `keepalive` pool); data is sent on as it arrives
//! (`option http-no-delay`: by default haproxy asks the kernel to hold small writes for more,
//! `MSG_MORE`, which delays an SSE stream's events by tens of ms and sends them in bursts);
//! nothing is logged; the thread count matches the proxy's threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use multiverse_testkit::{try_free_addr, Proc, READY_TIMEOUT};

use super::nginx::Upstreams;

/// The haproxy binary, if one is installed.
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("haproxy"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// haproxy to use: `explicit`, or found on the machine, unless `disabled`; `Err` says why
/// there is none.
pub fn binary(explicit: Option<&Path>, disabled: bool) -> Result<PathBuf, String> {
    if disabled {
        return Err("disabled with --no-haproxy".into());
    }
    match explicit {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(format!("{} not found", path.display())),
        None => find().ok_or_else(|| {
            "no haproxy binary found (`haproxy` on PATH or /usr/sbin/haproxy)".into()
        }),
    }
}

/// `haproxy -v`'s first line as "haproxy/<version>", e.g. "haproxy/2.6.12-1+deb12u4".
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            let first = text.lines().next()?.trim().to_string();
            let v = first.strip_prefix("HAProxy version ")?;
            Some(format!(
                "haproxy/{}",
                v.split_whitespace().next().unwrap_or(v)
            ))
        })
        .unwrap_or_else(|| "haproxy/unknown".into())
}

/// TEI's HTTP routes, as the proxy knows them.
const TEI_HTTP_ROUTES: &str =
    "embed|embed_sparse|embed_all|rerank|predict|similarity|tokenize|decode|info";

/// The haproxy.cfg for `upstreams` with its frontends on `http1` and `http2`, `threads`
/// threads.
pub fn config(
    upstreams: &Upstreams,
    http1: SocketAddr,
    http2: SocketAddr,
    threads: usize,
) -> String {
    let Upstreams {
        openai,
        tei_http,
        tei_grpc,
    } = upstreams;
    format!(
        r#"# Written by multiverse's bench: haproxy as the same kind of proxy as multiverse-proxy.
global
    nbthread {threads}
    maxconn 8192

defaults
    mode http
    option http-keep-alive
    option http-no-delay
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 300s

# HTTP/1.1: OpenAI routes and TEI HTTP routes.
frontend http1
    bind {http1}
    acl tei path -m reg ^/({TEI_HTTP_ROUTES})$
    use_backend tei_http if tei
    default_backend openai

# HTTP/2 cleartext, prior knowledge: gRPC, and h2c clients of the OpenAI routes.
frontend http2
    bind {http2} proto h2
    acl grpc path_beg /tei.v1.
    use_backend tei_grpc if grpc
    default_backend openai

backend openai
    server openai {openai}

backend tei_http
    server tei_http {tei_http}

backend tei_grpc
    server tei_grpc {tei_grpc} proto h2
"#
    )
}

/// A running haproxy.
#[derive(Debug)]
pub struct Haproxy {
    /// The one haproxy process (its threads serve every connection).
    pub proc: Proc,
    /// The HTTP/1.1 frontend.
    pub http1: SocketAddr,
    /// The HTTP/2 cleartext frontend.
    pub http2: SocketAddr,
    /// [`version`].
    pub version: String,
    /// `nbthread`.
    pub threads: usize,
}

impl Haproxy {
    /// Writes the configuration to `<scratch>/haproxy/haproxy.cfg`, checks it (`haproxy -c`)
    /// and starts `bin` in the foreground, waiting until both frontends accept connections.
    pub fn start(
        bin: &Path,
        upstreams: &Upstreams,
        threads: usize,
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        let dir = scratch.join("haproxy");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let http1 = try_free_addr()?;
        let http2 = try_free_addr()?;
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, config(upstreams, http1, http2, threads))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        check(bin, &conf)?;
        let args = ["-db".to_string(), "-f".into(), conf.display().to_string()];
        let proc = Proc::try_spawn_group("haproxy", bin, &args, &[], scratch)?;
        let started = Instant::now();
        loop {
            proc.ensure_running()?;
            let up = |addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            if up(http1).is_ok() && up(http2).is_ok() {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "haproxy did not listen on {http1} and {http2} within {READY_TIMEOUT:?}{}",
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
            threads,
        })
    }
}

/// `haproxy -c -f conf`: fails with haproxy's own words when it rejects the configuration.
pub fn check(bin: &Path, conf: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["-c", "-f"])
        .arg(conf)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "haproxy rejects {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let up = Upstreams {
            openai: "127.0.0.1:1".parse().unwrap(),
            tei_http: "127.0.0.1:2".parse().unwrap(),
            tei_grpc: "127.0.0.1:3".parse().unwrap(),
        };
        config(
            &up,
            "127.0.0.1:10".parse().unwrap(),
            "127.0.0.1:11".parse().unwrap(),
            2,
        )
    }

    #[test]
    fn config_has_both_frontends_and_backends() {
        let text = sample();
        assert!(text.contains("bind 127.0.0.1:10\n"));
        assert!(text.contains("bind 127.0.0.1:11 proto h2\n"));
        assert!(text.contains("server tei_grpc 127.0.0.1:3 proto h2\n"));
        assert!(text.contains("server openai 127.0.0.1:1\n"));
        assert!(text.contains("nbthread 2\n"));
        assert!(text.contains("http-reuse always"));
        assert!(
            text.contains("option http-no-delay"),
            "SSE events are not held back"
        );
        assert!(!text.contains("\n    log "), "nothing is logged");
    }

    /// haproxy itself accepts the generated configuration (`haproxy -c`); skipped, saying so,
    /// when haproxy is not installed.
    #[test]
    fn haproxy_accepts_the_config() {
        let Some(bin) = find() else {
            eprintln!("haproxy_accepts_the_config: skipped, haproxy is not installed");
            return;
        };
        let dir = std::env::temp_dir().join(format!("haproxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, sample()).unwrap();
        let result = check(&bin, &conf);
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
        assert!(version(&bin).starts_with("haproxy/"));
    }

    #[test]
    fn disabled_and_missing_binaries_say_why() {
        assert_eq!(
            binary(None, true),
            Err("disabled with --no-haproxy".to_string())
        );
        let missing = Path::new("/nonexistent/haproxy");
        assert!(binary(Some(missing), false)
            .unwrap_err()
            .contains("/nonexistent/haproxy not found"));
    }
}
