//! Is a TEI instance serving? `GET /health` for HTTP builds, the standard `grpc.health.v1`
//! check for gRPC builds; each within a timeout. Or an instance's own HTTP check
//! ([`probe_custom`], its `probes`).

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::spec::Protocol;
use crate::health::http_probe;
use crate::store::ProbeSpec;

/// `spec` against `host:port`; `Err` says why it failed.
pub async fn probe_custom(
    http: &reqwest::Client,
    host: &str,
    port: u16,
    spec: &ProbeSpec,
    default_timeout: Duration,
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{}", spec.path);
    http_probe::check(http, &url, spec, default_timeout, None)
        .await
        .map(|_| ())
        .map_err(|f| f.reason)
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
