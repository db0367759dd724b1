//! The control plane's configuration: a TOML file (documented in `config/control.toml`),
//! overridden by command-line flags and validated before anything starts. Errors name the file
//! and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

pub use multiverse_common::config::ConfigError;

use crate::backends::BackendSpec;
use crate::events::webhooks::WebhookConfig;
use crate::gpu::fake::FakeGpu;
use crate::health::HealthSettings;
use crate::instances::spec::Template;
use crate::keys::AuthSettings;
use crate::models::policy::{self, PolicySpec};
use crate::tls::TlsListenerConfig;

/// Default operator API listener.
pub const DEFAULT_API: &str = "127.0.0.1:9000";
/// Default discovery (gRPC) listener.
pub const DEFAULT_DISCOVERY: &str = "127.0.0.1:9001";

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// This control plane's id, sent with every snapshot (default: `cp-<host name>`).
    pub id: Option<String>,
    /// Where the desired state (`state.toml`) is kept. Default: `data`.
    pub data_dir: Option<PathBuf>,
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    /// Who may send inference requests through this control plane's proxies.
    pub inference_auth: AuthSettings,
    pub health: HealthSettings,
    pub discovery: DiscoverySettings,
    /// External OpenAI-compatible backends declared up front.
    pub backends: Vec<BackendSpec>,
    pub instances: InstancesConfig,
    /// Instance templates by name (any instance field but `name`).
    pub templates: BTreeMap<String, Template>,
    /// Routing policies by model name (`[models.<name>]`): over a backend's or instance's own
    /// `policy`, under one set through the API (see `crate::models`).
    pub models: BTreeMap<String, PolicySpec>,
    pub gpu: GpuConfig,
    /// Where instance events are POSTed.
    pub webhooks: Vec<WebhookConfig>,
    pub ui: UiConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub state: StateConfig,
    /// `[load]`: engine-aware load (the endpoints' metrics scraped, pushed to proxies).
    pub load: crate::load::LoadSettings,
}

/// `[tracing]`: OTLP span export of the operator API's requests, and TEI instances'
/// `--otlp-endpoint`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector (`http://host:4317`). None (default): no spans, and instances
    /// get no `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the control plane's spans (instances are named after themselves).
    pub service_name: String,
    /// The share of API requests without a `traceparent` that are traced (one with it
    /// follows its sampled flag).
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "multiverse-control".into(),
            sample_ratio: 1.0,
        }
    }
}

/// `[state]`: how the desired state is persisted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// 0: the state file is saved after every change (before the change is answered). More:
    /// changes are answered at once and saved together at most this often; a crash loses at
    /// most this many milliseconds of changes; shutdown saves at once.
    pub save_interval_ms: u64,
}

/// What the web UI is told (`GET /ui/config`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// The proxy the playground calls from the browser (`http(s)://host[:port]`); the proxy's
    /// `[cors] allowed_origins` must list the UI's origin. None: the UI asks the user.
    pub proxy_url: Option<String>,
}

impl UiConfig {
    /// `proxy_url`, when set, is an absolute http(s) URL with a host.
    fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.proxy_url else {
            return Ok(());
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "`{url}` must be an http:// or https:// URL with a host"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("`{url}` must not have a query or fragment"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesConfig {
    /// The TEI binary for HTTP instances.
    pub binary: String,
    /// The TEI binary for gRPC instances (TEI's gRPC builds); default: `binary`.
    pub grpc_binary: Option<String>,
    /// Extra arguments for gRPC instances (`["--grpc"]` for mock-tei).
    pub grpc_args: Vec<String>,
    /// `--hostname` given to TEI.
    pub hostname: String,
    /// The host proxies use to reach instances.
    pub advertise_host: String,
    /// Ports assigned to instances (and their prometheus ports), inclusive.
    pub port_range: [u16; 2],
    pub max_instances: usize,
    /// Per-instance logs. Default: `<data_dir>/logs`, or a temporary directory if not writable.
    pub log_dir: Option<PathBuf>,
    pub log_max_bytes: u64,
    /// Rotated log files kept per instance.
    pub log_keep: usize,
    pub startup_timeout_ms: u64,
    pub startup_probe_interval_ms: u64,
    pub liveness_interval_ms: u64,
    pub liveness_failures: u32,
    pub probe_timeout_ms: u64,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace_ms: u64,
    /// Time a stopping instance is pushed as DRAINING before its process is stopped.
    pub drain_ms: u64,
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// More than this many restarts within `crash_loop_window_ms` ends in `failed`.
    pub crash_loop_restarts: u32,
    pub crash_loop_window_ms: u64,
    /// How often instances' `[limits]` (memory, VRAM) are measured.
    pub limits_interval_ms: u64,
    /// Run instances as this user (name or uid) and group (name or gid; default: the user's
    /// primary group). Needs root (or CAP_SETUID and CAP_SETGID).
    pub user: Option<String>,
    pub group: Option<String>,
    /// The cgroup v2 directory under which each instance with `max_cpu_percent` or
    /// `max_memory_mb` gets its own cgroup; default: the control plane's own cgroup.
    pub cgroup_root: Option<String>,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            binary: "text-embeddings-router".into(),
            grpc_binary: None,
            grpc_args: Vec::new(),
            hostname: "127.0.0.1".into(),
            advertise_host: "127.0.0.1".into(),
            port_range: [18000, 18999],
            max_instances: 32,
            log_dir: None,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            startup_timeout_ms: 600_000,
            startup_probe_interval_ms: 1_000,
            liveness_interval_ms: 5_000,
            liveness_failures: 3,
            probe_timeout_ms: 2_000,
            stop_grace_ms: 10_000,
            drain_ms: 2_000,
            restart_backoff_initial_ms: 1_000,
            restart_backoff_max_ms: 60_000,
            crash_loop_restarts: 5,
            crash_loop_window_ms: 300_000,
            limits_interval_ms: 1_000,
            user: None,
            group: None,
            cgroup_root: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Placement on a GPU with less free VRAM than this fails (INSUFFICIENT_VRAM).
    pub min_free_vram_mb: u64,
    /// What an instance that does not fit (its `vram_mb`, at least `min_free_vram_mb`) does:
    /// `refuse` (INSUFFICIENT_VRAM, the default) or `warn` (placed anyway, with a warning).
    pub placement: crate::gpu::PlacementMode,
    /// Simulated GPUs for hosts without NVIDIA GPUs (demos, tests). Empty: use NVML.
    pub simulated: Vec<FakeGpu>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Keys accepted on /admin/* (`Authorization: Bearer <key>` or `X-API-Key: <key>`).
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line (blank lines and `#` comments ignored).
    pub api_key_file: Option<PathBuf>,
    /// Allow backends on loopback, private, link-local and metadata addresses.
    pub allow_private_backends: bool,
    /// Most backends that may be registered.
    pub max_backends: usize,
    /// Serve `/gpus`, `/snapshot` and `/proxies` (host detail: process ids, endpoint addresses,
    /// proxy ids) without a key.
    pub public_read: bool,
    /// Largest operator API request body (413 `PAYLOAD_TOO_LARGE` above).
    pub max_body_bytes: usize,
    /// Requests per minute from one client address (IPv6: one /64) on the operator API and web
    /// UI; 0 (default): no limit. Over it: 429 `RATE_LIMITED` with `Retry-After`.
    pub per_ip_rpm: u32,
    /// Largest request header in bytes (8192-1048576): a larger one gets a bare 431 and the
    /// connection is closed.
    pub max_header_bytes: usize,
    /// Most header fields a request may carry (1-256): more get 431 `REQUEST_HEADER_TOO_LARGE`.
    pub max_headers: usize,
    /// Operator API connections open at once, and from one address (IPv6: one /64; 0: no
    /// per-address limit); beyond, a new connection is closed at once.
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    /// TLS (and mTLS for operators) on the operator API listener; cleartext without it.
    pub tls: Option<AdminTlsConfig>,
}

/// `[admin.tls]`: `[discovery.tls]`'s keys, and the reverse proxies trusted to forward the
/// operator's client certificate in `X-SSL-Client-Cert`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// mTLS: every request but `GET /health` needs a client certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
    /// mTLS: of those, only certificates with one of these names (CN or DNS/URI SAN; exact, or
    /// `*.suffix`). Empty: any certificate the CA signed.
    pub allowed_names: Vec<String>,
    /// Peers (CIDRs, or single addresses) whose `X-SSL-Client-Cert` header (URL-encoded PEM,
    /// nginx's `$ssl_client_escaped_cert`) is taken as the client's certificate. From any other
    /// peer the header is removed unread.
    pub trusted_proxies: Vec<String>,
}

impl AdminTlsConfig {
    /// The listener's files and allow-list.
    pub fn listener(&self) -> TlsListenerConfig {
        TlsListenerConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            allowed_names: self.allowed_names.clone(),
        }
    }

    /// `trusted_proxies` parsed (validated by [`ControlConfig::validate`]).
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, (usize, String)> {
        self.trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        (
                            i,
                            format!("`{s}` is not a CIDR (10.0.0.0/8) or an IP address"),
                        )
                    })
            })
            .collect()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_key_file: None,
            allow_private_backends: false,
            max_backends: 256,
            public_read: false,
            max_body_bytes: 1024 * 1024,
            per_ip_rpm: 0,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_connections: 1024,
            max_connections_per_ip: 64,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// Changes within this many ms of the first become one snapshot version.
    pub coalesce_ms: u64,
    /// TLS (and mTLS) on the discovery listener; cleartext without it.
    pub tls: Option<TlsListenerConfig>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            coalesce_ms: 20,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Operator REST API.
    pub api: String,
    /// Route discovery gRPC for proxies.
    pub discovery: String,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            api: DEFAULT_API.into(),
            discovery: DEFAULT_DISCOVERY.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON log lines instead of human-readable text.
    pub json: bool,
}

/// The checks `[discovery.tls]` and `[admin.tls]` share: (key, message) of the first failure.
fn validate_tls(table: &str, tls: &TlsListenerConfig) -> Result<(), (String, String)> {
    for (key, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
        if file.as_os_str().is_empty() {
            return Err((
                format!("{table}.{key}"),
                format!("is required in [{table}]"),
            ));
        }
    }
    if !tls.allowed_names.is_empty() && tls.client_ca_file.is_none() {
        return Err((
            format!("{table}.allowed_names"),
            format!(
                "needs {table}.client_ca_file (client certificates are only asked for with a CA)"
            ),
        ));
    }
    if tls.allowed_names.iter().any(|n| n.trim().is_empty()) {
        return Err((
            format!("{table}.allowed_names"),
            "must not contain an empty name".into(),
        ));
    }
    Ok(())
}

impl ControlConfig {
    /// Reads and parses a TOML file (validated separately, after flags are applied).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        multiverse_common::config::load(path)
    }

    /// Checks every field; `path` is named in errors.
    pub fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            key,
            message,
        };
        multiverse_common::otlp::OtlpSettings::check(
            self.tracing.otlp_endpoint.as_deref(),
            &self.tracing.service_name,
            self.tracing.sample_ratio,
        )
        .map_err(|(key, why)| invalid(format!("tracing.{key}"), why))?;
        for (key, value) in [
            ("listen.api", &self.listen.api),
            ("listen.discovery", &self.listen.discovery),
        ] {
            value.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    key.into(),
                    format!("`{value}` is not an ip:port address ({e})"),
                )
            })?;
        }
        if let Some(tls) = &self.discovery.tls {
            validate_tls("discovery.tls", tls).map_err(|(k, m)| invalid(k, m))?;
        }
        if let Some(tls) = &self.admin.tls {
            validate_tls("admin.tls", &tls.listener()).map_err(|(k, m)| invalid(k, m))?;
            tls.trusted_proxies()
                .map_err(|(i, m)| invalid(format!("admin.tls.trusted_proxies[{i}]"), m))?;
            if !tls.trusted_proxies.is_empty() && tls.client_ca_file.is_none() {
                return Err(invalid(
                    "admin.tls.trusted_proxies".into(),
                    "needs admin.tls.client_ca_file (a forwarded certificate is verified against it)".into(),
                ));
            }
        }
        // Two listeners on one address cannot both bind (port 0 picks two free ports).
        if self.listen.api == self.listen.discovery && !self.listen.api.ends_with(":0") {
            return Err(invalid(
                "listen.discovery".into(),
                "must differ from listen.api".into(),
            ));
        }
        for (key, v) in [
            ("health.interval_ms", self.health.interval_ms),
            ("health.timeout_ms", self.health.timeout_ms),
            (
                "health.unhealthy_threshold",
                u64::from(self.health.unhealthy_threshold),
            ),
            (
                "health.healthy_threshold",
                u64::from(self.health.healthy_threshold),
            ),
            (
                "health.max_concurrent_checks",
                self.health.max_concurrent_checks as u64,
            ),
            ("admin.max_backends", self.admin.max_backends as u64),
            ("admin.max_body_bytes", self.admin.max_body_bytes as u64),
            ("load.timeout_ms", self.load.timeout_ms),
            (
                "load.max_concurrent_scrapes",
                self.load.max_concurrent_scrapes as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key.into(), "must be > 0".into()));
            }
        }
        if self.load.scrape_interval_ms > 3_600_000 {
            return Err(invalid(
                "load.scrape_interval_ms".into(),
                "must be at most 3600000 (one hour; 0 turns scraping off)".into(),
            ));
        }
        let admin = &self.admin;
        if !(8192..=1 << 20).contains(&admin.max_header_bytes) {
            return Err(invalid(
                "admin.max_header_bytes".into(),
                "must be between 8192 and 1048576".into(),
            ));
        }
        if !(1..=256).contains(&admin.max_headers) {
            return Err(invalid(
                "admin.max_headers".into(),
                "must be between 1 and 256".into(),
            ));
        }
        if !(1..=1 << 21).contains(&admin.max_connections) {
            return Err(invalid(
                "admin.max_connections".into(),
                "must be between 1 and 2097152".into(),
            ));
        }
        if admin.max_connections_per_ip > 65_535 {
            return Err(invalid(
                "admin.max_connections_per_ip".into(),
                "must be at most 65535 (0: no per-address limit)".into(),
            ));
        }
        let inst = &self.instances;
        if inst.port_range[0] < 1024 || inst.port_range[0] >= inst.port_range[1] {
            return Err(invalid(
                "instances.port_range".into(),
                "must be [low, high] with 1024 <= low < high".into(),
            ));
        }
        for (key, v) in [
            ("instances.max_instances", inst.max_instances as u64),
            ("instances.startup_timeout_ms", inst.startup_timeout_ms),
            (
                "instances.startup_probe_interval_ms",
                inst.startup_probe_interval_ms,
            ),
            ("instances.liveness_interval_ms", inst.liveness_interval_ms),
            (
                "instances.liveness_failures",
                u64::from(inst.liveness_failures),
            ),
            ("instances.probe_timeout_ms", inst.probe_timeout_ms),
            (
                "instances.restart_backoff_initial_ms",
                inst.restart_backoff_initial_ms,
            ),
            ("instances.log_max_bytes", inst.log_max_bytes),
            ("instances.limits_interval_ms", inst.limits_interval_ms),
        ] {
            if v == 0 {
                return Err(invalid(key.into(), "must be > 0".into()));
            }
        }
        if inst.binary.trim().is_empty() {
            return Err(invalid(
                "instances.binary".into(),
                "must name a program".into(),
            ));
        }
        for (name, t) in &self.templates {
            if !t.name.is_empty() {
                return Err(invalid(
                    format!("templates.{name}.name"),
                    "templates have no name; instances made from them do".into(),
                ));
            }
            if let Some(p) = &t.policy {
                policy::validate(p).map_err(|e| {
                    invalid(format!("templates.{name}.policy.{}", e.field), e.message)
                })?;
            }
            let max_rps = crate::instances::spec::MAX_REQUESTS_PER_SEC;
            if t.limits
                .as_ref()
                .and_then(|l| l.max_requests_per_sec)
                .is_some_and(|r| r == 0 || r > max_rps)
            {
                return Err(invalid(
                    format!("templates.{name}.limits.max_requests_per_sec"),
                    format!("must be 1-{max_rps}"),
                ));
            }
        }
        for (name, p) in &self.models {
            if !crate::models::valid_model_name(name) {
                return Err(invalid(
                    format!("models.{name}"),
                    "model names are 1-256 characters without control characters".into(),
                ));
            }
            policy::validate(p)
                .map_err(|e| invalid(format!("models.{name}.{}", e.field), e.message))?;
        }
        for (i, g) in self.gpu.simulated.iter().enumerate() {
            g.validate()
                .map_err(|m| invalid(format!("gpu.simulated[{i}]"), m))?;
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate()
                .map_err(|e| invalid(format!("webhooks[{i}].{}", e.field), e.message))?;
        }
        self.ui
            .validate()
            .map_err(|m| invalid("ui.proxy_url".into(), m))?;
        for (i, k) in self.admin.api_keys.iter().enumerate() {
            if k.len() < 8 || k.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(invalid(
                    format!("admin.api_keys[{i}]"),
                    "must be at least 8 printable ASCII characters".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            b.validate()
                .map_err(|e| invalid(format!("backends[{i}].{}", e.field()), e.message().into()))?;
            if !names.insert(b.name.as_str()) {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!("`{}` is used by another backend", b.name),
                ));
            }
        }
        Ok(())
    }

    /// The admin API keys from `api_keys` and `api_key_file`.
    pub fn admin_keys(&self, path: Option<&Path>) -> Result<Vec<String>, ConfigError> {
        let mut keys = self.admin.api_keys.clone();
        if let Some(file) = &self.admin.api_key_file {
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Invalid {
                path: path.map(Path::to_path_buf),
                key: "admin.api_key_file".into(),
                message: format!("cannot read {}: {e}", file.display()),
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(keys)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
    }

    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            multiverse_common::config::hostname()
                .map_or_else(|| "cp-local".into(), |host| format!("cp-{host}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_addresses() {
        let c = ControlConfig::default();
        assert_eq!(c.listen.api, "127.0.0.1:9000");
        assert_eq!(c.listen.discovery, "127.0.0.1:9001");
        c.validate(None).expect("defaults valid");
    }

    #[test]
    fn admin_listener_limits_out_of_range_name_the_key() {
        for (key, value) in [
            ("max_header_bytes", "4096"),
            ("max_headers", "0"),
            ("max_headers", "300"),
            ("max_connections", "0"),
            ("max_connections_per_ip", "70000"),
        ] {
            let c: ControlConfig =
                toml::from_str(&format!("[admin]\n{key} = {value}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("admin.{key}")) && msg.contains("/etc/c.toml"),
                "{key} = {value}: {msg}"
            );
        }
    }

    #[test]
    fn a_template_rate_out_of_range_names_the_key_and_file() {
        for value in ["0", "1000001"] {
            let c: ControlConfig = toml::from_str(&format!(
                "[templates.t]\nmodel_id = \"m\"\nlimits = {{ max_requests_per_sec = {value} }}"
            ))
            .expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("templates.t.limits.max_requests_per_sec")
                    && msg.contains("/etc/c.toml"),
                "{value}: {msg}"
            );
        }
        let ok: ControlConfig = toml::from_str(
            "[templates.t]\nmodel_id = \"m\"\nlimits = { max_requests_per_sec = 50 }",
        )
        .expect("parses");
        ok.validate(None).expect("in range");
    }

    #[test]
    fn tracing_keys_are_validated_by_key() {
        let c: ControlConfig =
            toml::from_str("[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"").expect("parses");
        assert!(c.validate(None).is_ok());
        for (text, key) in [
            (
                "otlp_endpoint = \"127.0.0.1:4317\"",
                "tracing.otlp_endpoint",
            ),
            ("service_name = \"\"", "tracing.service_name"),
            ("sample_ratio = 2.0", "tracing.sample_ratio"),
        ] {
            let c: ControlConfig = toml::from_str(&format!("[tracing]\n{text}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/x.toml")))
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("/etc/x.toml"),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn example_files_parse_and_validate() {
        for name in [
            "control.toml",
            "quickstart-control.toml",
            "production-control.toml",
            "development-control.toml",
            "../deploy/kubernetes/base/config/control-gpu.toml",
            "../deploy/kubernetes/base/config/control-backends.toml",
            "../deploy/kubernetes/overlays/development/config/control-gpu.toml",
        ] {
            let path = multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(name);
            let c = ControlConfig::from_file(&path).expect(name);
            c.validate(Some(&path)).expect(name);
        }
    }

    #[test]
    fn tls_tables_need_their_files_a_ca_for_an_allow_list_and_valid_trusted_proxies() {
        for (toml, key) in [
            ("[discovery.tls]\nkey_file = \"/k\"", "discovery.tls.cert_file"),
            ("[discovery.tls]\ncert_file = \"/c\"", "discovery.tls.key_file"),
            (
                "[discovery.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nallowed_names = [\"p\"]",
                "discovery.tls.allowed_names",
            ),
            (
                "[discovery.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nclient_ca_file = \"/ca\"\nallowed_names = [\" \"]",
                "discovery.tls.allowed_names",
            ),
            ("[admin.tls]\nkey_file = \"/k\"", "admin.tls.cert_file"),
            (
                "[admin.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nallowed_names = [\"op\"]",
                "admin.tls.allowed_names",
            ),
            (
                "[admin.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nclient_ca_file = \"/ca\"\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/33\"]",
                "admin.tls.trusted_proxies[1]",
            ),
            (
                "[admin.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\ntrusted_proxies = [\"127.0.0.1\"]",
                "admin.tls.trusted_proxies",
            ),
        ] {
            let c: ControlConfig = toml::from_str(toml).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/c.toml")))
                .expect_err(toml)
                .to_string();
            assert!(msg.contains(key) && msg.contains("/etc/c.toml"), "{msg}");
        }
    }

    #[test]
    fn load_settings_are_checked_and_zero_turns_scraping_off() {
        for (toml, key) in [
            (
                "[load]\nscrape_interval_ms = 3600001",
                "load.scrape_interval_ms",
            ),
            ("[load]\ntimeout_ms = 0", "load.timeout_ms"),
            (
                "[load]\nmax_concurrent_scrapes = 0",
                "load.max_concurrent_scrapes",
            ),
        ] {
            let c: ControlConfig = toml::from_str(toml).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/c.toml")))
                .expect_err(toml)
                .to_string();
            assert!(msg.contains(key) && msg.contains("/etc/c.toml"), "{msg}");
        }
        let off: ControlConfig = toml::from_str("[load]\nscrape_interval_ms = 0").expect("parses");
        assert!(off.validate(None).is_ok());
        assert_eq!(ControlConfig::default().load.scrape_interval_ms, 1000);
    }

    #[test]
    fn errors_name_file_and_key() {
        let c: ControlConfig =
            toml::from_str("[[backends]]\nname = \"a\"\nurl = \"ftp://x\"\nmodels = [\"m\"]")
                .expect("parses");
        let msg = c
            .validate(Some(Path::new("/etc/c.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("/etc/c.toml") && msg.contains("backends[0].url"),
            "{msg}"
        );
        for bad in ["ftp://x", "not a url", "http://", "http://h/?q=1"] {
            let c: ControlConfig =
                toml::from_str(&format!("[ui]\nproxy_url = \"{bad}\"")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("/etc/c.toml") && msg.contains("ui.proxy_url"),
                "{bad}: {msg}"
            );
        }
        let ok: ControlConfig =
            toml::from_str("[ui]\nproxy_url = \"https://gw.example.com:8443\"").expect("parses");
        ok.validate(None).expect("an https URL is valid");
        let dup: ControlConfig = toml::from_str(
            "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nmodels = [\"m\"]\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:2\"\nmodels = [\"m\"]",
        )
        .expect("parses");
        assert!(dup
            .validate(None)
            .unwrap_err()
            .to_string()
            .contains("backends[1].name"));
    }
}
