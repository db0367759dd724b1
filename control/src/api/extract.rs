//! Reading requests: JSON bodies and query strings with errors in the API's format, the body
//! size limit, and the lingering that lets a client whose body was refused (or not read) see
//! the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;

use super::{ApiError, ErrorCode};

/// The body of a request, or a 400 `VALIDATION_ERROR` naming what is wrong with it (a 413
/// `PAYLOAD_TOO_LARGE` past `[admin] max_body_bytes`, the router's body limit).
pub(crate) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is over the limit ([admin] max_body_bytes)",
            )
        } else {
            ApiError::new(
                ErrorCode::ValidationError,
                format!("invalid request body: {}", e.body_text()),
            )
        }
    })
}

/// The query string of a request, or a 400 `VALIDATION_ERROR` naming what is wrong with it
/// (axum's own rejection is plain text).
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            ErrorCode::ValidationError,
            format!("invalid query: {}", e.body_text()),
        )
    })
}

/// Most of a refused or unread body that is still read (and dropped) after the answer.
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// How long a refused or unread body is still read after the answer.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// Middleware: a request body the handler did not read to its end (refused as too large, or
/// never looked at) is read and dropped in the background, up to [`LINGER_BYTES`] and
/// [`LINGER_TIME`], before the connection closes. Closing with unread data makes the kernel
/// reset the connection, and a client still sending would then lose the answer (a 413) that was
/// already on its way — nginx's "lingering close".
pub async fn linger(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = Body::new(Lingering(Some(body)));
    next.run(Request::from_parts(parts, body)).await
}

/// A body that is drained when dropped before its end.
struct Lingering(Option<Body>);

impl HttpBody for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut body = body.into_data_stream();
            let mut read = 0usize;
            let _ = tokio::time::timeout(LINGER_TIME, async {
                while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                    read += chunk.len();
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A body of `chunks` chunks that counts what is read of it.
    fn counted(chunks: usize, read: Arc<AtomicUsize>) -> Body {
        let stream = futures::stream::iter((0..chunks).map(move |_| {
            read.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from_static(b"xxxx"))
        }));
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn a_body_dropped_unread_is_drained_and_a_read_one_is_left_alone() {
        let read = Arc::new(AtomicUsize::new(0));
        drop(Lingering(Some(counted(1000, read.clone()))));
        tokio::time::timeout(Duration::from_secs(5), async {
            while read.load(Ordering::SeqCst) < 1000 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("drained to its end");

        let read = Arc::new(AtomicUsize::new(0));
        let mut body = Lingering(Some(Body::empty()));
        assert!(body.is_end_stream());
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.is_none());
        drop(body);
        tokio::task::yield_now().await;
        assert_eq!(read.load(Ordering::SeqCst), 0);
    }
}
