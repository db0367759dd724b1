//! `/admin/keys`: issue, list, show, update, revoke and rotate inference API keys (the rules
//! are in [`crate::keys`]). A secret appears only in the answers to create and rotate.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{body, ApiError, ApiState};
use crate::keys::{Issued, KeyError, KeyRequest, KeyView};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{id}", get(show).put(update).delete(revoke))
        .route("/admin/keys/{id}/rotate", post(rotate))
}

async fn list(State(s): State<ApiState>) -> Json<Value> {
    Json(json!({
        "mode": s.inference_keys.mode(),
        "keys": s.inference_keys.list(),
    }))
}

async fn show(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    s.inference_keys
        .get(&id)
        .map(Json)
        .ok_or_else(|| KeyError::NotFound(id).into())
}

/// A response with a secret in it: never cached.
fn secret(status: StatusCode, issued: Issued) -> Response {
    let mut resp = (status, Json(issued)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn create(
    State(s): State<ApiState>,
    payload: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let issued = s.inference_keys.create(body(payload)?).await?;
    Ok(secret(StatusCode::CREATED, issued))
}

async fn update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    payload: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let req = body(payload)?;
    Ok(Json(s.inference_keys.update(&id, req).await?))
}

async fn revoke(State(s): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.inference_keys.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let issued = s.inference_keys.rotate(&id).await?;
    Ok(secret(StatusCode::OK, issued))
}
