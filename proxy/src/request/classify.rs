//! The first decision about a request: which API it belongs to (its route family), from the
//! method, the path and the content type alone. The family decides how the model is found,
//! which endpoints may serve it, and the format of its errors. No allocation.

use http::Method;
use pingora_http::RequestHeader;

use crate::request::respond::ErrorFormat;
use crate::routing::table::{KindMask, ModelKind, ProtoClass, TEI_KINDS};

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

    /// The kinds of model it may reach without naming one (0: a model must be named).
    pub fn kinds(self) -> KindMask {
        match self {
            Family::TeiHttp(k) | Family::Grpc(k) => k,
            _ => 0,
        }
    }
}

const EMBED: KindMask = ModelKind::Embedding.bit();
const SPARSE: KindMask = ModelKind::SparseEmbedding.bit();

/// Classifies a request header.
pub fn classify_request(req: &RequestHeader) -> Family {
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes());
    classify(&req.method, req.uri.path(), content_type)
}

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
    fn a_request_header_is_classified_by_its_content_type() {
        let mut req = RequestHeader::build("POST", b"/tei.v1.Rerank/Rerank", None).expect("req");
        assert_eq!(classify_request(&req), Family::Unknown);
        req.insert_header("content-type", "application/grpc")
            .expect("header");
        assert_eq!(
            classify_request(&req),
            Family::Grpc(ModelKind::Rerank.bit())
        );
        assert_eq!(classify_request(&req).class(), ProtoClass::Grpc);
    }
}
