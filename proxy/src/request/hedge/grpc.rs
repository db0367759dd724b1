//! The gRPC side of hedging: which `tei.v1` methods are unary (the only gRPC calls hedged),
//! which answers are the endpoint's failure rather than a real answer, and how the winner's
//! header, body and trailers are written to the client.
//!
//! A gRPC call's status is in `grpc-status`: in the trailers after the body, or in the header
//! of a trailers-only answer (no body, one HEADERS frame ending the stream, as servers answer
//! an error). Only UNAVAILABLE (14) is the endpoint's fault: gRPC's "the service is currently
//! unavailable, retry" — a server shutting down, overloaded at the transport, or an engine
//! that failed (TEI answers it for a backend error; HTTP 503 is the same failure and
//! `retry::judge` counts it). Every other status is the call's own answer and wins the race:
//! INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE (the input), UNAUTHENTICATED /
//! PERMISSION_DENIED (the credentials), NOT_FOUND / UNIMPLEMENTED (the same on every endpoint of
//! a model), RESOURCE_EXHAUSTED (TEI's "overloaded", HTTP 429, which is not a gateway failure on
//! HTTP either), DEADLINE_EXCEEDED (the client's own `grpc-timeout`), INTERNAL / UNKNOWN /
//! DATA_LOSS (a fault of this input that another replica of the same model would repeat).

use bytes::Bytes;
use http::HeaderMap;
use pingora_core::protocols::http::ServerSession;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The unary methods of TEI's `tei.v1` services (`proto/proto/tei/v1/tei.proto`): one request
/// message, one answer. The streaming ones (`EmbedStream`, `RerankStream`, ...) are never
/// hedged: a stream's messages cannot be replayed once the first endpoint has answered some.
const UNARY: [&str; 9] = [
    "/tei.v1.Info/Info",
    "/tei.v1.Embed/Embed",
    "/tei.v1.Embed/EmbedSparse",
    "/tei.v1.Embed/EmbedAll",
    "/tei.v1.Predict/Predict",
    "/tei.v1.Predict/PredictPair",
    "/tei.v1.Rerank/Rerank",
    "/tei.v1.Tokenize/Tokenize",
    "/tei.v1.Tokenize/Decode",
];

/// Whether a gRPC request to `path` is a unary `tei.v1` call (idempotent, so it may be sent
/// twice).
pub fn unary(path: &str) -> bool {
    UNARY.contains(&path)
}

/// Whether `headers` (an answer's trailers, or the header of a trailers-only answer) carry
/// `grpc-status: 14` (UNAVAILABLE): the endpoint failed, the attempt counts as failed.
pub fn unavailable(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

/// The attempts' request: gRPC asks for `te: trailers` (the template drops `te` as
/// hop-by-hop; this one value is allowed on HTTP/2).
pub fn template(req: &mut RequestHeader) -> Result<()> {
    req.insert_header(http::header::TE, "trailers")
}

/// Writes the winning answer to the client: header, body, trailers as the endpoint sent them.
/// A trailers-only answer (no body, no trailers) is one HEADERS frame that ends the stream.
pub async fn write(
    session: &mut Session,
    header: ResponseHeader,
    body: Bytes,
    trailers: Option<HeaderMap>,
) -> Result<()> {
    if body.is_empty() && trailers.is_none() {
        // pingora's generic writer never sets END_STREAM on h2 headers (see `respond`).
        return match &mut *session.downstream_session {
            ServerSession::H2(h2) => h2.write_response_header(Box::new(header), true),
            _ => session.write_response_header(Box::new(header), true).await,
        };
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(body), trailers.is_none())
            .await?;
    }
    if let Some(trailers) = trailers {
        session
            .downstream_session
            .write_response_trailers(trailers)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unary_tei_methods_are_unary() {
        for p in UNARY {
            assert!(unary(p), "{p}");
        }
        for p in [
            "/tei.v1.Embed/EmbedStream",
            "/tei.v1.Embed/EmbedSparseStream",
            "/tei.v1.Embed/EmbedAllStream",
            "/tei.v1.Predict/PredictStream",
            "/tei.v1.Predict/PredictPairStream",
            "/tei.v1.Rerank/RerankStream",
            "/tei.v1.Tokenize/TokenizeStream",
            "/tei.v1.Tokenize/DecodeStream",
            "/grpc.health.v1.Health/Check",
            "/other.v1.Embed/Embed",
            "/tei.v1.Embed/Embed/",
        ] {
            assert!(!unary(p), "{p}");
        }
    }

    #[test]
    fn only_unavailable_is_the_endpoints_failure() {
        let mut h = HeaderMap::new();
        assert!(!unavailable(&h), "no status");
        for (code, failed) in [("0", false), ("3", false), ("8", false), ("13", false)] {
            h.insert("grpc-status", code.parse().expect("value"));
            assert_eq!(unavailable(&h), failed, "grpc-status {code}");
        }
        h.insert("grpc-status", "14".parse().expect("value"));
        assert!(unavailable(&h));
    }
}
