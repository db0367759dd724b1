//! Reads a ready TEI instance's batch limits (`max_client_batch_size`, `max_batch_tokens`) from
//! its HTTP `/info` or gRPC `tei.v1.Info/Info`, once each time it becomes ready, and republishes
//! the routes with them (Endpoint fields 14 and 15, which the proxies' batch embedding sizes its
//! pieces by). A failed read keeps what was known and is logged; routes then fall back to the
//! instance's spec.

use std::sync::Arc;
use std::time::Duration;

use multiverse_proto::tei::v1 as tei;

use super::{BatchLimits, Shared};
use crate::changes::Changes;
use crate::store::Protocol;

/// Where and how to ask one instance.
#[derive(Clone)]
pub struct InfoReader {
    pub http: reqwest::Client,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

#[derive(serde::Deserialize)]
struct Info {
    #[serde(default)]
    max_client_batch_size: u64,
    #[serde(default)]
    max_batch_tokens: u64,
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl InfoReader {
    /// The instance's limits as it reports them.
    pub async fn read(&self) -> Result<BatchLimits, String> {
        match self.protocol {
            Protocol::Http => {
                let url = format!("http://{}:{}/info", self.host, self.port);
                let resp = self
                    .http
                    .get(&url)
                    .timeout(self.timeout)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", resp.status().as_u16()));
                }
                let info: Info = resp
                    .json()
                    .await
                    .map_err(|e| format!("GET {url}: not TEI's /info: {e}"))?;
                Ok(BatchLimits {
                    max_client_batch_size: clamp(info.max_client_batch_size),
                    max_batch_tokens: clamp(info.max_batch_tokens),
                })
            }
            Protocol::Grpc => {
                let url = format!("http://{}:{}", self.host, self.port);
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| format!("{url}: {e}"))?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout)
                    .connect()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let info = tei::info_client::InfoClient::new(channel)
                    .info(tei::InfoRequest {})
                    .await
                    .map_err(|e| format!("{url} tei.v1.Info/Info: {}", e.message()))?
                    .into_inner();
                Ok(BatchLimits {
                    max_client_batch_size: info.max_client_batch_size,
                    max_batch_tokens: info.max_batch_tokens,
                })
            }
        }
    }

    /// Reads in the background; a change of what is known republishes the routes.
    pub fn spawn(&self, name: &str, shared: Arc<Shared>, changes: Changes) {
        let (reader, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            match reader.read().await {
                Ok(limits) => {
                    if shared.set_batch_limits(limits) {
                        tracing::debug!(instance = %name, ?limits, "TEI batch limits read");
                        changes.signal();
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "cannot read TEI's /info batch limits")
                }
            }
        });
    }
}
