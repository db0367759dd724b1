//! Responses the proxy writes itself: a [`ProxyError`] in the format of the route family that
//! failed, and the few answers it gives from its own table (`GET /v1/models`).
//!
//! - OpenAI routes: `{"error":{"message","type","param","code"}}`, as the openai SDKs parse it;
//! - TEI HTTP routes: TEI's `{"error","error_type"}`;
//! - gRPC: a trailers-only response with `grpc-status` / `grpc-message`.

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora_core::protocols::http::ServerSession as HttpSession;
use pingora_error::Result;
use pingora_http::{ResponseHeader, StaticHeaderName};
use pingora_proxy::Session;
use serde_json::json;

use crate::request::auth::RateHeaders;
use crate::request::cors;
use crate::request::error::ProxyError;
use crate::request::id;
use crate::routing::keys::ApiKey;
use crate::routing::table::RoutingTable;

/// The error formats of the route families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    OpenAi,
    Tei,
    Grpc,
}

/// The OpenAI error body.
pub fn openai_body(err: &ProxyError) -> Bytes {
    let v = json!({
        "error": {
            "message": err.to_string(),
            "type": err.kind(),
            "param": null,
            "code": err.code(),
        }
    });
    Bytes::from(v.to_string())
}

/// TEI's error body.
pub fn tei_body(err: &ProxyError) -> Bytes {
    Bytes::from(json!({"error": err.to_string(), "error_type": err.code()}).to_string())
}

/// gRPC's status headers of a trailers-only answer (typed names: no parse per insert).
static GRPC_STATUS_HEADER: StaticHeaderName = StaticHeaderName::new("grpc-status");
static GRPC_MESSAGE_HEADER: StaticHeaderName = StaticHeaderName::new("grpc-message");

/// Bytes of a `grpc-message` that must be percent-encoded (gRPC over HTTP/2 spec).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Writes `err` in `format` (with an allowed origin's CORS headers, the key's rate-limit
/// headers when it has any, and the request's id).
pub async fn send_error(
    session: &mut Session,
    format: ErrorFormat,
    err: &ProxyError,
    cors: Option<&HeaderValue>,
    rate: Option<&RateHeaders>,
    request_id: &HeaderValue,
) -> Result<()> {
    match format {
        ErrorFormat::OpenAi => {
            let body = openai_body(err);
            send_json_with(session, err.status(), body, cors, rate, request_id).await
        }
        ErrorFormat::Tei => {
            let body = tei_body(err);
            send_json_with(session, err.status(), body, cors, rate, request_id).await
        }
        ErrorFormat::Grpc => {
            // Trailers-only: HTTP 200 whose headers carry the status, and end the stream.
            let mut resp = ResponseHeader::build(200, Some(5))?;
            resp.insert_header(&id::NAME, request_id.clone())?;
            cors::decorate(&mut resp, cors)?;
            if let Some(rate) = rate {
                rate.write(&mut resp)?;
            }
            resp.insert_header(header::CONTENT_TYPE, "application/grpc")?;
            resp.insert_header(&GRPC_STATUS_HEADER, (err.grpc_code() as i32).to_string())?;
            let message =
                percent_encoding::utf8_percent_encode(&err.to_string(), GRPC_MESSAGE).to_string();
            resp.insert_header(&GRPC_MESSAGE_HEADER, message)?;
            // pingora 0.9's generic writer never sets END_STREAM on h2 headers, which gRPC
            // clients need to read a trailers-only response; write to the h2 stream directly.
            match &mut *session.downstream_session {
                HttpSession::H2(h2) => h2.write_response_header(Box::new(resp), true),
                _ => session.write_response_header(Box::new(resp), true).await,
            }
        }
    }
}

/// Writes a complete JSON response (with an allowed origin's CORS headers and the request's
/// id).
pub async fn send_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    cors: Option<&HeaderValue>,
    request_id: &HeaderValue,
) -> Result<()> {
    send_json_with(session, status, body, cors, None, request_id).await
}

async fn send_json_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    cors: Option<&HeaderValue>,
    rate: Option<&RateHeaders>,
    request_id: &HeaderValue,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(8))?;
    resp.insert_header(&id::NAME, request_id.clone())?;
    cors::decorate(&mut resp, cors)?;
    if let Some(rate) = rate {
        rate.write(&mut resp)?;
    }
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `GET /v1/models` answered from the table: OpenAI list format, plus each model's kind and
/// available-endpoint count (`multiverse` extension object). With a key, only its models.
pub fn models_list(table: &RoutingTable, key: Option<&ApiKey>) -> Bytes {
    let data: Vec<_> = table
        .routes()
        .filter(|r| key.is_none_or(|k| k.allows(&r.name)))
        .map(|r| {
            json!({
                "id": r.name,
                "object": "model",
                "created": 0,
                "owned_by": "multiverse",
                "multiverse": {
                    "kind": r.kind,
                    "healthy_endpoints": r.available(),
                    "endpoints": r.endpoints.len(),
                },
            })
        })
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tei_and_grpc_shapes() {
        let e = ProxyError::UnknownModel("x".into());
        let v: serde_json::Value = serde_json::from_slice(&tei_body(&e)).expect("json");
        assert_eq!(v["error_type"], "model_not_found");
        assert!(v["error"].as_str().is_some_and(|m| m.contains("`x`")));
        assert_eq!(e.grpc_code(), tonic::Code::NotFound);
        assert_eq!(
            ProxyError::NoHealthyEndpoint("m".into()).grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            ProxyError::UpstreamTimeout("t").grpc_code(),
            tonic::Code::DeadlineExceeded
        );
    }

    #[test]
    fn openai_error_shape() {
        let body = openai_body(&ProxyError::UnknownModel("x".into()));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`x`")));
    }
}
