//! Responses the proxy writes itself: errors in the format of the route family that failed, and
//! the few answers it gives from its own table (`GET /v1/models`).
//!
//! Every error is a [`ProxyError`] value, written by [`send_error`] in the family's format:
//! - OpenAI routes: `{"error":{"message","type","param","code"}}`, as the openai SDKs parse it;
//! - TEI HTTP routes: TEI's `{"error","error_type"}`;
//! - gRPC: a trailers-only response with `grpc-status` / `grpc-message`.

use bytes::Bytes;
use http::header;
use pingora_core::protocols::http::ServerSession as HttpSession;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::json;

use crate::table::RoutingTable;

/// An error the proxy answers with, independent of the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub status: u16,
    /// OpenAI `type`.
    pub kind: &'static str,
    /// Stable machine-readable `code`.
    pub code: &'static str,
    pub message: String,
}

impl ProxyError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            code,
            message,
        }
    }

    pub fn bad_request(code: &'static str, message: String) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }

    pub fn unknown_model(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or is not served by this gateway"),
        )
    }

    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "unknown_route",
            format!("No route for {method} {path}"),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("Request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn unknown_instance(id: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "instance_not_found",
            format!("No endpoint `{id}` (x-instance) is in the routing table"),
        )
    }

    pub fn model_required() -> Self {
        Self::new(
            400,
            "invalid_request_error",
            "model_required",
            "Name the model with the x-model header (or metadata): more or fewer than one model \
             of this kind is served"
                .into(),
        )
    }

    pub fn too_large_streamed() -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            "Request body exceeds the gateway's limit".into(),
        )
    }

    /// The client stopped sending its body (a read from it timed out).
    pub fn client_timeout() -> Self {
        Self::new(
            408,
            "invalid_request_error",
            "request_timeout",
            "The client stopped sending the request".into(),
        )
    }

    /// The request header could not be parsed (before any route is known).
    pub fn malformed_header() -> Self {
        Self::bad_request(
            "invalid_request",
            "The request is not valid HTTP: malformed request line or header".into(),
        )
    }

    /// The request header did not arrive within `clients.header_timeout_ms`.
    pub fn header_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            408,
            "invalid_request_error",
            "request_timeout",
            format!(
                "The request header did not arrive within {} ms",
                limit.as_millis()
            ),
        )
    }

    pub fn connect_not_allowed() -> Self {
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            "CONNECT is not supported".into(),
        )
    }

    pub fn no_endpoint(model: &str) -> Self {
        Self::new(
            503,
            "server_error",
            "no_healthy_endpoint",
            format!("No healthy endpoint is available for model `{model}`"),
        )
    }

    pub fn not_ready() -> Self {
        Self::new(
            503,
            "server_error",
            "not_ready",
            "The gateway has not received its routing table yet".into(),
        )
    }

    pub fn upstream_timeout(detail: &str) -> Self {
        Self::new(
            504,
            "server_error",
            "upstream_timeout",
            format!("The model server did not answer in time: {detail}"),
        )
    }

    pub fn upstream_failed(detail: &str) -> Self {
        Self::new(
            502,
            "server_error",
            "upstream_error",
            format!("The model server failed: {detail}"),
        )
    }

    /// The OpenAI error body.
    pub fn openai_body(&self) -> Bytes {
        let v = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        });
        Bytes::from(v.to_string())
    }
}

/// The error formats of the route families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    OpenAi,
    Tei,
    Grpc,
}

impl ProxyError {
    /// TEI's error body.
    pub fn tei_body(&self) -> Bytes {
        Bytes::from(json!({"error": self.message, "error_type": self.code}).to_string())
    }

    /// The gRPC status code for this error (as Envoy maps HTTP statuses).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            413 | 429 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            501 => Code::Unimplemented,
            _ => Code::Internal,
        }
    }
}

/// Bytes of a `grpc-message` that must be percent-encoded (gRPC over HTTP/2 spec).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Writes `err` in `format`.
pub async fn send_error(
    session: &mut Session,
    format: ErrorFormat,
    err: &ProxyError,
) -> Result<()> {
    match format {
        ErrorFormat::OpenAi => send_json(session, err.status, err.openai_body()).await,
        ErrorFormat::Tei => send_json(session, err.status, err.tei_body()).await,
        ErrorFormat::Grpc => {
            // Trailers-only: HTTP 200 whose headers carry the status, and end the stream.
            let mut resp = ResponseHeader::build(200, Some(4))?;
            resp.insert_header(header::CONTENT_TYPE, "application/grpc")?;
            resp.insert_header("grpc-status", (err.grpc_code() as i32).to_string())?;
            let message =
                percent_encoding::utf8_percent_encode(&err.message, GRPC_MESSAGE).to_string();
            resp.insert_header("grpc-message", message)?;
            // pingora 0.9's generic writer never sets END_STREAM on h2 headers, which gRPC
            // clients need to read a trailers-only response; write to the h2 stream directly.
            match &mut *session.downstream_session {
                HttpSession::H2(h2) => h2.write_response_header(Box::new(resp), true),
                _ => session.write_response_header(Box::new(resp), true).await,
            }
        }
    }
}

/// Writes a complete JSON response.
pub async fn send_json(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `GET /v1/models` answered from the table: OpenAI list format, plus each model's kind and
/// available-endpoint count (`multiverse` extension object).
pub fn models_list(table: &RoutingTable) -> Bytes {
    let data: Vec<_> = table
        .routes()
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
        let e = ProxyError::unknown_model("x");
        let v: serde_json::Value = serde_json::from_slice(&e.tei_body()).expect("json");
        assert_eq!(v["error_type"], "model_not_found");
        assert_eq!(e.grpc_code(), tonic::Code::NotFound);
        assert_eq!(
            ProxyError::no_endpoint("m").grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            ProxyError::upstream_timeout("t").grpc_code(),
            tonic::Code::DeadlineExceeded
        );
    }

    #[test]
    fn openai_error_shape() {
        let body = ProxyError::unknown_model("x").openai_body();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`x`")));
    }
}
