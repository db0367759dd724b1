//! Registering and updating a backend through the operator API: the request is validated, a
//! non-public address is refused unless allowed (the host is resolved once and the address
//! that was checked is pinned), the backend itself is checked (which also discovers its models
//! when none are given) — with its custom `startup` probe when it has one — and only then is it
//! stored in the registry. A connection test does the same and stores nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiverse_common::time::now_rfc3339;
use multiverse_common::ModelKind;
use serde::Deserialize;

use super::clients::Clients;
use super::registry::{new_id, BackendView, Registry, RegistryError};
use super::{parse_url, probe, ssrf, BackendSpec, SpecError};
use crate::health::{CheckResult, HealthSettings};
use crate::store::{BackendRecord, Probes};

/// The body of `POST` and `PUT /admin/backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    pub name: String,
    pub url: String,
    /// Discovered from the backend's `/v1/models` when omitted.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Upstream key. On update: omitted keeps the stored one, "" removes it.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub kind: Option<String>,
    /// The routing policy asked for the backend's models (see `crate::models`).
    #[serde(default)]
    pub policy: Option<crate::store::PolicySpec>,
    /// Requests each proxy sends it at once; omitted: unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Requests per second to it across all proxies; omitted: unlimited.
    #[serde(default)]
    pub max_requests_per_sec: Option<u32>,
    /// Custom health checks: `startup` (at registration and update), `liveness` and
    /// `readiness` (each round). On update: omitted keeps none (like the other fields).
    #[serde(default)]
    pub probes: Option<Probes>,
}

/// What a connection test found (`POST /admin/backends/test`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tested {
    pub ok: bool,
    pub latency_ms: u64,
    /// The HTTP status of the backend's `/v1/models` (or of its startup probe).
    pub status: Option<u16>,
    /// The models it would be registered with (the request's, or those it lists).
    pub models: Vec<String>,
}

/// Why a registration or an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A field of the spec (the URL included) is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Another field of the request (`owner`, `tags`) is invalid.
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The host resolves to a loopback, private, link-local or metadata address.
    #[error("{0}")]
    PrivateAddress(String),
    /// The initial check failed.
    #[error("the initial health check of {url} failed: {reason}")]
    Unavailable { url: String, reason: String },
    /// No HTTP client could be made for the backend.
    #[error("{0}")]
    Client(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What admission needs.
pub struct Admission {
    registry: Arc<Registry>,
    clients: Arc<Clients>,
    settings: HealthSettings,
    allow_private: bool,
}

impl Admission {
    pub fn new(
        registry: Arc<Registry>,
        clients: Arc<Clients>,
        settings: HealthSettings,
        allow_private: bool,
    ) -> Self {
        Self {
            registry,
            clients,
            settings,
            allow_private,
        }
    }

    /// Registers a new backend.
    pub async fn register(&self, req: BackendRequest) -> Result<BackendView, AdmitError> {
        let now = now_rfc3339();
        let (record, check, took) = self.admit(req, None, new_id(), now.clone(), now).await?;
        let view = self.registry.insert(record, check, &self.settings).await?;
        let view = self.count_startup(view, took);
        tracing::info!(backend = %view.name, id = %view.id, models = ?view.models, "backend registered");
        Ok(view)
    }

    /// "Test connection": everything [`Admission::register`] does before it stores (validation,
    /// the SSRF rules, the check that discovers the models), and nothing after: no record, no
    /// snapshot change. Whether the name is free is not checked (registration says so).
    pub async fn test(&self, req: BackendRequest) -> Result<Tested, AdmitError> {
        let now = now_rfc3339();
        let (record, check, _) = self.admit(req, None, new_id(), now.clone(), now).await?;
        Ok(Tested {
            ok: check.ok,
            latency_ms: check.latency_ms,
            status: check.status,
            models: record.models,
        })
    }

    /// Replaces backend `id` (checked again; fields the request leaves out keep nothing but the
    /// upstream key).
    pub async fn update(&self, id: &str, req: BackendRequest) -> Result<BackendView, AdmitError> {
        let old = self
            .registry
            .record(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        let (record, check, took) = self
            .admit(
                req,
                Some(&old),
                id.to_string(),
                old.created_at.clone(),
                now_rfc3339(),
            )
            .await?;
        let view = self.registry.update(record, check, &self.settings).await?;
        let view = self.count_startup(view, took);
        tracing::info!(backend = %view.name, id = %view.id, "backend updated");
        Ok(view)
    }

    /// Counts the check that admitted a backend as its `startup` probe; the view as it is now.
    fn count_startup(&self, view: BackendView, took: Duration) -> BackendView {
        self.registry.record_probe(&view.id, "startup", took, None);
        self.registry.get(&view.id).unwrap_or(view)
    }

    /// Validates a request, checks the address and the backend itself, and builds the record.
    async fn admit(
        &self,
        req: BackendRequest,
        old: Option<&BackendRecord>,
        id: String,
        created_at: String,
        updated_at: String,
    ) -> Result<(BackendRecord, CheckResult, Duration), AdmitError> {
        let api_key = match (&req.api_key, old) {
            (Some(k), _) if k.is_empty() => None,
            (Some(k), _) => Some(k.clone()),
            (None, Some(old)) => old.api_key.clone(),
            (None, None) => None,
        };
        let mut spec = BackendSpec {
            name: req.name,
            url: req.url,
            // Validated below once known.
            models: req.models.clone().unwrap_or_else(|| vec!["-".into()]),
            weight: req.weight.unwrap_or(1),
            api_key,
            kind: req.kind,
            policy: req.policy,
            max_concurrent: req.max_concurrent,
            max_requests_per_sec: req.max_requests_per_sec,
            probes: req.probes,
        };
        spec.validate()?;
        validate_tags(&req.tags)?;
        if req.owner.len() > 256 {
            return Err(AdmitError::Invalid {
                field: "owner",
                message: "must be at most 256 characters".into(),
            });
        }
        let target = parse_url(&spec.url).map_err(SpecError::Url)?;

        // Refuse non-public addresses unless allowed; pin the address that was checked.
        let mut pinned_address = None;
        if !self.allow_private {
            let addr = ssrf::check_public(&target.hostname, target.port, self.clients.resolver())
                .await
                .map_err(AdmitError::PrivateAddress)?;
            pinned_address = Some(addr.to_string());
        }
        let http = self
            .clients
            .for_backend(&spec.url, pinned_address.as_deref())
            .map_err(AdmitError::Client)?;

        // The startup probe replaces `GET /v1/models` as the admitting check, which still runs
        // first when the models are to be discovered.
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let key = spec.api_key.as_deref();
        let startup = spec.probes.as_ref().and_then(|p| p.startup.as_ref());
        let started = Instant::now();
        let mut discovered = None;
        let check = match startup {
            None => {
                let (c, d) = probe::check(&http, &spec.url, key, timeout).await;
                discovered = d;
                c
            }
            Some(startup) => {
                let listed = match req.models {
                    Some(_) => None,
                    None => {
                        let (c, d) = probe::check(&http, &spec.url, key, timeout).await;
                        discovered = d;
                        Some(c)
                    }
                };
                match listed {
                    Some(c) if !c.ok => c,
                    _ => {
                        let mut c = probe::custom(&http, &spec.url, key, startup, timeout).await;
                        c.reason = c.reason.map(|r| format!("startup probe: {r}"));
                        c
                    }
                }
            }
        };
        let took = started.elapsed();
        if !check.ok {
            return Err(AdmitError::Unavailable {
                url: spec.url,
                reason: check.reason.unwrap_or_else(|| "unknown error".into()),
            });
        }
        spec.models = match req.models {
            Some(m) => m,
            None => discovered.unwrap_or_default(),
        };
        if spec.models.is_empty() {
            return Err(SpecError::Models(
                "the backend lists no models; name them in `models`".into(),
            )
            .into());
        }
        spec.validate()?;
        let record = BackendRecord {
            id,
            name: spec.name,
            url: spec.url,
            models: spec.models,
            kind: spec.kind.unwrap_or_else(|| ModelKind::Chat.to_string()),
            weight: spec.weight,
            owner: req.owner,
            tags: req.tags,
            api_key: spec.api_key,
            pinned_address,
            created_at,
            updated_at,
            deregistered: false,
            policy: spec.policy,
            max_concurrent: spec.max_concurrent,
            max_requests_per_sec: spec.max_requests_per_sec,
            probes: spec.probes,
        };
        Ok((record, check, took))
    }
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), AdmitError> {
    let invalid = |message| AdmitError::Invalid {
        field: "tags",
        message,
    };
    for (k, v) in tags {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            return Err(invalid(format!(
                "key `{k}` must be 1-63 letters, digits, '-', '_', '.' or '/'"
            )));
        }
        if v.len() > 256 {
            return Err(invalid(format!("value of `{k}` is over 256 characters")));
        }
    }
    Ok(())
}
