//! Request side of `mock-openai`: OpenAI-shaped errors ([`ApiError`]), validation of chat and
//! text completion requests ([`Generation`]) and the embeddings answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::deterministic::{embedding, embedding_base64};

/// An error in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.message`.
    pub message: String,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"message": self.message, "type": self.kind, "code": self.code}
        });
        (self.status, Json(body)).into_response()
    }
}

#[derive(Debug, Clone, Copy)]
/// The model routes.
pub(crate) enum Kind {
    Chat,
    Completion,
    Embeddings,
}

/// The `/v1/embeddings` answer (vectors of `default_dims` unless `dimensions` is given).
pub(crate) fn embeddings(
    obj: &Map<String, Value>,
    model: &str,
    default_dims: usize,
) -> Result<Value, ApiError> {
    let inputs = match obj.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(input_text)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid("'input' must be a string, an array of strings or tokens")
            })?,
        Some(Value::Array(_)) => return Err(ApiError::invalid("'input' must not be empty")),
        None | Some(Value::Null) => return Err(ApiError::invalid("'input' is required")),
        Some(_) => return Err(ApiError::invalid("'input' must be a string or an array")),
    };
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "'encoding_format' must be \"float\" or \"base64\"",
            ))
        }
    };
    let dims = match obj.get("dimensions") {
        None | Some(Value::Null) => default_dims,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=65_536).contains(d))
            .map(|d| d as usize)
            .ok_or_else(|| ApiError::invalid("'dimensions' must be an integer >= 1"))?,
    };
    let mut tokens = 0usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += count_words(text);
            let vector = embedding(text, dims, true);
            let embedding = if base64 {
                Value::String(embedding_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// The parts of a chat or text completion request the mock looks at.
#[derive(Debug)]
pub(crate) struct Generation {
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Whitespace words in the prompt or messages.
    pub prompt_tokens: u64,
}

impl Generation {
    /// Validates a chat (`kind` Chat) or text completion request.
    pub(crate) fn parse(kind: Kind, obj: &Map<String, Value>) -> Result<Self, ApiError> {
        let prompt_tokens = match kind {
            Kind::Chat => {
                let messages = match obj.get("messages") {
                    Some(Value::Array(messages)) if !messages.is_empty() => messages,
                    Some(Value::Array(_)) => {
                        return Err(ApiError::invalid("'messages' must not be empty"))
                    }
                    _ => return Err(ApiError::invalid("'messages' is a required array")),
                };
                messages
                    .iter()
                    .map(|m| m.get("content").map_or(0, content_words))
                    .sum::<usize>()
            }
            _ => match obj.get("prompt") {
                Some(prompt) => content_words(prompt),
                None => return Err(ApiError::invalid("'prompt' is required")),
            },
        };
        let stream = opt_bool(obj, "stream")?.unwrap_or(false);
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => opt_bool(options, "include_usage")?.unwrap_or(false),
            Some(_) => return Err(ApiError::invalid("'stream_options' must be an object")),
        };
        let max_tokens = match opt_u64(obj, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => opt_u64(obj, "max_tokens")?,
        };
        Ok(Self {
            stream,
            include_usage,
            max_tokens,
            prompt_tokens: prompt_tokens as u64,
        })
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("'{key}' must be a boolean"))),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("'{key}' must be a non-negative integer"))),
    }
}

/// One embeddings input as text: a string, or a token array rendered as space-separated ids.
fn input_text(item: &Value) -> Option<String> {
    match item {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(ids) => ids
            .iter()
            .map(|id| id.as_u64().map(|id| id.to_string()))
            .collect::<Option<Vec<_>>>()
            .map(|ids| ids.join(" ")),
        _ => None,
    }
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Whitespace words in a message content or prompt (string, array of strings or parts).
fn content_words(content: &Value) -> usize {
    match content {
        Value::String(s) => count_words(s),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::Object(o) => o.get("text").and_then(Value::as_str).map_or(0, count_words),
                Value::Number(_) => 1,
                other => content_words(other),
            })
            .sum(),
        _ => 0,
    }
}
