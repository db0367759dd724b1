//! Route propagation: a control plane, N proxies fed by it, and the operator API that changes
//! what they route.
//!
//! - [`control_config`] is the benchmark's `multiverse-control` (started by the test kit's
//!   launcher): an admin key, private backends allowed (everything is on loopback), room for
//!   many backends, the default `[discovery] coalesce_ms`.
//! - [`AdminApi`] registers, updates and deregisters backends (`/admin/backends`).
//! - [`wait_visible`] polls each proxy's `GET /v1/models` (answered from its routing table)
//!   until a model is routable there (listed with a healthy endpoint) or gone, and says when
//!   that happened on each.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use multiverse_control::config::ControlConfig;
use multiverse_testkit::stack::control::backend;
use serde_json::{json, Value};

use super::http::{get, snippet, Http1Pool};

/// The admin key the benchmark's control plane accepts.
pub const ADMIN_KEY: &str = "bench-admin-key-0123456789";

/// The benchmark control plane's config, with `backends` (name, base URL, model) declared.
pub fn control_config(backends: &[(&str, &str, &str)]) -> ControlConfig {
    let mut config = ControlConfig::default();
    config.admin.api_keys = vec![ADMIN_KEY.to_string()];
    config.admin.allow_private_backends = true;
    config.admin.max_backends = 1024;
    config.backends = backends
        .iter()
        .map(|(name, url, model)| backend(name, url, &[model]))
        .collect();
    config
}

/// A backend as the admin API takes it.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Unique name.
    pub name: String,
    /// Base URL.
    pub url: String,
    /// Models it serves.
    pub models: Vec<String>,
    /// Weight.
    pub weight: u32,
    /// Tags.
    pub tags: Value,
}

impl BackendSpec {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "url": self.url,
            "models": self.models,
            "weight": self.weight,
            "tags": self.tags,
        })
    }
}

/// The control plane's operator API, with the admin key.
#[derive(Debug)]
pub struct AdminApi {
    pool: Http1Pool,
}

impl AdminApi {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            pool: Http1Pool::new(addr, 2),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .context("request")?;
        let r = tokio::time::timeout(Duration::from_secs(10), self.pool.send(request))
            .await
            .with_context(|| format!("{method} {path}: no answer within 10 s"))?
            .with_context(|| format!("{method} {path}"))?;
        let value = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
        Ok((r.status(), value))
    }

    /// Registers `spec`; returns its id.
    pub async fn register(&self, spec: &BackendSpec) -> anyhow::Result<String> {
        let (status, body) = self
            .call(Method::POST, "/admin/backends", Some(spec.json()))
            .await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            bail!("POST /admin/backends {}: {status}: {body}", spec.name);
        }
        body["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("POST /admin/backends answered without an id: {body}"))
    }

    /// Replaces backend `id` by `spec`.
    pub async fn update(&self, id: &str, spec: &BackendSpec) -> anyhow::Result<()> {
        let path = format!("/admin/backends/{id}");
        let (status, body) = self.call(Method::PUT, &path, Some(spec.json())).await?;
        if status != StatusCode::OK {
            bail!("PUT {path}: {status}: {body}");
        }
        Ok(())
    }

    /// Deregisters backend `id`.
    pub async fn deregister(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("/admin/backends/{id}");
        let (status, body) = self.call(Method::DELETE, &path, None).await?;
        if status != StatusCode::NO_CONTENT && status != StatusCode::OK {
            bail!("DELETE {path}: {status}: {body}");
        }
        Ok(())
    }
}

/// Whether a `/v1/models` body lists `model` with at least one endpoint taking requests.
pub fn routable(models_body: &[u8], model: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(models_body) else {
        return false;
    };
    v["data"].as_array().is_some_and(|data| {
        data.iter().any(|m| {
            m["id"] == model && m["multiverse"]["healthy_endpoints"].as_u64().unwrap_or(1) > 0
        })
    })
}

/// Polls `GET /v1/models` on each proxy (every `poll`) until `model` is routable there (or,
/// with `present` false, no longer routable); returns when that was seen on each, as the time
/// since `since`. Fails after `timeout`.
pub async fn wait_visible(
    pools: &[Http1Pool],
    model: &str,
    present: bool,
    since: Instant,
    poll: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let waits = pools.iter().map(|pool| async move {
        loop {
            let r = pool.send(get("/v1/models")).await;
            let seen = Instant::now();
            match r {
                Ok(r) if r.status() == StatusCode::OK => {
                    if routable(r.body(), model) == present {
                        return Ok(seen.saturating_duration_since(since));
                    }
                }
                Ok(r) => bail!(
                    "GET http://{}/v1/models: {}: {}",
                    pool.addr(),
                    r.status(),
                    snippet(r.body())
                ),
                Err(e) => return Err(e),
            }
            if since.elapsed() > timeout {
                bail!(
                    "model {model} still {} on {} after {timeout:?}",
                    if present { "not routable" } else { "routable" },
                    pool.addr()
                );
            }
            tokio::time::sleep(poll).await;
        }
    });
    futures::future::try_join_all(waits).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_models() {
        let body = br#"{"object":"list","data":[
            {"id":"a","multiverse":{"healthy_endpoints":1}},
            {"id":"b","multiverse":{"healthy_endpoints":0}}]}"#;
        assert!(routable(body, "a"));
        assert!(!routable(body, "b"));
        assert!(!routable(body, "c"));
        assert!(!routable(b"nope", "a"));
    }
}
