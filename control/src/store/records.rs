//! The records the control plane persists, as they appear in `state.toml`: registered backends,
//! TEI instances (with the spec they were created from) and the file's format. Plain data with
//! serde; the rules about them (validation, routes, command lines) live with their owners
//! (`backends`, `instances`), which add methods to these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current state file format.
pub const FORMAT_VERSION: u32 = 1;

/// Everything persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub format: u32,
    /// Route snapshot versions up to this one may have been sent to proxies: the next start
    /// publishes above it, so versions only grow across restarts.
    #[serde(default)]
    pub version_floor: u64,
    #[serde(default)]
    pub backends: Vec<BackendRecord>,
    #[serde(default)]
    pub instances: Vec<InstanceRecord>,
    /// Inference API keys (hashes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyRecord>,
    /// Models' routing policies set through the operator API (`/admin/models/{name}/policy`),
    /// by model name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, PolicySpec>,
}

/// How proxies send a model's requests, as configured (`[models.<name>]`, a backend's or an
/// instance's `policy`) and stored (`PUT /admin/models/{name}/policy`). Every field is
/// optional: an unset one falls through to the next layer (see `crate::models`), and at the
/// end to the proxy's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `least_request` (P2C, the proxy's default), `round_robin`, `weighted`,
    /// `prefix_affinity` or `peak_ewma` (see [`multiverse_common::LbStrategy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// Retries on other endpoints before the first response byte (proxy default: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u32>,
    /// From sending the request to the first response byte; exceeded: 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<u32>,
    /// Longest gap between two reads of a streaming response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u32>,
    /// Requests that find every endpoint at its `max_concurrent` wait in a FIFO queue of at
    /// most this many (default 0: no queue, 429 at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max: Option<u32>,
    /// Longest wait in that queue (default: the proxy's, 30 s); then 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u32>,
    /// Idempotent routes only: a second endpoint gets the request when the first has not
    /// answered within this many milliseconds (0 or unset: no hedging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_after_ms: Option<u32>,
}

/// An inference API key as stored (`[[keys]]`): its secret's SHA-256, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Stable id (`key-...`), assigned at creation, kept across rotations.
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, 64 hex digits.
    pub sha256: String,
    /// Models it may use; empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    /// When the secret was last issued (creation or rotation).
    pub rotated_at: String,
}

/// A backend as stored (the state file's `[[backends]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRecord {
    /// Stable id, assigned at registration.
    pub id: String,
    pub name: String,
    pub url: String,
    pub models: Vec<String>,
    pub kind: String,
    pub weight: u32,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Secret: kept in the 0600 state file, never returned by the API or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The address proxies connect to (and health checks go to) when it was pinned at
    /// registration (public-only mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_address: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Softly deregistered by health checking; restorable.
    #[serde(default)]
    pub deregistered: bool,
    /// The routing policy this backend asks for its models (a model's `[models.<name>]` or
    /// API policy wins field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// Requests each proxy sends it at once; None: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Requests per second to it across all proxies; None: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_sec: Option<u32>,
    /// Custom health checks (startup at registration, liveness and readiness each round); none:
    /// `GET /v1/models` is the readiness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
}

impl BackendRecord {
    /// A complete record for tests.
    #[cfg(test)]
    pub fn example(name: &str) -> Self {
        BackendRecord {
            id: format!("bk-{name}"),
            name: name.into(),
            url: "http://127.0.0.1:8000".into(),
            models: vec!["demo".into()],
            kind: "chat".into(),
            weight: 1,
            owner: "ops".into(),
            tags: BTreeMap::from([("team".into(), "a".into())]),
            api_key: Some("sk-secret".into()),
            pinned_address: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            deregistered: false,
            policy: None,
            max_concurrent: None,
            max_requests_per_sec: None,
            probes: None,
        }
    }
}

/// Whether an instance should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// An instance as stored in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    /// The port in use (assigned once, kept across restarts).
    pub port: u16,
    pub prometheus_port: u16,
    pub desired: Desired,
    pub created_at: String,
    /// How `max_batch_tokens = "auto"` was sized when the instance was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_sizing: Option<BatchSizing>,
}

/// TEI's `--max-batch-tokens` as a spec gives it: a number, or `"auto"` (sized from the free
/// VRAM of the instance's GPU at create time, `gpu::batch_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxBatchTokens {
    Auto,
    Tokens(u32),
}

impl MaxBatchTokens {
    /// The number, unless `"auto"`.
    pub fn tokens(self) -> Option<u32> {
        match self {
            MaxBatchTokens::Auto => None,
            MaxBatchTokens::Tokens(n) => Some(n),
        }
    }
}

impl Serialize for MaxBatchTokens {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxBatchTokens::Auto => s.serialize_str("auto"),
            MaxBatchTokens::Tokens(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for MaxBatchTokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxBatchTokens;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of tokens or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(MaxBatchTokens::Tokens)
                    .map_err(|_| E::custom(format!("{v} tokens is more than {}", u32::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a number of tokens")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "auto" {
                    Ok(MaxBatchTokens::Auto)
                } else {
                    Err(E::custom(format!(
                        "`{v}`: expected a number of tokens or \"auto\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// What `max_batch_tokens = "auto"` became, and from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSizing {
    /// Passed to TEI as `--max-batch-tokens`.
    pub tokens: u32,
    /// The GPU it was sized for (none: no known GPU, TEI's default used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_id: Option<u32>,
    /// That GPU's free VRAM after what is placed on it, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_vram_mb: Option<u64>,
    /// The instance's own `vram_mb` estimate, kept out of the batch budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_mb: Option<u64>,
    /// How the number was reached, in words.
    pub rule: String,
}

/// Which TEI build serves an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TEI's HTTP API (proxied on TEI HTTP routes and /v1/embeddings).
    #[default]
    Http,
    /// TEI's gRPC API (tei.v1, proxied as gRPC).
    Grpc,
}

/// An instance as requested (`POST /instances`), templated (`[templates.<name>]`) and stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model_id: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Default: assigned from `[instances] port_range`. Wider than a port so that an
    /// out-of-range value gets INVALID_PORT rather than a parse error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default: chosen by placement (the GPU with the most free VRAM after what is placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_id: Option<u32>,
    /// The VRAM the instance is expected to take (its model, batch buffers), in MiB: placement
    /// reserves it on the GPU until the process uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<u64>,
    /// The model name routes use. Default: `model_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<String>,
    /// embedding (default), sparse_embedding, rerank, classify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A number, or `"auto"`: sized from the GPU's free VRAM at create time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<MaxBatchTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_client_batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_truncate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// More TEI flags, passed as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// The template this spec was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Resource limits (`[limits]`); a template's apply when the instance gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Custom health checks (HTTP instances); a template's apply when the instance gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    /// The routing policy this instance asks for its model (a model's `[models.<name>]` or API
    /// policy wins field by field); a template's applies when the instance gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

/// Custom probes of an instance; an absent one is the default (`GET /health`, or the gRPC
/// health check; no readiness probe).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    /// Until ready (within `startup_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeSpec>,
    /// Once ready, every `liveness_interval_ms`: `liveness_failures` in a row restart it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    /// Once ready, after each passing liveness probe: failing withdraws the route (status
    /// `unhealthy`) without restarting; passing again restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
}

/// One HTTP check: `method path` (with `headers` and `body`) must answer `expected_status`
/// (default: any 2xx) within `timeout_ms` (default `[instances] probe_timeout_ms`), and, with
/// `json_pointer`, a JSON body with a value there (equal to `json_equals` when given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub path: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// An RFC 6901 pointer into the JSON body, e.g. `/model_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_equals: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// An instance's resource limits, checked every `[instances] limits_interval_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The resident memory (VmRSS) of the instance's process group, summed, in MiB: exceeded →
    /// a `limit_exceeded` event and a restart (with backoff, counted as a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Its processes' VRAM (NVML per-process), in MiB: exceeded → a `limit_exceeded` event and
    /// a warning (once per process), or a restart with `enforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vram_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce: bool,
    /// CPU time, in percent of one CPU (200: two CPUs): the instance's own cgroup's `cpu.max`,
    /// where cgroup v2 is writable (`instances::cgroup`); otherwise not enforced, with a
    /// warning at create time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<u32>,
    /// Requests per second across the whole fleet of proxies: enforced by the proxies, each
    /// with a share of it pushed by the control plane (`discovery::shares`); beyond it a
    /// proxy sends the model's requests to its other endpoints, or answers 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_sec: Option<u32>,
}

/// A template: any spec fields but the name (`[templates.<name>]` in the config).
pub type Template = InstanceSpec;
