//! `x-request-id` on the operator API, as on the proxy (the rule is
//! `multiverse_common::request_id`): the caller's id kept when usable, else one made here; it
//! comes back on every response (errors and the web UI's pages included) and every log line a
//! handler writes carries it, as the `request_id` field of the request's span.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use multiverse_common::request_id::{generate, usable, HEADER};
use tracing::Instrument;

/// The caller's usable id, else a new one.
fn id_of(request: &Request) -> HeaderValue {
    let mut sent = request.headers().get_all(HEADER).iter();
    match (sent.next(), sent.next()) {
        (Some(v), None) if usable(v.as_bytes()) => v.clone(),
        _ => HeaderValue::from_bytes(&generate()).unwrap_or(HeaderValue::from_static("-")),
    }
}

/// The outermost middleware: ids the request, runs it in a span naming the id, returns the id.
pub async fn tag(mut request: Request, next: Next) -> Response {
    let id = id_of(&request);
    let shown = id.to_str().unwrap_or("-").to_string();
    request.headers_mut().insert(HEADER, id.clone());
    let span = tracing::info_span!("api", request_id = %shown);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(%method, path, status = response.status().as_u16(), "api request");
    });
    response.headers_mut().insert(HEADER, id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(ids: &[&str]) -> Request {
        let mut r = Request::new(Body::empty());
        for id in ids {
            r.headers_mut()
                .append(HEADER, HeaderValue::from_str(id).expect("value"));
        }
        r
    }

    #[test]
    fn kept_when_usable_else_made() {
        assert_eq!(id_of(&req(&["op-7"])), "op-7");
        for bad in [&["has space"][..], &["a", "b"], &[]] {
            let id = id_of(&req(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
        }
    }
}
