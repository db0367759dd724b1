//! `multiverse-proxy` in a stack ([`Proxy`]): its config written from [`ProxyConfig`] with
//! the node id and the listeners, fed by control planes or by a standalone routes file
//! ([`RoutesFile`]); started once the admin `GET /healthz` answers, ready (routing) once
//! `GET /ready` does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use multiverse_proxy::config::{ControlPlaneConfig, ProxyConfig};
use multiverse_proxy::standalone::RoutesFile;

use super::Launch;
use crate::binaries::PROXY;
use crate::config_file;
use crate::ports::try_free_addr;
use crate::process::Proc;
use crate::wait::{try_wait_accepting, try_wait_ok, READY_TIMEOUT};

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub proc: Proc,
    /// The client listener (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

impl Proxy {
    /// Starts multiverse-proxy `node_id` with `config` (its `node_id`, unless chosen, and its
    /// listeners set here, on free ports); does not wait for it.
    pub fn try_spawn(
        launch: &Launch,
        node_id: &str,
        mut config: ProxyConfig,
    ) -> anyhow::Result<Proxy> {
        let listen = try_free_addr()?;
        let admin = try_free_addr()?;
        config.node_id.get_or_insert_with(|| node_id.to_string());
        config.listen.clients = listen.to_string();
        config.listen.admin = admin.to_string();
        let path = launch.file(&format!("{node_id}.toml"));
        config_file::write(&path, &config)?;
        let args = vec!["--config".to_string(), path.display().to_string()];
        let proc = launch.spawn(node_id, PROXY, &args, false)?;
        Ok(Proxy {
            proc,
            listen,
            admin,
        })
    }

    /// Starts a standalone proxy routing by `routes`, written to
    /// `<dir>/<node_id>-routes.toml` ([`Proxy::routes_file`]); does not wait for it.
    pub fn try_spawn_standalone(
        launch: &Launch,
        node_id: &str,
        config: ProxyConfig,
        routes: &RoutesFile,
    ) -> anyhow::Result<Proxy> {
        let file = Self::routes_file(&launch.dir, node_id);
        config_file::write(&file, routes)?;
        Self::try_spawn(launch, node_id, Self::with_routes_file(config, file))
    }

    fn with_routes_file(mut config: ProxyConfig, file: PathBuf) -> ProxyConfig {
        config.standalone.routes_file = Some(file);
        config
    }

    /// Waits until the admin listener answers (`GET /healthz`) and the client listener accepts
    /// connections; fails if the process exits or after [`READY_TIMEOUT`].
    ///
    /// The proxy starts its admin service before its client listener, so an admin answer alone
    /// does not mean clients can connect yet.
    pub async fn try_wait_started(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.admin_url());
        try_wait_ok(client, &url, READY_TIMEOUT, &self.proc).await?;
        try_wait_accepting(self.listen, READY_TIMEOUT, &self.proc).await
    }

    /// Waits until the proxy routes (`GET /ready` answers 200) and its client listener accepts
    /// connections; fails if the process exits or after [`READY_TIMEOUT`].
    pub async fn try_wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/ready", self.admin_url());
        try_wait_ok(client, &url, READY_TIMEOUT, &self.proc).await?;
        try_wait_accepting(self.listen, READY_TIMEOUT, &self.proc).await
    }

    /// The config the integration tests start proxies with: two threads, a short drain, fast
    /// reconnects to `control_planes`.
    pub fn test_config(control_planes: &[String]) -> ProxyConfig {
        let mut c = ProxyConfig::default();
        c.server.threads = Some(2);
        c.server.drain_grace_seconds = 5;
        c.discovery.backoff_initial_ms = 50;
        c.discovery.backoff_max_ms = 500;
        c.discovery.keepalive_interval_ms = 1000;
        c.control_planes = control_planes
            .iter()
            .map(|url| ControlPlaneConfig { url: url.clone() })
            .collect();
        c
    }

    /// Starts a proxy for a test writing to `dir`, fed by `control_planes`, and waits until its
    /// admin listener is up (not until it is ready: see [`Proxy::wait_ready`]).
    pub async fn start(dir: &Path, node_id: &str, control_planes: &[String]) -> Proxy {
        Self::start_with(dir, node_id, control_planes, "").await
    }

    /// Like [`Proxy::start`] with the TOML `extra_toml` over [`Proxy::test_config`].
    pub async fn start_with(
        dir: &Path,
        node_id: &str,
        control_planes: &[String],
        extra_toml: &str,
    ) -> Proxy {
        let config = Self::test_overlay(node_id, control_planes, extra_toml);
        Self::start_config(dir, node_id, config).await
    }

    /// Starts a standalone proxy for a test routing by the routes file `routes` (TOML, written
    /// as given to [`Proxy::routes_file`] after checking that it is a valid routes file: its
    /// version defaults to a hash of the text), with `extra_toml` over
    /// [`Proxy::test_config`], and waits until it is ready.
    pub async fn start_standalone(
        dir: &Path,
        node_id: &str,
        routes: &str,
        extra_toml: &str,
    ) -> Proxy {
        if let Err(e) = toml::from_str::<RoutesFile>(routes) {
            panic!("proxy {node_id}: not a valid routes file: {e}\n{routes}");
        }
        let file = Self::routes_file(dir, node_id);
        std::fs::write(&file, routes).expect("write routes file");
        let config = Self::with_routes_file(Self::test_overlay(node_id, &[], extra_toml), file);
        let p = Self::start_config(dir, node_id, config).await;
        p.wait_ready(&reqwest::Client::new()).await;
        p
    }

    fn test_overlay(node_id: &str, control_planes: &[String], extra_toml: &str) -> ProxyConfig {
        config_file::overlay(&Self::test_config(control_planes), extra_toml)
            .unwrap_or_else(|e| panic!("proxy {node_id}: {e:#}"))
    }

    async fn start_config(dir: &Path, node_id: &str, config: ProxyConfig) -> Proxy {
        let p = Self::try_spawn(&Launch::for_tests(dir), node_id, config)
            .unwrap_or_else(|e| panic!("{e:#}"));
        if let Err(e) = p.try_wait_started(&reqwest::Client::new()).await {
            panic!("{e:#}");
        }
        p
    }

    /// The standalone routes file of proxy `node_id` started in `dir`.
    pub fn routes_file(dir: &Path, node_id: &str) -> PathBuf {
        dir.join(format!("{node_id}-routes.toml"))
    }

    /// Asks the proxy to reload its routes file (SIGHUP).
    pub fn reload(&self) {
        self.proc.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// [`Proxy::try_wait_ready`]; panics if it fails.
    pub async fn wait_ready(&self, client: &reqwest::Client) {
        if let Err(e) = self.try_wait_ready(client).await {
            panic!("{e:#}");
        }
    }

    /// The value of the first sample on the proxy's `/metrics` whose line starts with `series`
    /// (a name, or a name and its labels; end it with a space to match one series exactly);
    /// 0 when there is none. Panics if `/metrics` does not answer within 5 s.
    pub async fn metric(&self, client: &reqwest::Client, series: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.admin_url()))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The proxy's `/config_dump` (None if it does not answer within 2 s).
    pub async fn config_dump(&self, client: &reqwest::Client) -> Option<serde_json::Value> {
        client
            .get(format!("{}/config_dump", self.admin_url()))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// The id of every endpoint in the proxy's table (empty if it does not answer).
    pub async fn endpoint_ids(
        &self,
        client: &reqwest::Client,
    ) -> std::collections::BTreeSet<String> {
        let Some(dump) = self.config_dump(client).await else {
            return Default::default();
        };
        dump["table"]["models"]
            .as_object()
            .into_iter()
            .flat_map(|models| models.values())
            .filter_map(|m| m["endpoints"].as_array())
            .flatten()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    }

    /// The health `/config_dump` shows for endpoint `id` of `model` (None if absent).
    pub async fn endpoint_health(
        &self,
        client: &reqwest::Client,
        model: &str,
        id: &str,
    ) -> Option<String> {
        let dump: serde_json::Value = client
            .get(format!("{}/config_dump", self.admin_url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        dump["table"]["models"][model]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id)
            .and_then(|e| e["health"].as_str())
            .map(str::to_string)
    }

    /// The routing-table version `/ready` reports (empty when not ready or not answering; the
    /// client's timeout bounds the wait).
    pub async fn version(&self, client: &reqwest::Client) -> String {
        let Ok(r) = client
            .get(format!("{}/ready", self.admin_url()))
            .send()
            .await
        else {
            return String::new();
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["version"].as_str().unwrap_or_default().to_string()
    }
}
