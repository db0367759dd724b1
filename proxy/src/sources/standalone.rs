//! Standalone mode: routes from a static TOML file instead of a control plane, reloaded on
//! SIGHUP. The file is turned into the same snapshot a control plane would push and goes
//! through the same validation; a bad file is rejected with a logged reason and the table in
//! force keeps serving. Format: `config/routes.toml`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use multiverse_common::vocab::{Health, LbStrategy, ModelKind, Protocol, UnknownName};
use multiverse_proto::discovery::v1 as pb;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use crate::routing::snapshot::{resolve_socket_addr, PlaneRoutes};
use crate::routing::TableState;

/// The plane id static routes are stored under.
pub const STATIC_PLANE: &str = "static";

/// A routes file as written (format: `config/routes.toml`); serialisable so tools (the test kit,
/// the benchmarks) write the same type the proxy reads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Reported as the table version (default: a hash of the file).
    pub version: Option<String>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// Inference API keys (`[auth]`); absent: open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthEntry>,
}

/// The `[auth]` table: whether keys are required, and the keys (hashes only).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthEntry {
    /// `open` (default) or `keys`.
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    /// SHA-256 of the secret, 64 hex digits (`multiverse-proxy hash-key`).
    pub sha256: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm: u32,
    #[serde(default)]
    pub tpm: u32,
    #[serde(default)]
    pub max_concurrent: u32,
    /// RFC 3339; absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

fn default_mode() -> String {
    "open".into()
}

/// The `[auth]` table as a snapshot's; errors name the key.
fn auth_from(auth: AuthEntry) -> Result<pb::InferenceAuth, String> {
    let require_keys = match auth.mode.as_str() {
        "open" => false,
        "keys" => true,
        other => return Err(format!("`auth.mode`: `{other}` is not `open` or `keys`")),
    };
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (i, k) in auth.keys.into_iter().enumerate() {
        let hash = multiverse_common::keys::hash_from_hex(&k.sha256)
            .ok_or_else(|| format!("`auth.keys[{i}].sha256`: expected 64 hex digits"))?;
        let expires_at_unix_ms = match &k.expires_at {
            None => 0,
            Some(t) => {
                let at = humantime::parse_rfc3339(t).map_err(|e| {
                    format!("`auth.keys[{i}].expires_at`: `{t}` is not RFC 3339: {e}")
                })?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                u64::try_from(ms).unwrap_or(u64::MAX).max(1)
            }
        };
        keys.push(pb::ApiKey {
            id: k.id,
            sha256: hash.to_vec(),
            models: k.models,
            rpm: k.rpm,
            tpm: k.tpm,
            max_concurrent: k.max_concurrent,
            expires_at_unix_ms,
        });
    }
    Ok(pb::InferenceAuth { require_keys, keys })
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub lb: Option<String>,
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub connect_timeout_ms: u32,
    #[serde(default)]
    pub first_byte_timeout_ms: u32,
    #[serde(default)]
    pub idle_timeout_ms: u32,
    /// Requests that may wait when every endpoint is at its `max_concurrent` (0: none).
    #[serde(default)]
    pub queue_max: u32,
    /// Longest wait in that queue (0: 30 s).
    #[serde(default)]
    pub queue_timeout_ms: u32,
    /// Idempotent routes: a second endpoint after this many ms without an answer (0: off).
    #[serde(default)]
    pub hedge_after_ms: u32,
    #[serde(default)]
    pub endpoints: Vec<EndpointEntry>,
}

/// One `[[models.endpoints]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub id: String,
    pub address: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "default_health")]
    pub health: String,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub labels: std::collections::HashMap<String, String>,
    /// Requests sent to it at once (0: unlimited).
    #[serde(default)]
    pub max_concurrent: u32,
    /// Requests per second sent to it by this proxy (0: unlimited).
    #[serde(default)]
    pub max_requests_per_sec: u32,
    /// Inputs one request may carry (TEI's `max_client_batch_size`; 0: unknown, the batch
    /// embedding default).
    #[serde(default)]
    pub max_client_batch_size: u32,
    /// Tokens one request may carry (TEI's `max_batch_tokens`; 0: unknown).
    #[serde(default)]
    pub max_batch_tokens: u32,
}

fn default_kind() -> String {
    ModelKind::Chat.to_string()
}
fn default_protocol() -> String {
    Protocol::Http1.to_string()
}
fn default_weight() -> u32 {
    1
}
fn default_health() -> String {
    Health::Healthy.to_string()
}

/// `value` as one of `T`'s names; the error names the key.
fn pick<T: FromStr<Err = UnknownName>>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|e| format!("`{key}`: {e}"))
}

/// Reads a routes file into a snapshot and its version.
pub fn load(path: &Path) -> Result<(String, pb::RouteSnapshot), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read routes file {}: {e}", path.display()))?;
    let mut file: RoutesFile = toml::from_str(&text)
        .map_err(|e| format!("invalid routes file {}: {e}", path.display()))?;
    let in_file = |m: String| format!("invalid routes file {}: {m}", path.display());
    let mut models = Vec::with_capacity(file.models.len());
    for (i, m) in std::mem::take(&mut file.models).into_iter().enumerate() {
        let key = |k: &str| format!("models[{i}].{k}");
        let kind = pb::ModelKind::from(pick::<ModelKind>(&key("kind"), &m.kind).map_err(in_file)?);
        let lb = match m.lb.as_deref() {
            None => pb::LbStrategy::Unspecified,
            Some(v) => pick::<LbStrategy>(&key("lb"), v).map_err(in_file)?.into(),
        };
        let mut endpoints = Vec::with_capacity(m.endpoints.len());
        for (j, e) in m.endpoints.into_iter().enumerate() {
            let key = |k: &str| format!("models[{i}].endpoints[{j}].{k}");
            let protocol = pb::Protocol::from(
                pick::<Protocol>(&key("protocol"), &e.protocol).map_err(in_file)?,
            );
            let health =
                pb::HealthStatus::from(pick::<Health>(&key("health"), &e.health).map_err(in_file)?);
            endpoints.push(pb::Endpoint {
                id: e.id.clone(),
                address: e.address,
                protocol: protocol as i32,
                weight: e.weight,
                health: health as i32,
                labels: e.labels,
                source: Some(pb::EndpointSource {
                    kind: pb::SourceKind::Unspecified as i32,
                    name: e.id,
                }),
                tls: e.tls,
                host: e.host,
                path_prefix: e.path_prefix,
                upstream_api_key: e.api_key,
                max_concurrent: e.max_concurrent,
                max_requests_per_sec: e.max_requests_per_sec,
                max_client_batch_size: e.max_client_batch_size,
                max_batch_tokens: e.max_batch_tokens,
            });
        }
        models.push(pb::Model {
            name: m.name,
            kind: kind as i32,
            policy: Some(pb::RoutingPolicy {
                lb: lb as i32,
                max_retries: m.max_retries,
                connect_timeout_ms: m.connect_timeout_ms,
                first_byte_timeout_ms: m.first_byte_timeout_ms,
                idle_timeout_ms: m.idle_timeout_ms,
                queue_max: m.queue_max,
                queue_timeout_ms: m.queue_timeout_ms,
                hedge_after_ms: m.hedge_after_ms,
            }),
            endpoints,
        });
    }
    let version = file.version.unwrap_or_else(|| {
        // A content hash, so an unchanged file keeps its version.
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        text.hash(&mut h);
        format!("static-{:016x}", h.finish())
    });
    let auth = file.auth.map(auth_from).transpose().map_err(in_file)?;
    Ok((version, pb::RouteSnapshot { models, auth }))
}

/// Loads, validates and applies the file; on error the current table stays.
pub fn reload(path: &Path, state: &TableState) -> Result<String, String> {
    let (version, snapshot) = load(path)?;
    let routes = PlaneRoutes::from_snapshot(&version, Some(&snapshot), &resolve_socket_addr)
        .map_err(|e| format!("invalid routes file {}: {e}", path.display()))?;
    state.apply_plane(STATIC_PLANE, STATIC_PLANE, routes);
    Ok(version)
}

/// Reloads the routes file on every SIGHUP.
pub struct Reloader {
    pub path: PathBuf,
    pub state: Arc<TableState>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match multiverse_common::signals::hangups() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP: routes will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let path = self.path.clone();
                    let state = self.state.clone();
                    let result = tokio::task::spawn_blocking(move || reload(&path, &state))
                        .await
                        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                    match result {
                        Ok(version) => tracing::info!(file = %self.path.display(), %version, "routes reloaded"),
                        Err(reason) => tracing::error!(%reason, "routes reload rejected; the current table keeps serving"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mv-routes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("routes.toml");
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn example_routes_file_loads() {
        let path = multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../config/routes.toml");
        let (_, snap) = load(&path).expect("config/routes.toml loads");
        PlaneRoutes::from_snapshot("x", Some(&snap), &resolve_socket_addr).expect("valid");
        assert!(!snap.models.is_empty());
    }

    #[test]
    fn bad_values_name_the_key_and_file() {
        let p = write(
            "[[models]]\nname = \"m\"\n[[models.endpoints]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\nprotocol = \"http3\"\n",
        );
        let err = load(&p).unwrap_err();
        assert!(
            err.contains("models[0].endpoints[0].protocol") && err.contains("routes.toml"),
            "{err}"
        );
        let p = write("[[models]]\nnam = \"m\"\n");
        assert!(load(&p).unwrap_err().contains("nam"));
    }
}
