//! `GET /instances/{name}/logs`: without `follow`, JSON `{"instance", "start", "end", "total",
//! "lines"}` (Python slice indices `start`/`end`, resolved; or `tail=N`, the last N lines); with
//! `follow=true`, SSE (`data: <line>` per line from `history[start:]` — or the last `tail` lines
//! — on, then every new line, until the instance is deleted or the control plane stops).
//!
//! 400 `INVALID_LOG_QUERY`: `end` with `follow=true`, `tail` with `start` or `end`, and any query
//! parameter other than these four (all of them named). A history that cannot be read is a 500
//! `LOG_READ_FAILED`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::{query, sse, ApiError, ApiState, ErrorCode};
use crate::instances::logs::{LogError, LogSink};

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        ApiError::new(ErrorCode::LogReadFailed, e.to_string())
    }
}

/// The query: `start`, `end` (Python slice indices; empty means absent), `tail` (the last N
/// lines, N ≥ 0) and `follow` (`true`/`false`/`1`/`0`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogQuery {
    #[serde(default, deserialize_with = "opt_i64")]
    pub start: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end: Option<i64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub tail: Option<u64>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub follow: Option<bool>,
}

/// The query parameters [`LogQuery`] reads; any other is refused.
pub const LOG_PARAMS: [&str; 4] = ["start", "end", "tail", "follow"];

impl LogQuery {
    /// The start index the query means: `start`, or for `tail=N` `-N` (`tail=0`: past the
    /// end, so no line of the history). `tail` with `start` or `end` is an error.
    pub fn resolved_start(&self) -> Result<Option<i64>, ApiError> {
        match self.tail {
            None => Ok(self.start),
            Some(_) if self.start.is_some() || self.end.is_some() => Err(ApiError::new(
                ErrorCode::InvalidLogQuery,
                "tail cannot be combined with start or end",
            )),
            Some(0) => Ok(Some(i64::MAX)),
            Some(n) => Ok(Some(-(n.min(i64::MAX as u64) as i64))),
        }
    }
}

/// A 400 `INVALID_LOG_QUERY` naming every parameter of `pairs` that is not in [`LOG_PARAMS`].
pub fn only_known_params(pairs: &[(String, String)]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = Vec::new();
    for (k, _) in pairs {
        if !LOG_PARAMS.contains(&k.as_str()) && !unknown.contains(&k.as_str()) {
            unknown.push(k);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = unknown.iter().map(|k| format!("`{k}`")).collect();
    Err(ApiError::new(
        ErrorCode::InvalidLogQuery,
        format!(
            "unknown query parameter{} {} (known: {})",
            if unknown.len() == 1 { "" } else { "s" },
            named.join(", "),
            LOG_PARAMS.join(", ")
        ),
    ))
}

fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    opt_str(d)?
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| serde::de::Error::custom(format!("not an integer: {s:?}")))
        })
        .transpose()
}

fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    opt_str(d)?
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| serde::de::Error::custom(format!("not a non-negative integer: {s:?}")))
        })
        .transpose()
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    opt_str(d)?
        .map(|s| match s.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("not a boolean: {s:?}"))),
        })
        .transpose()
}

/// The handler.
pub async fn log(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sink = s.instances.log(&name)?;
    only_known_params(&query(pairs)?)?;
    respond(sink, query(q)?).await
}

/// Answers for one sink (the handler minus the extractors).
pub async fn respond(sink: Arc<LogSink>, q: LogQuery) -> Result<Response, ApiError> {
    let start = q.resolved_start()?;
    if q.follow.unwrap_or(false) {
        if q.end.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidLogQuery,
                "end cannot be combined with follow=true",
            ));
        }
        let lines = sink.tail(start).await?;
        return Ok(sse::response(
            lines.map(|line| multiverse_common::sse::data_line(&line)),
        ));
    }
    let slice = sink.slice(start, q.end).await?;
    Ok(Json(json!({
        "instance": sink.instance(),
        "start": slice.start,
        "end": slice.end,
        "total": slice.total,
        "lines": slice.lines,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use axum::http::{header, StatusCode};

    use super::*;
    use crate::instances::logs::test_util::TempDir;
    use crate::instances::logs::Stream;

    async fn respond(sink: Arc<LogSink>, q: LogQuery) -> Response {
        super::respond(sink, q)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    }

    async fn body_string(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn query(q: &str) -> LogQuery {
        let uri: axum::http::Uri = format!("/logs?{q}").parse().unwrap();
        axum::extract::Query::<LogQuery>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn query_parsing() {
        let q = query("start=-10&end=5&follow=true");
        assert_eq!((q.start, q.end, q.follow), (Some(-10), Some(5), Some(true)));
        let q = query("start=&end=&follow=");
        assert_eq!((q.start, q.end, q.follow), (None, None, None));
        let q = query("follow=0");
        assert_eq!((q.start, q.end, q.follow), (None, None, Some(false)));
        let uri: axum::http::Uri = "/logs?start=abc".parse().unwrap();
        assert!(axum::extract::Query::<LogQuery>::try_from_uri(&uri).is_err());
        let q = query("tail=7");
        assert_eq!(q.resolved_start().unwrap(), Some(-7));
        assert_eq!(query("tail=0").resolved_start().unwrap(), Some(i64::MAX));
        assert_eq!(query("start=-2").resolved_start().unwrap(), Some(-2));
        for bad in ["tail=1&start=0", "tail=1&end=2"] {
            let e = query(bad).resolved_start().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidLogQuery, "{bad}");
        }
        let uri: axum::http::Uri = "/logs?tail=-1".parse().unwrap();
        assert!(axum::extract::Query::<LogQuery>::try_from_uri(&uri).is_err());
    }

    #[test]
    fn unknown_parameters_are_all_named() {
        let pairs = |q: &str| {
            let uri: axum::http::Uri = format!("/logs?{q}").parse().unwrap();
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
                .unwrap()
                .0
        };
        assert!(only_known_params(&pairs("start=1&end=2&tail=3&follow=0")).is_ok());
        let e = only_known_params(&pairs("lines=3&start=1&since=x")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidLogQuery);
        assert!(
            e.message.contains("`lines`") && e.message.contains("`since`"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("`start`"), "{}", e.message);
    }

    #[tokio::test]
    async fn respond_with_json_slices() {
        let dir = TempDir::new("json");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..5 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let resp = respond(sink.clone(), query("start=-2")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(
            v,
            json!({"instance": "tei-a", "start": 3, "end": 5, "total": 5,
                   "lines": ["line 3", "line 4"]})
        );
        let resp = respond(sink.clone(), query("tail=2")).await;
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(v["lines"], json!(["line 3", "line 4"]));
        assert_eq!((v["start"].clone(), v["end"].clone()), (json!(3), json!(5)));
        let resp = respond(sink.clone(), query("tail=0")).await;
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(v["lines"], json!([]));
        let resp = respond(sink.clone(), query("tail=99")).await;
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(v["total"], 5);
        assert_eq!(v["lines"].as_array().map(Vec::len), Some(5));
        let resp = respond(sink.clone(), query("start=3&end=1")).await;
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(v["lines"], json!([]));
        assert_eq!((v["start"].clone(), v["end"].clone()), (json!(3), json!(3)));
    }

    #[tokio::test]
    async fn respond_reports_read_errors_and_bad_follow_queries() {
        let dir = TempDir::new("errors");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        let resp = respond(sink.clone(), query("follow=true&end=3")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(body_string(resp).await.contains("INVALID_LOG_QUERY"));
        // The log replaced by a directory: unreadable.
        fs::remove_file(sink.path()).unwrap();
        fs::create_dir(sink.path()).unwrap();
        for q in ["", "follow=true"] {
            let resp = respond(sink.clone(), query(q)).await;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{q}");
            let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
            assert_eq!(v["code"], "LOG_READ_FAILED");
        }
        assert!(sink.read(None, None).is_err());
    }

    async fn sse_until(body: &mut axum::body::BodyDataStream, read: &mut String, want: &str) {
        while !read.contains(want) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("data in time")
                .expect("stream open")
                .unwrap();
            read.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    #[tokio::test]
    async fn respond_streams_sse_when_following() {
        let dir = TempDir::new("sse");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..5 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let resp = respond(sink.clone(), query("follow=true&start=-2")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body().into_data_stream();
        let mut read = String::new();
        sse_until(&mut body, &mut read, "line 4").await;
        assert_eq!(read, "data: line 3\n\ndata: line 4\n\n");
        sink.write_line(Stream::Stdout, "new\r");
        sink.write_line(Stream::Stdout, "");
        sink.note("bye");
        sse_until(&mut body, &mut read, "bye").await;
        assert_eq!(
            read,
            "data: line 3\n\ndata: line 4\n\ndata: new\n\ndata: \n\ndata: [multiverse] bye\n\n"
        );
        sink.close();
        let end = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap();
        assert!(end.is_none(), "the response ends when the sink is closed");
    }
}
