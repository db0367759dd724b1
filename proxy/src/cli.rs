//! The `multiverse-proxy` command line: flags over the TOML configuration, logging, and the
//! process's signals around a [`Proxy`] — SIGTERM (and SIGQUIT) stop it gracefully, draining
//! open requests for up to `server.drain_grace_seconds`; SIGINT stops it at once. A listener
//! that cannot be bound ends the process with exit code 2.

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{ControlPlaneConfig, ProxyConfig};
use crate::server::{Proxy, Stop};

/// Multiverse data plane: routes OpenAI-compatible traffic to model servers by `model`.
#[derive(Debug, Parser)]
#[command(name = "multiverse-proxy", version)]
pub struct Cli {
    /// TOML configuration file (see config/proxy.toml); flags override it.
    #[arg(short, long, env = "MULTIVERSE_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client listener for HTTP/1.1 and h2c [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener (/ready, /metrics, /config_dump) [default: 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Control plane discovery URL, e.g. http://127.0.0.1:9001, or dns+http://NAME:PORT for every
    /// address NAME resolves to (repeatable; replaces the file's).
    #[arg(long = "control-plane", value_name = "URL")]
    pub control_planes: Vec<String>,
    /// Standalone mode: static routes file (see config/routes.toml), reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "control_planes")]
    pub routes: Option<PathBuf>,
    /// Id this proxy reports to control planes [default: host name].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Worker threads (replaces the file's `server.threads`) [default: the number of CPUs].
    #[arg(long, value_name = "N", env = "MULTIVERSE_PROXY_THREADS")]
    pub threads: Option<usize>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools besides running the proxy.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Reads an inference key's secret from stdin (one line) and prints its SHA-256, the
    /// `sha256` of a routes file's `[[auth.keys]]` (same as `printf %s "$KEY" | sha256sum`).
    /// The secret is never taken as an argument, so it stays out of shell history and `ps`.
    HashKey,
}

/// `hash-key`: the hash of the secret on `input`'s first line.
pub fn hash_key(input: impl std::io::BufRead) -> anyhow::Result<String> {
    let line = input.lines().next().transpose()?.unwrap_or_default();
    let secret = line.trim();
    anyhow::ensure!(!secret.is_empty(), "no key on stdin");
    let hash = multiverse_common::keys::hash_secret(secret.as_bytes());
    Ok(multiverse_common::keys::to_hex(&hash))
}

impl Cli {
    /// The configuration file with the flags applied, validated.
    pub fn config(self) -> anyhow::Result<ProxyConfig> {
        let mut cfg = match &self.config {
            Some(path) => ProxyConfig::from_file(path)?,
            None => ProxyConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen.clients = v;
        }
        if let Some(v) = self.admin_listen {
            cfg.listen.admin = v;
        }
        if !self.control_planes.is_empty() {
            cfg.control_planes = self
                .control_planes
                .into_iter()
                .map(|url| ControlPlaneConfig { url })
                .collect();
        }
        if self.routes.is_some() {
            cfg.standalone.routes_file = self.routes;
            cfg.control_planes.clear();
        }
        if self.node_id.is_some() {
            cfg.node_id = self.node_id;
        }
        if self.threads.is_some() {
            cfg.server.threads = self.threads;
        }
        cfg.log.json |= self.log_json;
        cfg.validate(self.config.as_deref())?;
        Ok(cfg)
    }
}

/// Runs the proxy until a signal stops it (or the subcommand).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::HashKey) = cli.command {
        println!("{}", hash_key(std::io::stdin().lock())?);
        return Ok(());
    }
    let cfg = cli.config()?;
    multiverse_common::telemetry::init(cfg.log.json)?;
    // One small runtime for the signals and the stop; the proxy runs on its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Installed before the listeners open, so no signal meets the default action.
        let mut term = signal(SignalKind::terminate())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut int = signal(SignalKind::interrupt())?;
        let proxy = Proxy::start(&cfg)?;
        let ended = tokio::select! {
            _ = term.recv() => Ok(Stop::Graceful),
            _ = quit.recv() => Ok(Stop::Graceful),
            _ = int.recv() => Ok(Stop::Fast),
            reason = proxy.failed() => Err(reason),
        };
        match ended {
            Ok(how) => {
                tracing::info!(?how, "signal received: stopping");
                proxy.stop(how).await;
                tracing::info!("stopped");
                Ok(())
            }
            // A proxy that is alive but never ready helps nobody: exit with the reason.
            Err(reason) => {
                proxy.stop(Stop::Fast).await;
                Err(anyhow::anyhow!(reason))
            }
        }
    })
}
