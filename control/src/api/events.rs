//! `GET /events`: instance and backend lifecycle events (`backend_*` types carry a `backend`
//! object `{id, name}` instead of `instance`) as server-sent events, one `seq` for both. The recent ones first
//! (`?since=N` keeps those with `seq > N`; the `Last-Event-ID` header of a reconnecting
//! `EventSource` does the same), then live ones. `?instance=NAME` and `?type=started,ready`
//! filter. Each event is `id: <seq>`, `event: <type>`, `data: <event JSON>`; a client that fell
//! behind gets a `: lagged …` comment and continues; `: keep-alive` comments every 15 s.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;

use super::{sse, ApiError, ApiState, ErrorCode};
use crate::events::{sse_stream, EventBus, EventFilter, EventKind, SseItem};

/// The events route.
pub fn router() -> Router<ApiState> {
    Router::new().route("/events", get(events))
}

/// Query of `GET /events`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay only recent events with `seq` greater than this.
    pub since: Option<u64>,
    /// Only this instance's events.
    pub instance: Option<String>,
    /// Comma-separated event types.
    #[serde(rename = "type")]
    pub types: Option<String>,
}

async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = super::query(query)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (since, filter) = parse_query(q, last_event_id)?;
    Ok(sse_response(&s.events, since, filter))
}

/// `since` (the query's, else `Last-Event-ID`'s) and the filter of a query.
pub fn parse_query(
    q: EventsQuery,
    last_event_id: Option<u64>,
) -> Result<(Option<u64>, EventFilter), ApiError> {
    let mut types = Vec::new();
    for t in q.types.iter().flat_map(|t| t.split(',')) {
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        if !EventKind::is_name(t) {
            return Err(ApiError::new(
                ErrorCode::ValidationError,
                format!(
                    "unknown event type `{t}` (one of {})",
                    EventKind::NAMES.join(", ")
                ),
            ));
        }
        types.push(t.to_string());
    }
    let instance = q.instance.filter(|i| !i.is_empty());
    Ok((q.since.or(last_event_id), EventFilter { instance, types }))
}

/// The SSE response for a bus (the handler minus the extractors).
pub fn sse_response(bus: &EventBus, since: Option<u64>, filter: EventFilter) -> Response {
    sse::response(sse_stream(bus, since, filter).map(to_sse))
}

/// One stream item on the wire.
pub fn to_sse(item: SseItem) -> String {
    use multiverse_common::sse::{comment, event};
    match item {
        SseItem::Event(e) => match serde_json::to_string(&e) {
            Ok(json) => event(Some(&e.seq.to_string()), Some(e.kind.name()), &json),
            Err(err) => comment(&format!("event {} not serializable: {err}", e.seq)),
        },
        SseItem::Lagged(n) => comment(&format!("lagged: {n} events skipped")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::Stream;

    use super::*;
    use crate::events::EventKind;

    async fn next_chunk(
        body: &mut (impl Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    ) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a chunk within 5 s")
            .expect("stream open")
            .expect("no error");
        String::from_utf8(chunk.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn wire_format_replay_then_live_filtered() {
        let bus = EventBus::new();
        bus.emit("a", EventKind::Created);
        bus.emit("b", EventKind::Created);
        bus.emit(
            "a",
            EventKind::Started {
                pid: 42,
                port: 8081,
            },
        );
        let filter = EventFilter {
            instance: Some("a".into()),
            types: vec![],
        };
        let resp = sse_response(&bus, Some(1), filter);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut body = resp.into_body().into_data_stream();
        let first = next_chunk(&mut body).await;
        assert!(
            first.starts_with("id: 3\nevent: started\ndata: {"),
            "{first}"
        );
        assert!(first.ends_with("}\n\n"), "{first}");
        let data: serde_json::Value = serde_json::from_str(
            first
                .lines()
                .nth(2)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["type"], "started");
        assert_eq!(data["pid"], 42);
        assert_eq!(data["port"], 8081);
        assert_eq!(data["instance"], "a");
        assert_eq!(data["seq"], 3);

        bus.emit("b", EventKind::Ready);
        bus.emit(
            "a",
            EventKind::Failed {
                error: "boom".into(),
            },
        );
        let live = next_chunk(&mut body).await;
        assert!(live.starts_with("id: 5\nevent: failed\ndata: {"), "{live}");
        assert!(live.contains(r#""error":"boom""#), "{live}");

        bus.close();
        let end = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("ends after close");
        assert!(end.is_none());
    }

    #[test]
    fn lagged_is_a_comment() {
        assert_eq!(to_sse(SseItem::Lagged(7)), ": lagged: 7 events skipped\n\n");
    }

    #[test]
    fn query_parsing() {
        let q = EventsQuery {
            since: None,
            instance: Some("x".into()),
            types: Some("started, ready".into()),
        };
        let (since, f) = parse_query(q, Some(9)).unwrap();
        assert_eq!(since, Some(9));
        assert_eq!(f.instance.as_deref(), Some("x"));
        assert_eq!(f.types, vec!["started", "ready"]);

        let q = EventsQuery {
            since: Some(3),
            ..Default::default()
        };
        assert_eq!(parse_query(q, Some(9)).unwrap().0, Some(3));

        let q = EventsQuery {
            types: Some("started,bogus".into()),
            ..Default::default()
        };
        let e = parse_query(q, None).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("bogus"));
    }
}
