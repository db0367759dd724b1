//! Completion bodies of `mock-openai`: the non-streamed `chat.completion` / `text_completion`
//! objects and the SSE streams (`chat.completion.chunk` / `text_completion` chunks, one body
//! frame per event, paced by `--chunk-interval-ms`, ending with `data: [DONE]`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use super::common::StreamGuard;

/// What one completion answers.
#[derive(Debug, Clone)]
pub(crate) struct StreamPlan {
    /// Chat completion (else text completion).
    pub chat: bool,
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name echoed back.
    pub model: String,
    /// Tokens to generate.
    pub completion_tokens: u64,
    /// Tokens counted in the prompt.
    pub prompt_tokens: u64,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Token `k` of every answer, with its trailing space.
fn token(k: u64) -> String {
    format!("tok{k} ")
}

impl StreamPlan {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn object(&self) -> &'static str {
        if self.chat {
            "chat.completion"
        } else {
            "text_completion"
        }
    }

    fn chunk_object(&self) -> &'static str {
        if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        }
    }

    /// One streamed chunk carrying `choices`.
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    }

    /// The choice of one streamed chunk: a chat `delta` or a completion `text`.
    fn choice(&self, content: Option<String>, role: bool, finish: Option<&str>) -> Value {
        if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(content) = content {
                delta.insert("content".into(), json!(content));
            }
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
        } else {
            json!([{
                "index": 0,
                "text": content.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish,
            }])
        }
    }

    /// Every SSE event of the stream, framed (`data: …\n\n`), `[DONE]` last.
    fn events(&self) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(self.completion_tokens as usize + 4);
        if self.chat {
            chunks.push(self.chunk(self.choice(Some(String::new()), true, None), None));
        }
        for k in 0..self.completion_tokens {
            chunks.push(self.chunk(self.choice(Some(token(k)), false, None), None));
        }
        let last_content = if self.chat { None } else { Some(String::new()) };
        chunks.push(self.chunk(self.choice(last_content, false, Some("stop")), None));
        if self.include_usage {
            chunks.push(self.chunk(json!([]), Some(self.usage())));
        }
        let mut events: Vec<Bytes> = chunks
            .into_iter()
            .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
            .collect();
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

/// The whole answer as one `chat.completion` / `text_completion` object.
pub(crate) fn full_response(plan: &StreamPlan) -> Value {
    let content: String = (0..plan.completion_tokens).map(token).collect();
    let choice = if plan.chat {
        json!({
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop",
        })
    } else {
        json!({"index": 0, "text": content, "logprobs": null, "finish_reason": "stop"})
    };
    json!({
        "id": plan.id,
        "object": plan.object(),
        "created": plan.created,
        "model": plan.model,
        "choices": [choice],
        "usage": plan.usage(),
    })
}

struct Pacing {
    events: std::vec::IntoIter<Bytes>,
    first: bool,
    interval: Duration,
    guard: Option<StreamGuard>,
    /// Events left before the body fails (`--die-after-chunks`).
    die_in: Option<usize>,
}

/// The error a dying body fails with: hyper then closes the connection without the body's end.
fn died() -> std::io::Error {
    std::io::Error::other("mock-openai --die-after-chunks: the backend died mid-response")
}

/// A non-streamed answer that dies half-way (`--die-after-chunks`): the first half of `body`,
/// then, `interval` later (at least 10 ms, so the half is written first), the connection
/// closes without the rest.
pub(crate) fn dying_response(body: Bytes, interval: Duration) -> Response {
    let half = body.slice(..body.len() / 2);
    let pause = interval.max(Duration::from_millis(10));
    let stream = futures::stream::unfold(Some(half), move |next| async move {
        match next {
            Some(half) => Some((Ok(half), None)),
            None => {
                tokio::time::sleep(pause).await;
                Some((Err(died()), None))
            }
        }
    })
    .take(2);
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `text/event-stream` response writing each event as its own body frame, `interval` apart.
///
/// `guard` keeps the stream counted as active until the last event is handed to the connection
/// (then it counts as completed) or the client goes away (the body is dropped).
///
/// `die_after`: after that many events the body fails instead (the connection is closed
/// abruptly, no terminating chunk, no `[DONE]`).
pub(crate) fn sse_response(
    plan: &StreamPlan,
    interval: Duration,
    guard: StreamGuard,
    die_after: Option<usize>,
) -> Response {
    let state = Pacing {
        events: plan.events().into_iter(),
        first: true,
        interval,
        guard: Some(guard),
        die_in: die_after,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        if state.die_in == Some(0) {
            // Fail once, then end (the connection is gone anyway).
            state.events = Vec::new().into_iter();
            state.die_in = None;
            tokio::time::sleep(state.interval).await;
            return Some((Err(died()), state));
        }
        let event = state.events.next()?;
        if !state.first && !state.interval.is_zero() {
            tokio::time::sleep(state.interval).await;
        }
        state.first = false;
        state.die_in = state.die_in.map(|n| n - 1);
        if state.events.len() == 0 {
            if let Some(guard) = state.guard.take() {
                guard.finish();
            }
        }
        Some((Ok::<Bytes, std::io::Error>(event), state))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chat: bool, include_usage: bool) -> StreamPlan {
        StreamPlan {
            chat,
            id: "chatcmpl-x".into(),
            created: 1,
            model: "demo".into(),
            completion_tokens: 3,
            prompt_tokens: 2,
            include_usage,
        }
    }

    fn parse(events: &[Bytes]) -> Vec<Value> {
        events[..events.len() - 1]
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).expect("utf8");
                let json = text
                    .strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .expect("framed");
                serde_json::from_str(json).expect("json")
            })
            .collect()
    }

    #[test]
    fn chat_events_concatenate_to_the_full_answer() {
        let p = plan(true, true);
        let events = p.events();
        assert_eq!(
            events.last().map(|b| &b[..]),
            Some(&b"data: [DONE]\n\n"[..])
        );
        let chunks = parse(&events);
        // role chunk, 3 tokens, finish chunk, usage chunk
        assert_eq!(chunks.len(), 6);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, full_response(&p)["choices"][0]["message"]["content"]);
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[5]["choices"], json!([]));
        assert_eq!(chunks[5]["usage"]["total_tokens"], 5);
    }

    #[test]
    fn completion_events_have_text_completion_shape() {
        let p = plan(false, false);
        let chunks = parse(&p.events());
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(chunks[1]["choices"][0]["text"], "tok1 ");
        assert_eq!(full_response(&p)["choices"][0]["text"], "tok0 tok1 tok2 ");
    }
}
