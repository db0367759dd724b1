//! API-key authentication of `/admin/*`: `Authorization: Bearer <key>` or `X-API-Key: <key>`,
//! compared in constant time against every configured key. Missing → 401, wrong → 403. Keys
//! are never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, ErrorCode};

/// The accepted keys.
pub struct Keys(Vec<Vec<u8>>);

impl Keys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(keys.into_iter().map(String::into_bytes).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Check every key so the time taken does not depend on which one matched.
        self.0.iter().fold(false, |hit, k| {
            hit | bool::from(k.as_slice().ct_eq(presented))
        })
    }
}

fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION)?.as_bytes();
    auth.strip_prefix(b"Bearer ")
        .or_else(|| auth.strip_prefix(b"bearer "))
}

/// The middleware.
pub async fn require_key(State(keys): State<Arc<Keys>>, req: Request, next: Next) -> Response {
    if keys.is_empty() {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "the admin API is disabled: configure [admin] api_keys or api_key_file",
        )
        .into_response();
    }
    match presented(req.headers()) {
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "an API key is required (Authorization: Bearer <key> or X-API-Key: <key>)",
        )
        .into_response(),
        Some(k) if !keys.accepts(k) => {
            { ApiError::new(ErrorCode::Forbidden, "the API key is not valid") }.into_response()
        }
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let k = Keys::new(vec!["key-one-1".into(), "key-two-2".into()]);
        assert!(k.accepts(b"key-two-2"));
        assert!(!k.accepts(b"key-two-"));
        assert!(!k.accepts(b""));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().expect("hv"));
        assert_eq!(presented(&h), Some(&b"abc"[..]));
        h.insert("x-api-key", "xyz".parse().expect("hv"));
        assert_eq!(presented(&h), Some(&b"xyz"[..]));
    }
}
