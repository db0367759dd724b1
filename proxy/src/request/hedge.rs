//! Hedged requests (issue 15), for idempotent routes of a model with `hedge_after_ms`: the
//! request goes to one endpoint; when no response header came back within `hedge_after_ms`, the
//! same request goes to a second endpoint (a different one, picked by the model's policy); the
//! first complete answer is written to the client and the other upstream request is cancelled
//! (dropped: an HTTP/1.1 connection closed, an HTTP/2 stream reset with CANCEL; never returned
//! to the pool).
//!
//! pingora proxies one upstream per session, so a hedged request takes its own path: its body
//! (small and bounded by `[limits] max_body_bytes` on these routes) is read in full, each
//! attempt is sent with pingora's own HTTP connector (pooled connections, HTTP/1.1, h2c and TLS
//! as for proxied requests) and its answer read in full before it can win (for gRPC, with its
//! trailers). A 502 / 503, a gRPC UNAVAILABLE (see [`grpc`] for why only that status) or a
//! failed attempt counts for outlier detection and, within the model's retry budget, sends the
//! request to another untried endpoint at once. Only the routes [`idempotent`] names are hedged:
//! `/v1/embeddings`, TEI's HTTP routes and TEI's unary gRPC methods; never chat, completions or
//! a gRPC stream. The winner is written as it came: header, body and, on gRPC, its trailers
//! (or a trailers-only answer as one HEADERS frame).
//!
//! Cost when hedging is off for the model: one branch in `request_filter`. When on: the
//! request body and the answer (at most [`MAX_ANSWER_BYTES`]) are held in memory, the request
//! header is cloned per attempt; a gRPC answer's trailers are moved, not copied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use http::header;
use http::{HeaderMap, Method};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use crate::request::classify::Family;
use crate::request::error::ProxyError;
use crate::request::upstream::{self, UpstreamDefaults};
use crate::routing::table::Route;

pub mod grpc;

/// Largest upstream answer a hedged attempt reads (an embeddings response of a large batch
/// fits); a longer one fails the attempt.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Headers of one hop only: never sent on, in either direction, by a hedged request.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Whether a request of `family` to `method path` is idempotent, so it may be sent twice:
/// OpenAI's `/v1/embeddings`, every TEI HTTP route (`/embed`, `/embed_all`, `/similarity`,
/// `/embed_sparse`, `/rerank`, `/predict`, `/tokenize`, `/decode`, `GET /info`), and the unary
/// methods of TEI's gRPC services ([`grpc::unary`]).
pub fn idempotent(family: Family, method: &Method, path: &str) -> bool {
    match family {
        Family::OpenAi => method == Method::POST && path == "/v1/embeddings",
        Family::TeiHttp(_) => true,
        Family::Grpc(_) => method == Method::POST && grpc::unary(path),
        Family::ModelsList | Family::Unknown => false,
    }
}

/// The wait before the hedge, when `route`'s requests of this kind are hedged.
#[inline]
pub fn after(route: &Route, family: Family, req: &RequestHeader) -> Option<Duration> {
    let after = route.policy.hedge_after?;
    idempotent(family, &req.method, req.uri.path()).then_some(after)
}

/// Reads the rest of the request body after the `held` bytes routing already read; more than
/// `limit` bytes in all is [`ProxyError::TooLarge`].
pub async fn read_body(session: &mut Session, held: Option<&Bytes>, limit: usize) -> Result<Bytes> {
    let mut body: Option<BytesMut> = None;
    let mut first = held.cloned();
    loop {
        if session.is_body_done() {
            break;
        }
        // A failed read is the client's (malformed chunked encoding, timeout, gone).
        let read = session.read_request_body().await.map_err(|e| e.into_down());
        let Some(chunk) = read? else {
            break;
        };
        let so_far = body.as_ref().map_or(0, BytesMut::len) + first.as_ref().map_or(0, Bytes::len);
        if so_far + chunk.len() > limit {
            return Err(ProxyError::TooLarge(limit).into_pingora());
        }
        match (&mut body, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(held)) => {
                let mut buf = BytesMut::with_capacity(held.len() + chunk.len());
                buf.extend_from_slice(&held);
                buf.extend_from_slice(&chunk);
                body = Some(buf);
            }
        }
    }
    Ok(match body {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// The request as every attempt sends it, before the endpoint's own rewrite: hop-by-hop headers
/// gone, the body's length stated.
pub fn template(req: &RequestHeader, body_len: usize) -> Result<RequestHeader> {
    let mut out = req.clone();
    for h in HOP_BY_HOP {
        out.remove_header(h);
    }
    if body_len > 0 || out.method != Method::GET {
        out.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    }
    Ok(out)
}

/// An endpoint's complete answer.
pub struct Answer {
    pub index: usize,
    pub header: ResponseHeader,
    pub body: Bytes,
    /// A gRPC answer's trailers (`grpc-status`); `None` for HTTP, or a trailers-only answer.
    pub trailers: Option<HeaderMap>,
    /// From sending the request to its response header.
    pub to_header: Duration,
}

/// A failed attempt: its endpoint, and the error or the gateway-failure status it answered.
pub struct Failed {
    pub index: usize,
    pub status: u16,
    pub error: Option<Box<Error>>,
}

/// Everything an attempt needs, shared by the attempts of one request.
pub struct Attempt<'a> {
    pub connector: &'a Connector,
    pub route: &'a Arc<Route>,
    pub defaults: &'a UpstreamDefaults,
    pub template: &'a RequestHeader,
    pub body: &'a Bytes,
    /// The client came with a gateway key (never sent upstream).
    pub keyed: bool,
    /// A gRPC call: its trailers are read, a `grpc-status` of UNAVAILABLE fails the attempt.
    pub grpc: bool,
}

impl Attempt<'_> {
    /// Sends the request to `route.endpoints[index]` and reads its whole answer. Dropping the
    /// future cancels it: its connection is closed, not pooled.
    pub async fn send(&self, index: usize) -> Result<Answer, Failed> {
        let fail = |status: u16, error: Option<Box<Error>>| Failed {
            index,
            status,
            error,
        };
        let endpoint = &self.route.endpoints[index];
        let peer: HttpPeer = upstream::peer(endpoint, &self.route.policy, self.defaults);
        let mut req = self.template.clone();
        upstream::rewrite_request(&mut req, endpoint, self.keyed)
            .map_err(|e| fail(502, Some(e)))?;
        let (mut up, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| fail(502, Some(e)))?;
        if matches!(up, HttpSession::H2(_)) {
            to_h2(&mut req, endpoint.tls).map_err(|e| fail(502, Some(e)))?;
        }
        let sent = Instant::now();
        let exchange = async {
            up.write_request_header(Box::new(req)).await?;
            if !self.body.is_empty() {
                up.write_request_body(self.body.clone(), true).await?;
            }
            up.finish_request_body().await?;
            up.read_response_header().await?;
            Ok::<_, Box<Error>>(())
        };
        exchange.await.map_err(|e| fail(502, Some(e)))?;
        let to_header = sent.elapsed();
        let Some(mut header) = up.response_header().cloned() else {
            return Err(fail(502, None));
        };
        let status = header.status.as_u16();
        if matches!(status, 502 | 503) {
            return Err(fail(status, None));
        }
        // A trailers-only gRPC answer carries its status in the header.
        if self.grpc && grpc::unavailable(&header.headers) {
            return Err(fail(503, None));
        }
        let mut body = BytesMut::new();
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(fail(502, None));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(fail(502, Some(e))),
            }
            if up.response_done() {
                break;
            }
        }
        let trailers = match &mut up {
            HttpSession::H2(h2) if self.grpc => {
                h2.read_trailers().await.map_err(|e| fail(502, Some(e)))?
            }
            _ => None,
        };
        if trailers.as_ref().is_some_and(grpc::unavailable) {
            return Err(fail(503, None));
        }
        for h in HOP_BY_HOP {
            header.remove_header(h);
        }
        // A gRPC answer goes as it came (its end is the trailers); HTTP states its length.
        if !self.grpc {
            header
                .insert_header(header::CONTENT_LENGTH, body.len().to_string())
                .map_err(|e| fail(502, Some(e)))?;
        }
        // A complete answer: the connection may serve the next request.
        let idle = self.route.policy.idle_timeout;
        self.connector.release_http_session(up, &peer, idle).await;
        Ok(Answer {
            index,
            header,
            body: body.freeze(),
            trailers,
            to_header,
        })
    }
}

/// An HTTP/2 request names its authority in the URI (`:authority`), not in `Host`.
fn to_h2(req: &mut RequestHeader, tls: bool) -> Result<()> {
    let host = req.remove_header(&header::HOST);
    let Some(host) = host else {
        return Ok(());
    };
    let path = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(host.as_bytes())
        .path_and_query(path)
        .build()
        .map_err(|e| {
            Error::because(
                pingora_error::ErrorType::InvalidHTTPHeader,
                "hedged request: invalid authority",
                e,
            )
        })?;
    req.set_uri(uri);
    Ok(())
}

/// How one hedged request went.
pub struct Outcome {
    pub answer: Option<Answer>,
    pub failed: Vec<Failed>,
    /// Whether the hedge (a second endpoint after `hedge_after`) was sent.
    pub hedged: bool,
    pub attempts: u32,
}

/// Races the request: `first` at once, the next endpoint `pick` gives after `hedge_after`
/// without an answer (or at once when an attempt fails, while `budget` allows); the first
/// complete answer wins and the attempts still running are dropped (cancelled).
pub async fn race(
    attempt: &Attempt<'_>,
    first: usize,
    hedge_after: Duration,
    budget: u32,
    mut pick: impl FnMut() -> Option<usize>,
) -> Outcome {
    let mut running = FuturesUnordered::new();
    running.push(attempt.send(first));
    let mut outcome = Outcome {
        answer: None,
        failed: Vec::new(),
        hedged: false,
        attempts: 1,
    };
    let mut hedge_pending = true;
    let timer = tokio::time::sleep(hedge_after);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            done = running.next(), if !running.is_empty() => match done {
                Some(Ok(answer)) => {
                    outcome.answer = Some(answer);
                    return outcome;
                }
                Some(Err(failed)) => {
                    outcome.failed.push(failed);
                    if outcome.attempts <= budget {
                        if let Some(next) = pick() {
                            outcome.attempts += 1;
                            running.push(attempt.send(next));
                        }
                    }
                    if running.is_empty() {
                        return outcome;
                    }
                }
                None => return outcome,
            },
            () = &mut timer, if hedge_pending => {
                hedge_pending = false;
                // Nothing to hedge to (one endpoint, or the rest busy): the attempt runs on.
                if let Some(next) = pick() {
                    outcome.hedged = true;
                    outcome.attempts += 1;
                    running.push(attempt.send(next));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::classify::classify;

    #[test]
    fn only_idempotent_routes_are_hedged() {
        let post = Method::POST;
        let family = |p: &str| classify(&post, p, None);
        for p in [
            "/v1/embeddings",
            "/embed",
            "/embed_sparse",
            "/rerank",
            "/tokenize",
            "/predict",
        ] {
            assert!(idempotent(family(p), &post, p), "{p}");
        }
        for p in ["/v1/chat/completions", "/v1/completions", "/nope"] {
            assert!(!idempotent(family(p), &post, p), "{p}");
        }
        let grpc = |p: &str| classify(&post, p, Some(b"application/grpc"));
        for p in [
            "/tei.v1.Embed/Embed",
            "/tei.v1.Rerank/Rerank",
            "/tei.v1.Tokenize/Decode",
        ] {
            assert!(idempotent(grpc(p), &post, p), "{p}");
        }
        for p in [
            "/tei.v1.Embed/EmbedStream",
            "/tei.v1.Rerank/RerankStream",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(!idempotent(grpc(p), &post, p), "{p}");
        }
        let get = Method::GET;
        let p = "/tei.v1.Embed/Embed";
        assert!(!idempotent(grpc(p), &get, p), "gRPC is POST");
    }

    #[test]
    fn the_template_states_the_length_and_drops_hop_by_hop_headers() {
        let mut req = RequestHeader::build("POST", b"/v1/embeddings", None).expect("req");
        req.insert_header("transfer-encoding", "chunked")
            .expect("h");
        req.insert_header("connection", "keep-alive").expect("h");
        req.insert_header("x-request-id", "abc").expect("h");
        let t = template(&req, 42).expect("template");
        assert!(t.headers.get("transfer-encoding").is_none());
        assert!(t.headers.get("connection").is_none());
        assert_eq!(
            t.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"42"[..])
        );
        assert_eq!(
            t.headers.get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
    }
}
