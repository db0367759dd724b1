//! External OpenAI-compatible backends (vLLM, llama.cpp, Ollama, ...): how they are declared
//! and validated ([`BackendSpec`]), kept ([`registry`]), which addresses they may use
//! ([`ssrf`], names looked up through [`resolve`]), how they are reached ([`clients`]: at the
//! pinned address when there is one), checked once ([`probe`]) and checked again and again
//! ([`checker`]).
//!
//! Probes of a process the plane does not own (`probes` on a backend): `startup` must pass at
//! registration and update (or the backend is refused); each round `liveness` (if given) runs
//! first and then `readiness` (default `GET /v1/models`). A failing readiness (or liveness)
//! probe counts towards `[health] unhealthy_threshold`: the route is withdrawn until
//! `healthy_threshold` passes bring it back. There is nothing to restart, so liveness is what
//! decides the soft deregistration instead: with a liveness probe only its failures count
//! towards `deregister_after_failures` (restorable through `/restore`).

pub mod admission;
pub mod checker;
pub mod clients;
pub mod probe;
pub mod query;
pub mod registry;
pub mod resolve;
pub mod ssrf;

use multiverse_common::ModelKind;
use multiverse_proto::discovery::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::models::policy;
use crate::store::{BackendRecord, PolicySpec};

/// A backend as declared in config (and later registered through the API).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Unique name; also the endpoint id proxies report in `x-multiverse-endpoint`.
    pub name: String,
    /// Base URL, `http://` or `https://`. A trailing `/v1` is accepted (as for OpenAI clients'
    /// `base_url`) and dropped, since clients' paths already start with `/v1`.
    pub url: String,
    /// Models served, by the name clients send.
    pub models: Vec<String>,
    /// Relative weight for weighted balancing.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Bearer token the proxies send to this backend. Never returned or logged.
    #[serde(default, skip_serializing)]
    pub api_key: Option<String>,
    /// What the models do: chat (default), completion, embedding, rerank, classify.
    #[serde(default)]
    pub kind: Option<String>,
    /// The routing policy this backend asks for its models; a model's `[models.<name>]` or API
    /// policy wins field by field (see `crate::models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// Requests each proxy sends this backend at once (beyond: the model's queue, see
    /// `queue_max`); unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Requests per second to it across all proxies, each with an equal share (see
    /// `discovery::shares`); unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_sec: Option<u32>,
    /// Custom health checks (see the module's notes).
    #[serde(default)]
    pub probes: Option<crate::store::Probes>,
}

fn default_weight() -> u32 {
    1
}

/// Why a backend spec is invalid, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("`name`: {0}")]
    Name(String),
    #[error("`url`: {0}")]
    Url(String),
    #[error("`models`: {0}")]
    Models(String),
    #[error("`weight`: {0}")]
    Weight(String),
    #[error("`api_key`: {0}")]
    ApiKey(String),
    #[error("`kind`: {0}")]
    Kind(String),
    #[error("`max_concurrent`: {0}")]
    MaxConcurrent(String),
    #[error("`max_requests_per_sec`: {0}")]
    MaxRequestsPerSec(String),
    /// The message names the policy's field (`lb`, `first_byte_timeout_ms`, ...).
    #[error("`policy`: {0}")]
    Policy(String),
    /// The message names the field (`probes.readiness.path`, ...).
    #[error("{0}")]
    Probes(String),
}

impl SpecError {
    /// The offending field's name (as the config and the API spell it).
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Name(_) => "name",
            SpecError::Url(_) => "url",
            SpecError::Models(_) => "models",
            SpecError::Weight(_) => "weight",
            SpecError::ApiKey(_) => "api_key",
            SpecError::Kind(_) => "kind",
            SpecError::MaxConcurrent(_) => "max_concurrent",
            SpecError::MaxRequestsPerSec(_) => "max_requests_per_sec",
            SpecError::Policy(_) => "policy",
            SpecError::Probes(_) => "probes",
        }
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        match self {
            SpecError::Name(m)
            | SpecError::Url(m)
            | SpecError::Models(m)
            | SpecError::Weight(m)
            | SpecError::ApiKey(m)
            | SpecError::Kind(m)
            | SpecError::MaxConcurrent(m)
            | SpecError::MaxRequestsPerSec(m)
            | SpecError::Policy(m)
            | SpecError::Probes(m) => m,
        }
    }
}

/// Where a backend URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// host:port, port defaulted from the scheme.
    pub address: String,
    /// The host alone: a name or an IP literal, without brackets or port.
    pub hostname: String,
    pub port: u16,
    /// Host header value (as written in the URL).
    pub host: String,
    pub path_prefix: String,
}

/// Parses and checks a backend base URL.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}` must use http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}` must not contain credentials"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if port == 0 {
        return Err(format!("`{url}` has port 0"));
    }
    let address = format!("{host}:{port}");
    let hostname = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = uri.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path);
    Ok(Target {
        tls,
        address,
        hostname,
        port,
        host: authority.as_str().to_string(),
        path_prefix: path.to_string(),
    })
}

/// Parses a model kind name (none: chat).
pub fn parse_kind(kind: Option<&str>) -> Result<pb::ModelKind, String> {
    kind.map_or(Ok(ModelKind::Chat), str::parse::<ModelKind>)
        .map(pb::ModelKind::from)
        .map_err(|e| e.to_string())
}

impl BackendSpec {
    /// Checks the spec; the error names the offending field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(SpecError::Name(format!(
                "`{}` must be 1-63 characters of letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        // The name is also an endpoint id and a path segment: `.` and `..` would be paths.
        if self.name.bytes().all(|b| b == b'.') {
            return Err(SpecError::Name(format!(
                "`{}` is path-like: a name needs a letter, a digit, '-' or '_'",
                self.name
            )));
        }
        parse_url(&self.url).map_err(SpecError::Url)?;
        if self.models.is_empty() || self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(SpecError::Models(
                "must list at least one non-empty model name".into(),
            ));
        }
        if self.weight == 0 {
            return Err(SpecError::Weight("must be >= 1".into()));
        }
        if let Some(key) = &self.api_key {
            if key.is_empty() || key.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(SpecError::ApiKey(
                    "must be non-empty printable ASCII".into(),
                ));
            }
        }
        parse_kind(self.kind.as_deref()).map_err(SpecError::Kind)?;
        if self.max_concurrent == Some(0) {
            return Err(SpecError::MaxConcurrent(
                "must be >= 1 (leave it out for no limit)".into(),
            ));
        }
        let max_rps = crate::instances::spec::MAX_REQUESTS_PER_SEC;
        if self
            .max_requests_per_sec
            .is_some_and(|r| r == 0 || r > max_rps)
        {
            return Err(SpecError::MaxRequestsPerSec(format!(
                "must be 1-{max_rps} (leave it out for no limit)"
            )));
        }
        if let Some(p) = &self.policy {
            policy::validate(p).map_err(|e| SpecError::Policy(e.to_string()))?;
        }
        if let Some(p) = &self.probes {
            for (kind, spec) in [
                ("startup", &p.startup),
                ("liveness", &p.liveness),
                ("readiness", &p.readiness),
            ] {
                if let Some(s) = spec {
                    crate::health::http_probe::validate(kind, s).map_err(SpecError::Probes)?;
                }
            }
        }
        Ok(())
    }
}

impl BackendRecord {
    /// The model kind, defaulting to chat.
    pub fn model_kind(&self) -> pb::ModelKind {
        parse_kind(Some(&self.kind)).unwrap_or(pb::ModelKind::Chat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_targets() {
        let t = parse_url("http://127.0.0.1:8000").expect("ok");
        assert_eq!(t.address, "127.0.0.1:8000");
        assert_eq!((t.hostname.as_str(), t.port), ("127.0.0.1", 8000));
        let t = parse_url("http://[::1]:81").expect("ok");
        assert_eq!(
            (t.address.as_str(), t.hostname.as_str()),
            ("[::1]:81", "::1")
        );
        assert_eq!(t.path_prefix, "");
        let t = parse_url("https://api.example.com/openai/v1/").expect("ok");
        assert!(t.tls);
        assert_eq!(t.address, "api.example.com:443");
        assert_eq!(t.host, "api.example.com");
        assert_eq!(t.path_prefix, "/openai");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://user:pw@x").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn specs_are_validated_by_field() {
        let ok = BackendSpec {
            name: "vllm-1".into(),
            url: "http://127.0.0.1:8000".into(),
            models: vec!["demo".into()],
            weight: 1,
            api_key: None,
            kind: None,
            policy: None,
            max_concurrent: None,
            max_requests_per_sec: None,
            probes: None,
        };
        ok.validate().expect("valid");
        let mut bad = ok.clone();
        bad.policy = Some(PolicySpec {
            lb: Some("fastest".into()),
            ..Default::default()
        });
        assert_eq!(bad.validate().map_err(|e| e.field()), Err("policy"));
        let mut bad = ok.clone();
        bad.name = "a/b".into();
        assert!(matches!(bad.validate(), Err(SpecError::Name(_))));
        assert_eq!(bad.validate().unwrap_err().field(), "name");
        for dots in [".", "..", "..."] {
            let mut bad = ok.clone();
            bad.name = dots.into();
            assert!(matches!(bad.validate(), Err(SpecError::Name(_))), "{dots}");
        }
        let mut dotted = ok.clone();
        dotted.name = "vllm.a".into();
        dotted.validate().expect("dots inside a name are fine");
        let mut bad = ok.clone();
        bad.models.clear();
        assert!(matches!(bad.validate(), Err(SpecError::Models(_))));
        let mut bad = ok.clone();
        bad.kind = Some("video".into());
        assert!(matches!(bad.validate(), Err(SpecError::Kind(_))));
        let mut bad = ok;
        bad.probes = Some(crate::store::Probes {
            readiness: Some(crate::store::ProbeSpec {
                path: "ready".into(),
                method: "GET".into(),
                expected_status: None,
                headers: Default::default(),
                body: None,
                timeout_ms: None,
                json_pointer: None,
                json_equals: None,
            }),
            ..Default::default()
        });
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field(), "probes");
        assert!(e.message().contains("probes.readiness.path"), "{e}");
    }
}
