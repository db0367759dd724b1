//! What an instance is: its spec (as the API, templates and the state file give it), the
//! checks a spec passes before anything is spawned, and the TEI command line it becomes.

use crate::health::http_probe;
use multiverse_common::ModelKind;

pub use crate::store::{InstanceSpec, MaxBatchTokens, Protocol, Template};

/// Why a spec is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("`{0}`: names are 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("`model_id` must be a hub id or a path")]
    InvalidModelId,
    #[error("port {0} is outside 1024-65535")]
    InvalidPort(u32),
    /// Any other field.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> SpecError {
    SpecError::Invalid(message.into())
}

/// Instance names: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

const POOLINGS: [&str; 4] = ["cls", "mean", "splade", "last-token"];
const DTYPES: [&str; 3] = ["float16", "float32", "bfloat16"];
/// The highest `limits.max_requests_per_sec` accepted (a typo's guard, not a capacity claim).
pub const MAX_REQUESTS_PER_SEC: u32 = 1_000_000;

impl InstanceSpec {
    /// Fills fields the spec leaves empty from a template.
    pub fn with_template(mut self, t: &Template) -> Self {
        macro_rules! inherit {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = t.$f.clone(); } )* };
        }
        inherit!(
            port,
            gpu_id,
            vram_mb,
            served_model_name,
            kind,
            max_batch_tokens,
            max_concurrent_requests,
            max_client_batch_size,
            pooling,
            dtype,
            auto_truncate,
            revision,
            limits,
            probes,
            policy
        );
        if self.model_id.is_empty() {
            self.model_id = t.model_id.clone();
        }
        if self.extra_args.is_empty() {
            self.extra_args = t.extra_args.clone();
        }
        if self.protocol == Protocol::default() {
            self.protocol = t.protocol;
        }
        for (k, v) in &t.tags {
            self.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self
    }

    /// The checks that need nothing but the spec (ports and GPUs are checked by the manager).
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.name) {
            return Err(SpecError::InvalidName(self.name.clone()));
        }
        if self.model_id.trim().is_empty() || self.model_id.contains("..") {
            return Err(SpecError::InvalidModelId);
        }
        if let Some(p) = self.port {
            if !(1024..=65535).contains(&p) {
                return Err(SpecError::InvalidPort(p));
            }
        }
        if let Some(n) = &self.served_model_name {
            if n.trim().is_empty() || n.len() > 256 {
                return Err(invalid("`served_model_name` must be 1-256 characters"));
            }
        }
        let one_of = |field: &str, v: &Option<String>, allowed: &[&str]| match v {
            Some(v) if !allowed.contains(&v.as_str()) => Err(invalid(format!(
                "`{field}`: `{v}` is not one of {}",
                allowed.join(", ")
            ))),
            _ => Ok(()),
        };
        if let Some(p) = &self.policy {
            crate::models::policy::validate(p)
                .map_err(|e| invalid(format!("`policy.{}`: {}", e.field, e.message)))?;
        }
        if let Some(p) = &self.probes {
            if self.protocol != Protocol::Http {
                return Err(invalid("`probes` are HTTP checks: only for protocol http"));
            }
            for (kind, spec) in [
                ("startup", &p.startup),
                ("liveness", &p.liveness),
                ("readiness", &p.readiness),
            ] {
                let Some(s) = spec else { continue };
                http_probe::validate(kind, s).map_err(invalid)?;
            }
        }
        if let Some(l) = &self.limits {
            for (field, v) in [
                ("limits.max_memory_mb", l.max_memory_mb),
                ("limits.max_vram_mb", l.max_vram_mb),
            ] {
                if v == Some(0) {
                    return Err(invalid(format!("`{field}` must be greater than 0")));
                }
            }
            if l.max_cpu_percent.is_some_and(|p| p == 0 || p > 100_000) {
                return Err(invalid(
                    "`limits.max_cpu_percent` must be 1-100000 (percent of one CPU)",
                ));
            }
            if l.max_requests_per_sec
                .is_some_and(|r| r == 0 || r > MAX_REQUESTS_PER_SEC)
            {
                return Err(invalid(format!(
                    "`limits.max_requests_per_sec` must be 1-{MAX_REQUESTS_PER_SEC}"
                )));
            }
        }
        one_of("pooling", &self.pooling, &POOLINGS)?;
        one_of("dtype", &self.dtype, &DTYPES)?;
        one_of("kind", &self.kind, &ModelKind::TEI.map(ModelKind::as_str))?;
        for (field, v) in [
            (
                "max_batch_tokens",
                self.max_batch_tokens.and_then(MaxBatchTokens::tokens),
            ),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_client_batch_size", self.max_client_batch_size),
        ] {
            if v == Some(0) {
                return Err(invalid(format!("`{field}` must be > 0")));
            }
        }
        for a in &self.extra_args {
            if a.contains('\0') || a.contains('\n') {
                return Err(invalid("`extra_args` must be printable"));
            }
        }
        for k in self.tags.keys() {
            if k.is_empty() || k.len() > 63 || k.contains(':') || k.contains(',') {
                return Err(invalid(format!(
                    "tag key `{k}` must be 1-63 characters without ':' or ','"
                )));
            }
        }
        Ok(())
    }

    /// The requested port, once validated.
    pub fn requested_port(&self) -> Option<u16> {
        self.port.and_then(|p| u16::try_from(p).ok())
    }

    /// The model name clients use.
    pub fn model_name(&self) -> &str {
        self.served_model_name.as_deref().unwrap_or(&self.model_id)
    }

    /// What the model does (a TEI kind; default: embedding).
    pub fn model_kind(&self) -> ModelKind {
        self.kind
            .as_deref()
            .and_then(|k| k.parse::<ModelKind>().ok())
            .filter(|k| k.is_tei())
            .unwrap_or(ModelKind::Embedding)
    }

    /// Whether `tag` (`key:value`) matches.
    pub fn has_tag(&self, tag: &str) -> bool {
        match tag.split_once(':') {
            Some((k, v)) => self.tags.get(k).is_some_and(|x| x == v),
            None => self.tags.contains_key(tag),
        }
    }
}

/// Where and how the process is started.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    /// `CUDA_VISIBLE_DEVICES`, when a GPU is chosen (always with `CUDA_DEVICE_ORDER=PCI_BUS_ID`,
    /// so that CUDA numbers devices as NVML does).
    pub cuda_visible_devices: Option<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Run as this user and group (`[instances] user`/`group`; needs root or CAP_SETUID and
    /// CAP_SETGID).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The cgroup v2 root and the limits for the instance's own cgroup (`instances::cgroup`).
    pub cgroup: Option<(std::path::PathBuf, crate::store::Limits)>,
}

/// The TEI command line for a spec on `port` (with its own prometheus port and socket).
pub fn command_line(
    spec: &InstanceSpec,
    program: &str,
    protocol_args: &[String],
    hostname: &str,
    port: u16,
    prometheus_port: u16,
    uds_path: &str,
) -> Launch {
    let mut args: Vec<String> = vec![
        "--model-id".into(),
        spec.model_id.clone(),
        "--hostname".into(),
        hostname.into(),
        "--port".into(),
        port.to_string(),
        "--uds-path".into(),
        uds_path.into(),
        "--prometheus-port".into(),
        prometheus_port.to_string(),
    ];
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v);
        }
    };
    opt("--revision", spec.revision.clone());
    opt("--served-model-name", spec.served_model_name.clone());
    // "auto" is resolved at create time (the supervisor launches with the number); an
    // unresolved one leaves TEI its default.
    opt(
        "--max-batch-tokens",
        spec.max_batch_tokens
            .and_then(MaxBatchTokens::tokens)
            .map(|v| v.to_string()),
    );
    opt(
        "--max-concurrent-requests",
        spec.max_concurrent_requests.map(|v| v.to_string()),
    );
    opt(
        "--max-client-batch-size",
        spec.max_client_batch_size.map(|v| v.to_string()),
    );
    opt("--pooling", spec.pooling.clone());
    opt("--dtype", spec.dtype.clone());
    if spec.auto_truncate == Some(true) {
        args.push("--auto-truncate".into());
    }
    args.extend(protocol_args.iter().cloned());
    args.extend(spec.extra_args.iter().cloned());
    Launch {
        program: program.to_string(),
        args,
        cuda_visible_devices: spec.gpu_id.map(|g| g.to_string()),
        env: Vec::new(),
        uid: None,
        gid: None,
        cgroup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(name: &str) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            model_id: "BAAI/bge-small-en-v1.5".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_fields_are_validated_with_codes() {
        assert!(valid_name("bge-1") && valid_name("0a_b") && !valid_name("-a"));
        assert!(!valid_name("A") && !valid_name("a/b") && !valid_name(&"a".repeat(64)));
        assert_eq!(
            spec("Bad").validate(),
            Err(SpecError::InvalidName("Bad".into()))
        );
        let mut s = spec("ok");
        s.port = Some(80);
        assert_eq!(s.validate(), Err(SpecError::InvalidPort(80)));
        s.port = Some(65536);
        assert_eq!(s.validate(), Err(SpecError::InvalidPort(65536)));
        let mut s = spec("ok");
        s.model_id = "../etc".into();
        assert_eq!(s.validate(), Err(SpecError::InvalidModelId));
        let mut s = spec("ok");
        s.pooling = Some("max".into());
        assert!(matches!(s.validate(), Err(SpecError::Invalid(m)) if m.contains("pooling")));
        spec("ok").validate().expect("valid");
    }

    #[test]
    fn templates_fill_only_missing_fields() {
        let t = InstanceSpec {
            model_id: "m/t".into(),
            pooling: Some("mean".into()),
            max_batch_tokens: Some(MaxBatchTokens::Tokens(1024)),
            tags: BTreeMap::from([("team".into(), "a".into()), ("env".into(), "t".into())]),
            ..Default::default()
        };
        let mut s = InstanceSpec {
            name: "x".into(),
            max_batch_tokens: Some(MaxBatchTokens::Tokens(2048)),
            ..Default::default()
        };
        s.tags.insert("env".into(), "prod".into());
        let s = s.with_template(&t);
        assert_eq!(s.model_id, "m/t");
        assert_eq!(s.pooling.as_deref(), Some("mean"));
        assert_eq!(s.max_batch_tokens, Some(MaxBatchTokens::Tokens(2048)));
        assert_eq!(s.tags["env"], "prod");
        assert!(s.has_tag("team:a") && !s.has_tag("team:b") && s.has_tag("env"));
    }

    #[test]
    fn command_line_uses_teis_flags() {
        let mut s = spec("x");
        s.gpu_id = Some(1);
        s.pooling = Some("cls".into());
        s.auto_truncate = Some(true);
        let l = command_line(
            &s,
            "tei",
            &["--grpc".into()],
            "127.0.0.1",
            8100,
            9100,
            "/run/x.sock",
        );
        let line = l.args.join(" ");
        assert!(line.starts_with("--model-id BAAI/bge-small-en-v1.5 --hostname 127.0.0.1 --port 8100 --uds-path /run/x.sock --prometheus-port 9100"), "{line}");
        assert!(
            line.contains("--pooling cls")
                && line.contains("--auto-truncate")
                && line.ends_with("--grpc")
        );
        assert_eq!(l.cuda_visible_devices.as_deref(), Some("1"));
    }
}
