//! The API's one Server-Sent Events response: already-encoded events (`multiverse_common::sse`)
//! as they come, a `: keep-alive` comment after every [`KEEP_ALIVE`] without one, and headers
//! that keep caches and buffering reverse proxies out of the way. The response ends with the
//! stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

/// Idle time before a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An event-stream response of `events` (each a complete encoded event or comment).
pub fn response(events: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures::stream::unfold(
        (Box::pin(events), tick),
        |(mut events, mut tick)| async move {
            let chunk = tokio::select! {
                biased;
                event = events.next() => {
                    tick.reset();
                    Bytes::from(event?)
                }
                _ = tick.tick() => Bytes::from_static(multiverse_common::sse::KEEP_ALIVE),
            };
            Some((Ok::<_, Infallible>(chunk), (events, tick)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, multiverse_common::sse::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx-style reverse proxies not to buffer the stream.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn events_pass_through_and_idle_time_gets_keep_alives() {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
        let resp = response(tokio_stream::wrappers::ReceiverStream::new(rx));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        let mut body = resp.into_body().into_data_stream();
        tx.send("data: a\n\n".into()).await.unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"data: a\n\n");
        // Nothing for a while: a keep-alive comment, at the interval.
        let before = tokio::time::Instant::now();
        assert_eq!(
            &body.next().await.unwrap().unwrap()[..],
            b": keep-alive\n\n"
        );
        assert_eq!(before.elapsed(), KEEP_ALIVE);
        drop(tx);
        assert!(body.next().await.is_none(), "ends with the stream");
    }
}
