//! `multiverse-control` in a stack ([`Control`]): its config written from
//! [`ControlConfig`] with the listeners, the id and (unless chosen) a data directory of the
//! stack's own, ready once `GET /health` answers 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use multiverse_control::backends::BackendSpec;
use multiverse_control::config::ControlConfig;
use serde::Serialize;

use super::mocks::MockOpenAi;
use super::Launch;
use crate::binaries::CONTROL;
use crate::config_file;
use crate::ports::try_free_addr;
use crate::process::Proc;
use crate::wait::{try_wait_ok, READY_TIMEOUT};

/// A running control plane.
#[derive(Debug)]
pub struct Control {
    pub proc: Proc,
    /// The operator API.
    pub api: SocketAddr,
    /// The discovery (gRPC) listener proxies connect to.
    pub discovery: SocketAddr,
    /// Its config file (`<dir>/<id>.toml`).
    pub config: PathBuf,
}

impl Control {
    /// Starts multiverse-control `id` with `config` on free ports; does not wait for it (see
    /// [`Control::try_wait_ready`]).
    pub fn try_spawn(launch: &Launch, id: &str, config: ControlConfig) -> anyhow::Result<Control> {
        Self::try_spawn_on(launch, id, config, try_free_addr()?, try_free_addr()?)
    }

    /// Like [`Control::try_spawn`] on the given addresses (a restart on the same ones). The
    /// config's `id` and `listen` are set here; its `data_dir`, when not chosen, is
    /// `<dir>/<id>-data`.
    pub fn try_spawn_on(
        launch: &Launch,
        id: &str,
        mut config: ControlConfig,
        api: SocketAddr,
        discovery: SocketAddr,
    ) -> anyhow::Result<Control> {
        config.id = Some(id.to_string());
        config
            .data_dir
            .get_or_insert_with(|| launch.file(&format!("{id}-data")));
        config.listen.api = api.to_string();
        config.listen.discovery = discovery.to_string();
        let path = launch.file(&format!("{id}.toml"));
        config_file::write(&path, &config)?;
        let args = vec!["--config".to_string(), path.display().to_string()];
        let proc = launch.spawn(id, CONTROL, &args, false)?;
        Ok(Control {
            proc,
            api,
            discovery,
            config: path,
        })
    }

    /// Waits until `GET /health` answers 200; fails if the process exits or after
    /// [`READY_TIMEOUT`].
    pub async fn try_wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/health", self.api_url());
        try_wait_ok(client, &url, READY_TIMEOUT, &self.proc).await
    }

    /// Starts control plane `id` for a test writing to `dir`, configured by the TOML `body`
    /// (any keys but `id` and `[listen]`), and waits until it is ready; panics if it fails.
    pub async fn start(dir: &Path, id: &str, body: &str) -> Control {
        let (api, discovery) = (free_addr(), free_addr());
        Self::start_on(dir, id, body, api, discovery).await
    }

    /// [`Control::start`] on the given addresses.
    pub async fn start_on(
        dir: &Path,
        id: &str,
        body: &str,
        api: SocketAddr,
        discovery: SocketAddr,
    ) -> Control {
        // Tests read /gpus, /snapshot and /proxies without a key unless `body` says
        // `[admin] public_read = false` (the default of a real control plane).
        let mut base = ControlConfig::default();
        base.admin.public_read = true;
        let config = config_file::overlay(&base, body)
            .unwrap_or_else(|e| panic!("control plane {id}: {e:#}"));
        let launch = Launch::for_tests(dir);
        let c = Self::try_spawn_on(&launch, id, config, api, discovery)
            .unwrap_or_else(|e| panic!("{e:#}"));
        if let Err(e) = c.try_wait_ready(&reqwest::Client::new()).await {
            panic!("{e:#}");
        }
        c
    }

    pub fn discovery_url(&self) -> String {
        format!("http://{}", self.discovery)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
}

fn free_addr() -> SocketAddr {
    try_free_addr().expect("bind 127.0.0.1:0")
}

/// A backend of `models` at `url`, as declared in a control plane's config.
/// Every other field as the control plane defaults it.
pub fn backend(name: &str, url: &str, models: &[&str]) -> BackendSpec {
    let mut keys = toml::Table::new();
    keys.insert("name".into(), name.into());
    keys.insert("url".into(), url.into());
    keys.insert(
        "models".into(),
        toml::Value::Array(models.iter().map(|&m| m.into()).collect()),
    );
    toml::Value::Table(keys)
        .try_into()
        .unwrap_or_else(|e| panic!("the kit builds a valid backend: {e}"))
}

/// `[[backends]]` TOML declaring `mocks` as backends of `model` (for a [`Control::start`]
/// body: tables come after top-level keys).
pub fn backends_toml(mocks: &[&MockOpenAi], model: &str) -> String {
    #[derive(Serialize)]
    struct Backends {
        backends: Vec<BackendSpec>,
    }
    let doc = Backends {
        backends: mocks
            .iter()
            .map(|m| backend(&m.name, &m.url(), &[model]))
            .collect(),
    };
    toml::to_string(&doc).unwrap_or_else(|e| panic!("cannot serialise backends: {e}"))
}
