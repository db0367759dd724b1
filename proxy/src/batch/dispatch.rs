//! Sends one piece of a batch to the model's endpoints: TEI's HTTP `POST /embed`, on an endpoint
//! chosen by the model's load-balancing policy (the same picker as the gateway, counted in
//! flight against `max_concurrent`), retried on another endpoint after a transport error, a 5xx
//! or a 429 (up to the policy's `max_retries`). A piece TEI refuses (another 4xx, e.g. one input
//! too long) is sent again row by row, so only the rows at fault carry the error.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use multiverse_common::{Millis, ProtoClass};
use serde::Serialize;

use crate::batch::ipc::RowResult;
use crate::routing::outlier::OutlierConfig;
use crate::routing::pick::{any_eligible, pick_reserved, Tried, Want};
use crate::routing::table::{Endpoint, Route};

/// How a piece is sent.
pub struct Dispatcher {
    pub client: reqwest::Client,
    pub clock: Millis,
    pub outlier: OutlierConfig,
    pub timeout: Duration,
}

/// The `/embed` options of one call (TEI's defaults when absent).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Options {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Serialize)]
struct EmbedBody<'a> {
    inputs: Vec<&'a str>,
    #[serde(flatten)]
    options: Options,
}

/// Why an attempt failed.
enum Failure {
    /// Another endpoint may succeed (transport error, timeout, 5xx, 429).
    Retry(String),
    /// The request itself was refused (4xx): another endpoint would refuse it too.
    Refused(String),
}

/// Counts a request in flight on an endpoint until dropped (as the gateway's guard, without
/// its gauge), waking the model's queue when the endpoint is limited.
struct Slot<'a> {
    route: &'a Route,
    endpoint: &'a Endpoint,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.endpoint.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.endpoint.max_concurrent > 0 && !self.route.queue.is_empty() {
            self.route.queue.wake_one();
        }
    }
}

/// What the picker wants for batch embedding: a TEI HTTP endpoint, any.
pub const WANT: Want = Want {
    class: ProtoClass::Http,
    pinned: None,
    affinity: None,
};

/// How long a piece waits for an endpoint below its `max_concurrent`, at most.
const WAIT_FOR_ROOM: Duration = Duration::from_secs(10);

impl Dispatcher {
    /// Embeds the piece `rows` of `texts`: one result per row, in order.
    pub async fn piece(
        &self,
        route: &Route,
        rows: &[u32],
        texts: &[Option<&str>],
        options: Options,
    ) -> Vec<RowResult> {
        let inputs: Vec<&str> = rows
            .iter()
            .map(|&r| texts[r as usize].unwrap_or_default())
            .collect();
        match self.send(route, inputs.clone(), options).await {
            Ok(vectors) => vectors.into_iter().map(Ok).collect(),
            Err(Failure::Refused(_)) if inputs.len() > 1 => {
                // One by one, so only the rows TEI refuses fail.
                let singles = inputs.iter().map(|t| async move {
                    match self.send(route, vec![*t], options).await {
                        Ok(mut v) => v.pop().ok_or_else(|| "no embedding returned".to_string()),
                        Err(Failure::Refused(m) | Failure::Retry(m)) => Err(m),
                    }
                });
                futures::future::join_all(singles).await
            }
            Err(Failure::Refused(m) | Failure::Retry(m)) => vec![Err(m); inputs.len()],
        }
    }

    /// One `/embed` call with retries on other endpoints.
    async fn send(
        &self,
        route: &Route,
        inputs: Vec<&str>,
        options: Options,
    ) -> Result<Vec<Vec<f32>>, Failure> {
        let n = inputs.len();
        let body = serde_json::to_vec(&EmbedBody { inputs, options })
            .map_err(|e| Failure::Refused(format!("cannot encode the request: {e}")))?;
        let mut tried = Tried::default();
        let mut last = Failure::Retry(format!("model `{}` has no endpoint available", route.name));
        let attempts = u64::from(route.policy.max_retries) + 1;
        for _ in 0..attempts {
            let Some(index) = self.pick(route, tried).await else {
                break;
            };
            tried.mark(index);
            let endpoint = &route.endpoints[index];
            let _slot = Slot { route, endpoint };
            match self.call(endpoint, body.clone(), n).await {
                Ok(v) => {
                    route.record_success(index, &self.outlier, self.clock.now_ms());
                    return Ok(v);
                }
                Err(Failure::Refused(m)) => {
                    route.record_success(index, &self.outlier, self.clock.now_ms());
                    return Err(Failure::Refused(format!("{}: {m}", endpoint.id)));
                }
                Err(Failure::Retry(m)) => {
                    route.record_failure(index, &self.outlier, self.clock.now_ms());
                    last = Failure::Retry(format!("{}: {m}", endpoint.id));
                }
            }
        }
        Err(last)
    }

    /// An endpoint not yet `tried` with room, waiting (briefly, in steps) while every eligible
    /// one is at its `max_concurrent`.
    async fn pick(&self, route: &Route, tried: Tried) -> Option<usize> {
        let started = self.clock.now_ms();
        loop {
            let now = self.clock.now_ms();
            if let Some(i) = pick_reserved(route, tried, &WANT, now) {
                return Some(i);
            }
            if !any_eligible(route, tried, &WANT, now)
                || now.saturating_sub(started) > WAIT_FOR_ROOM.as_millis() as u64
            {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `POST /embed` to `endpoint`, expecting `n` vectors.
    async fn call(
        &self,
        endpoint: &Endpoint,
        body: Vec<u8>,
        n: usize,
    ) -> Result<Vec<Vec<f32>>, Failure> {
        if endpoint.tls {
            return Err(Failure::Refused(
                "batch embedding does not speak TLS to endpoints".into(),
            ));
        }
        let url = format!("http://{}{}/embed", endpoint.addr, endpoint.path_prefix);
        let mut req = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::HOST, endpoint.host.as_str())
            .body(body);
        if let Some(auth) = &endpoint.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("request failed: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Retry(format!("response failed: {e}")))?;
        if !status.is_success() {
            let why = tei_error(&bytes);
            let message = format!("HTTP {}: {why}", status.as_u16());
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Failure::Retry(message)
            } else {
                Failure::Refused(message)
            });
        }
        let vectors: Vec<Vec<f32>> = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Retry(format!("not an /embed answer: {e}")))?;
        if vectors.len() != n {
            return Err(Failure::Retry(format!(
                "{} embeddings for {n} inputs",
                vectors.len()
            )));
        }
        Ok(vectors)
    }
}

/// TEI's `{"error": ...}` message, or the start of the body.
fn tei_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct TeiError {
        error: String,
    }
    match serde_json::from_slice::<TeiError>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// Shared by the calls of one service.
pub type Shared = Arc<Dispatcher>;
