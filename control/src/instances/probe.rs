//! Is a TEI instance serving? `GET /health` for HTTP builds, the standard `grpc.health.v1`
//! check for gRPC builds; each within a timeout. Or an instance's own HTTP check
//! ([`probe_custom`], its `probes`).

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::spec::Protocol;
use crate::store::ProbeSpec;

/// `spec` against `host:port`; `Err` says why it failed.
pub async fn probe_custom(
    http: &reqwest::Client,
    host: &str,
    port: u16,
    spec: &ProbeSpec,
    default_timeout: Duration,
) -> Result<(), String> {
    let timeout = spec
        .timeout_ms
        .map_or(default_timeout, Duration::from_millis);
    let what = format!("{} {}", spec.method, spec.path);
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| format!("{what}: bad method"))?;
    let mut req = http
        .request(method, format!("http://{host}:{port}{}", spec.path))
        .timeout(timeout);
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &spec.body {
        if !spec
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.clone());
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("{what} timed out after {timeout:?}")
        } else if e.is_connect() {
            "connection refused".into()
        } else {
            format!("{what} failed: {e}")
        }
    })?;
    let status = resp.status().as_u16();
    let ok = match spec.expected_status {
        Some(want) => status == want,
        None => (200..300).contains(&status),
    };
    if !ok {
        let want = spec
            .expected_status
            .map_or("2xx".to_string(), |s| s.to_string());
        return Err(format!("{what} answered {status}, expected {want}"));
    }
    let Some(pointer) = &spec.json_pointer else {
        return Ok(());
    };
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{what}: the body is not JSON ({e})"))?;
    match (body.pointer(pointer), &spec.json_equals) {
        (None | Some(serde_json::Value::Null), _) => {
            Err(format!("{what}: no {pointer} in the body"))
        }
        (Some(v), Some(want)) => {
            let got = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            if &got == want {
                Ok(())
            } else {
                Err(format!("{what}: {pointer} is {got:?}, expected {want:?}"))
            }
        }
        (Some(_), None) => Ok(()),
    }
}

/// Probes `host:port`; `Err` says why it is not serving.
pub async fn probe(
    http: &reqwest::Client,
    protocol: Protocol,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    match protocol {
        Protocol::Http => {
            let url = format!("http://{host}:{port}/health");
            match http.get(&url).timeout(timeout).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("/health answered {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!("/health timed out after {timeout:?}")),
                Err(e) if e.is_connect() => Err("connection refused".into()),
                Err(e) => Err(format!("/health failed: {e}")),
            }
        }
        Protocol::Grpc => {
            let check = async {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
                        .map_err(|e| e.to_string())?
                        .connect_timeout(timeout)
                        .connect()
                        .await
                        .map_err(|_| "connection refused".to_string())?;
                let resp = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|s| format!("health check failed: {}", s.code()))?;
                match resp.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    other => Err(format!("health status {}", other.as_str_name())),
                }
            };
            tokio::time::timeout(timeout, check)
                .await
                .unwrap_or_else(|_| Err(format!("health check timed out after {timeout:?}")))
        }
    }
}
