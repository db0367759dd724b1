//! `multiverse-control` command line: load the configuration, apply the flags, and run the
//! control plane ([`multiverse_control::App`]) until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::Parser;
use multiverse_control::{App, ControlConfig};

/// Multiverse control plane: backends, TEI instances, routes and discovery for proxies.
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

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("multiverse-control: {e:#}");
        std::process::exit(2);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config.as_deref();
    let mut cfg = path.map_or_else(|| Ok(ControlConfig::default()), ControlConfig::from_file)?;
    cfg.listen.api = cli.api_listen.unwrap_or(cfg.listen.api);
    cfg.listen.discovery = cli.discovery_listen.unwrap_or(cfg.listen.discovery);
    cfg.id = cli.id.or(cfg.id);
    cfg.data_dir = cli.data_dir.or(cfg.data_dir);
    cfg.log.json |= cli.log_json;
    // Checked here too, so that errors name the file.
    cfg.validate(path)?;
    cfg.admin_keys(path)?;
    multiverse_common::telemetry::init(cfg.log.json)?;
    let app = App::build(cfg).await?;
    app.serve(multiverse_common::signals::termination()).await
}
