//! Decides where a request goes: its route family, the model it names, and that model's route
//! in the table the request pinned.
//!
//! For OpenAI routes the model comes from the `x-model` header when present (the body is then
//! never read), else from the body's `model` field. Reading the body stops as soon as the field is
//! found; the bytes read so far are held in [`Held`] and handed to the upstream first, so the
//! upstream receives the body exactly as it arrived.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora_error::Result;
use pingora_proxy::Session;

use crate::model::{ModelScanner, Scan, ScanError};
use crate::respond::{ErrorFormat, ProxyError};
use crate::table::{KindMask, ModelKind, ProtoClass, Route, RoutingTable, TEI_KINDS};

/// Which API a request belongs to; decides routing, eligible endpoints and the error format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: routed by `model`.
    OpenAi,
    /// `GET /v1/models`: answered from the table.
    ModelsList,
    /// TEI's HTTP API (`/embed`, `/rerank`, ...): routed by `x-model` / `x-instance`, or to the
    /// only model of a matching kind.
    TeiHttp(KindMask),
    /// gRPC (`content-type: application/grpc`), e.g. `tei.v1.*`: routed like TEI HTTP, by
    /// metadata. The mask is empty for services other than tei.v1 (a model must be named).
    Grpc(KindMask),
    /// Anything else.
    Unknown,
}

impl Family {
    /// How errors are written for this family.
    pub fn format(self) -> ErrorFormat {
        match self {
            Family::TeiHttp(_) => ErrorFormat::Tei,
            Family::Grpc(_) => ErrorFormat::Grpc,
            Family::OpenAi | Family::ModelsList | Family::Unknown => ErrorFormat::OpenAi,
        }
    }

    /// Which endpoints can serve it.
    pub fn class(self) -> ProtoClass {
        match self {
            Family::Grpc(_) => ProtoClass::Grpc,
            _ => ProtoClass::Http,
        }
    }
}

const EMBED: KindMask = ModelKind::Embedding.bit();
const SPARSE: KindMask = ModelKind::SparseEmbedding.bit();

/// Classifies a request by method, path and content type.
pub fn classify(method: &Method, path: &str, content_type: Option<&[u8]>) -> Family {
    if content_type.is_some_and(|ct| ct.starts_with(b"application/grpc")) {
        return Family::Grpc(grpc_kinds(path));
    }
    match (method, path) {
        (&Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            Family::OpenAi
        }
        (&Method::GET, "/v1/models") => Family::ModelsList,
        (&Method::POST, "/embed" | "/embed_all" | "/similarity") => Family::TeiHttp(EMBED),
        (&Method::POST, "/embed_sparse") => Family::TeiHttp(SPARSE),
        (&Method::POST, "/rerank") => Family::TeiHttp(ModelKind::Rerank.bit()),
        (&Method::POST, "/predict") => Family::TeiHttp(ModelKind::Classify.bit()),
        (&Method::POST, "/tokenize" | "/decode") | (&Method::GET, "/info") => {
            Family::TeiHttp(TEI_KINDS)
        }
        _ => Family::Unknown,
    }
}

/// Kinds a tei.v1 service path can reach (`/tei.v1.Embed/EmbedStream` → embeddings).
fn grpc_kinds(path: &str) -> KindMask {
    let service = path
        .strip_prefix("/tei.v1.")
        .and_then(|rest| rest.split('/').next());
    match service {
        Some("Embed") => EMBED | SPARSE,
        Some("Rerank") => ModelKind::Rerank.bit(),
        Some("Predict") => ModelKind::Classify.bit(),
        Some("Tokenize" | "Info") => TEI_KINDS,
        _ => 0,
    }
}

/// Where a request goes: a route, and maybe one pinned endpoint of it.
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<Route>,
    pub pinned: Option<usize>,
}

/// Resolves a TEI HTTP or gRPC request from its `x-instance` / `x-model` headers (metadata),
/// falling back to the only model of the family's kinds.
pub fn target_from_headers(
    table: &RoutingTable,
    session: &Session,
    family: Family,
) -> Result<Target, ProxyError> {
    let (kinds, class) = match family {
        Family::TeiHttp(k) | Family::Grpc(k) => (k, family.class()),
        _ => (0, family.class()),
    };
    if let Some(id) = header(session, "x-instance") {
        let by_model = model_from_header(session).map(|m| {
            table
                .route(m)
                .ok_or_else(|| ProxyError::unknown_model(m))
                .and_then(|r| {
                    r.endpoints
                        .iter()
                        .position(|e| e.id == id)
                        .map(|i| (r.clone(), i))
                        .ok_or_else(|| ProxyError::unknown_instance(id))
                })
        });
        let (route, index) = match by_model {
            Some(found) => found?,
            None => table
                .pinned(id)
                .cloned()
                .ok_or_else(|| ProxyError::unknown_instance(id))?,
        };
        return Ok(Target {
            route,
            pinned: Some(index),
        });
    }
    if let Some(model) = model_from_header(session) {
        let route = table
            .route(model)
            .ok_or_else(|| ProxyError::unknown_model(model))?;
        return Ok(Target {
            route: route.clone(),
            pinned: None,
        });
    }
    if kinds == 0 {
        return Err(ProxyError::model_required());
    }
    table
        .sole(kinds, class)
        .map(|route| Target {
            route: route.clone(),
            pinned: None,
        })
        .ok_or_else(ProxyError::model_required)
}

fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

/// Body bytes read for routing, to be sent upstream before the rest of the body.
#[derive(Debug, Default)]
pub struct Held {
    bytes: Option<Bytes>,
    /// Whether this attempt still has to send them (reset per attempt, so retries resend).
    pending: bool,
}

impl Held {
    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.bytes.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arms the held bytes for a new upstream attempt.
    pub fn rearm(&mut self) {
        self.pending = self.bytes.is_some();
    }

    /// Puts the held bytes in front of `body` (the next chunk pingora read, or `None` at end of
    /// body). A no-op once sent for this attempt.
    pub fn prepend_to(&mut self, body: &mut Option<Bytes>) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        let Some(held) = self.bytes.as_ref() else {
            return;
        };
        *body = Some(match body.take() {
            Some(next) if !next.is_empty() => {
                let mut joined = BytesMut::with_capacity(held.len() + next.len());
                joined.extend_from_slice(held);
                joined.extend_from_slice(&next);
                joined.freeze()
            }
            _ => held.clone(),
        });
    }
}

/// The model named by the `x-model` header, if any.
pub fn model_from_header(session: &Session) -> Option<&str> {
    header(session, "x-model")
}

/// The request's declared body length, if any.
pub fn content_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Reads the body until its top-level `model` is known. `Ok(Err(_))` is the client's fault and
/// gets an error response; `Err(_)` is a failed read from the client.
pub async fn model_from_body(
    session: &mut Session,
    limit: usize,
    held: &mut Held,
) -> Result<Result<String, ProxyError>> {
    if content_length(session).is_some_and(|len| len > limit) {
        return Ok(Err(ProxyError::too_large(limit)));
    }
    let mut scanner = ModelScanner::new();
    // One chunk is held as is; more are joined into one buffer (the filter API takes one).
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        // A failed read is the client's (malformed chunked encoding, timeout, gone).
        let read = session.read_request_body().await.map_err(|e| e.into_down());
        let Some(chunk) = read? else {
            return Ok(Err(scan_error(scanner.finish())));
        };
        total += chunk.len();
        if total > limit {
            return Ok(Err(ProxyError::too_large(limit)));
        }
        let scan = scanner.feed(&chunk);
        match (&mut joined, held.bytes.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => held.bytes = Some(chunk),
            (None, Some(first)) => {
                let cap = content_length(session).unwrap_or(first.len() + chunk.len());
                let mut buf = BytesMut::with_capacity(cap.max(first.len() + chunk.len()));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                joined = Some(buf);
            }
        }
        match scan {
            Ok(Scan::NeedMore) => continue,
            Ok(Scan::Found(model)) => {
                if let Some(buf) = joined {
                    held.bytes = Some(buf.freeze());
                }
                return Ok(Ok(model));
            }
            Err(e) => return Ok(Err(scan_error(e))),
        }
    }
}

fn scan_error(e: ScanError) -> ProxyError {
    let code = match e {
        ScanError::Missing => "missing_model",
        ScanError::ModelNotString | ScanError::ModelTooLong => "invalid_model",
        ScanError::Malformed(_) | ScanError::NotAnObject => "invalid_json",
    };
    ProxyError::bad_request(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_route_family() {
        let c = |m: &Method, p: &str| classify(m, p, None);
        assert_eq!(c(&Method::POST, "/v1/chat/completions"), Family::OpenAi);
        assert_eq!(c(&Method::POST, "/v1/embeddings"), Family::OpenAi);
        assert_eq!(c(&Method::GET, "/v1/models"), Family::ModelsList);
        assert_eq!(c(&Method::GET, "/v1/chat/completions"), Family::Unknown);
        assert_eq!(c(&Method::POST, "/nope"), Family::Unknown);
        assert_eq!(c(&Method::POST, "/embed"), Family::TeiHttp(EMBED));
        assert_eq!(c(&Method::POST, "/embed_sparse"), Family::TeiHttp(SPARSE));
        assert_eq!(
            c(&Method::POST, "/rerank"),
            Family::TeiHttp(ModelKind::Rerank.bit())
        );
        assert_eq!(c(&Method::GET, "/info"), Family::TeiHttp(TEI_KINDS));
        let grpc = Some(&b"application/grpc+proto"[..]);
        assert_eq!(
            classify(&Method::POST, "/tei.v1.Embed/EmbedStream", grpc),
            Family::Grpc(EMBED | SPARSE)
        );
        assert_eq!(
            classify(&Method::POST, "/grpc.health.v1.Health/Check", grpc),
            Family::Grpc(0)
        );
        assert_eq!(Family::Grpc(0).format(), ErrorFormat::Grpc);
    }

    #[test]
    fn held_bytes_go_first_once_per_attempt() {
        let mut h = Held {
            bytes: Some(Bytes::from_static(b"{\"model\":\"m\",")),
            pending: false,
        };
        h.rearm();
        let mut body = Some(Bytes::from_static(b"\"x\":1}"));
        h.prepend_to(&mut body);
        assert_eq!(body.as_deref(), Some(&b"{\"model\":\"m\",\"x\":1}"[..]));
        let mut next = Some(Bytes::from_static(b"more"));
        h.prepend_to(&mut next);
        assert_eq!(next.as_deref(), Some(&b"more"[..]));
        // A retry sends them again; at end of body they are the whole body.
        h.rearm();
        let mut end = None;
        h.prepend_to(&mut end);
        assert_eq!(end.as_deref(), Some(&b"{\"model\":\"m\","[..]));
    }
}
