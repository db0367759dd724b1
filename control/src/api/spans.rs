//! The operator API's OTLP spans (`[tracing] otlp_endpoint`): one `control.api` server span
//! per request, from its arrival to its response header (a stream's body is not timed), in the
//! trace of the caller's `traceparent` when it sent a valid one (sampled as it says), else in a
//! new trace sampled by `[tracing] sample_ratio`. Attributes: `multiverse.request_id`,
//! `http.request.method`, `url.path`, `http.response.status_code`; status error for a 5xx.
//! Off: one branch per request.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use multiverse_common::otlp::{new_span_id, parse_traceparent, Ids, KeyValue, Kind, Otlp, Span};
use multiverse_common::request_id::HEADER;

/// The exporter, when on, and the share of new traces sampled.
#[derive(Debug, Clone, Default)]
pub struct ApiSpans {
    pub otlp: Option<Arc<Otlp>>,
    pub sample_ratio: f64,
}

/// Runs the request; records its span when traced. Inside `request_id::tag`, so the request
/// carries its id already.
pub async fn record(State(spans): State<ApiSpans>, request: Request, next: Next) -> Response {
    let Some(otlp) = spans.otlp else {
        return next.run(request).await;
    };
    let parent = {
        let mut sent = request.headers().get_all("traceparent").iter();
        match (sent.next(), sent.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        }
    };
    let sampled = parent.map_or_else(|| rand::random::<f64>() < spans.sample_ratio, |p| p.sampled);
    if !sampled {
        return next.run(request).await;
    }
    let ids = Ids {
        trace_id: parent.map_or_else(|| rand::random::<u128>().max(1), |p| p.trace_id),
        span_id: new_span_id(),
        parent_id: parent.map_or(0, |p| p.parent_id),
        parent_remote: parent.is_some(),
    };
    let (wall, start) = (SystemTime::now(), Instant::now());
    let request_id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    otlp.record(Span {
        name: "control.api",
        kind: Kind::Server,
        ids,
        start: wall,
        end: wall + start.elapsed(),
        attributes: vec![
            KeyValue::new("multiverse.request_id", request_id),
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", path),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
        error: status >= 500,
    });
    response
}
