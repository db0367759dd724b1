//! One health check of a backend: `GET <base>/v1/models`, with its upstream key, within a
//! timeout. Also discovers the models a backend serves when a registration names none. Or one
//! of its custom probes ([`custom`]), at the base URL's path prefix joined with the probe's
//! path.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::parse_url;
use crate::health::http_probe;
pub use crate::health::CheckResult;
use crate::store::ProbeSpec;

/// The URL a probe `path` of a backend at `base` goes to: the base's path prefix (a trailing
/// `/v1` dropped, as for routes) joined with `path`.
pub fn probe_url(base: &str, path: &str) -> Result<String, String> {
    let t = parse_url(base)?;
    let scheme = if t.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}{}{path}", t.host, t.path_prefix))
}

/// Runs custom probe `spec` of the backend at `base` (with its upstream key unless the spec
/// sets `authorization`).
pub async fn custom(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    spec: &ProbeSpec,
    timeout: Duration,
) -> CheckResult {
    let started = Instant::now();
    let at = multiverse_common::time::now_rfc3339();
    let outcome = match probe_url(base, &spec.path) {
        Ok(url) => http_probe::check(client, &url, spec, timeout, api_key).await,
        Err(reason) => Err(http_probe::Failed {
            status: None,
            reason,
        }),
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(status) => CheckResult {
            at,
            ok: true,
            latency_ms,
            status: Some(status),
            reason: None,
        },
        Err(f) => CheckResult {
            at,
            ok: false,
            latency_ms,
            status: f.status,
            reason: Some(f.reason),
        },
    }
}

/// The models URL of a backend base URL.
pub fn models_url(base: &str) -> Result<String, String> {
    let t = parse_url(base)?;
    let scheme = if t.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}{}/v1/models", t.host, t.path_prefix))
}

/// Checks a backend; on success also returns the model ids it lists.
pub async fn check(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> (CheckResult, Option<Vec<String>>) {
    let started = Instant::now();
    let at = multiverse_common::time::now_rfc3339();
    let done = |status: Option<u16>, reason: Option<String>| CheckResult {
        at: at.clone(),
        ok: reason.is_none(),
        latency_ms: started.elapsed().as_millis() as u64,
        status,
        reason,
    };
    let url = match models_url(base) {
        Ok(u) => u,
        Err(e) => return (done(None, Some(e)), None),
    };
    let mut req = client.get(&url).timeout(timeout);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return (
                done(
                    None,
                    Some(format!("timed out after {} ms", timeout.as_millis())),
                ),
                None,
            )
        }
        Err(e) => {
            return (
                done(None, Some(format!("connection failed: {}", root_cause(&e)))),
                None,
            )
        }
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        return (done(Some(status), Some(format!("status {status}"))), None);
    }
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return (
                done(
                    Some(status),
                    Some(format!("timed out after {} ms", timeout.as_millis())),
                ),
                None,
            )
        }
        Err(e) => {
            return (
                done(Some(status), Some(format!("reading the body failed: {e}"))),
                None,
            )
        }
    };
    match parse_models(&body) {
        Ok(models) => (done(Some(status), None), Some(models)),
        Err(e) => (done(Some(status), Some(format!("invalid JSON: {e}"))), None),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The ids of an OpenAI `/v1/models` list.
pub fn parse_models(body: &[u8]) -> Result<Vec<String>, String> {
    let list: ModelList = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_url_follows_the_base() {
        assert_eq!(
            models_url("http://127.0.0.1:8000").as_deref(),
            Ok("http://127.0.0.1:8000/v1/models")
        );
        assert_eq!(
            models_url("https://h.example/openai/v1/").as_deref(),
            Ok("https://h.example/openai/v1/models")
        );
    }

    #[test]
    fn probe_urls_keep_the_base_prefix() {
        assert_eq!(
            probe_url("http://127.0.0.1:8000/v1", "/health").as_deref(),
            Ok("http://127.0.0.1:8000/health")
        );
        assert_eq!(
            probe_url("https://h.example/openai/v1/", "/v1/models").as_deref(),
            Ok("https://h.example/openai/v1/models")
        );
    }

    #[test]
    fn parses_openai_model_lists() {
        let body = br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#;
        assert_eq!(parse_models(body), Ok(vec!["a".into(), "b".into()]));
        assert!(parse_models(b"[1]").is_err());
        assert!(parse_models(b"not json").is_err());
    }
}
