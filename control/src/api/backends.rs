//! `/admin/backends`: register (or only test the connection), list, show, update, deregister, check and restore external
//! OpenAI-compatible backends (the rules are in [`crate::backends::admission`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{body, ApiError, ApiState};
use crate::backends::admission::{BackendRequest, Tested};
use crate::backends::registry::{BackendView, RegistryError};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/admin/backends", get(list).post(register))
        .route("/admin/backends/test", post(test))
        .route(
            "/admin/backends/{id}",
            get(show).put(update).delete(deregister),
        )
        .route("/admin/backends/{id}/check", post(check))
        .route("/admin/backends/{id}/restore", post(restore))
}

fn not_found(id: &str) -> ApiError {
    RegistryError::NotFound(id.to_string()).into()
}

async fn list(State(s): State<ApiState>) -> Json<Value> {
    Json(json!({"backends": s.registry.list()}))
}

async fn show(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BackendView>, ApiError> {
    s.registry.get(&id).map(Json).ok_or_else(|| not_found(&id))
}

async fn register(
    State(s): State<ApiState>,
    payload: Result<Json<BackendRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BackendView>), ApiError> {
    let view = s.admission.register(body(payload)?).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// "Test connection": registration's checks and probe, nothing stored.
async fn test(
    State(s): State<ApiState>,
    payload: Result<Json<BackendRequest>, JsonRejection>,
) -> Result<Json<Tested>, ApiError> {
    Ok(Json(s.admission.test(body(payload)?).await?))
}

async fn update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    payload: Result<Json<BackendRequest>, JsonRejection>,
) -> Result<Json<BackendView>, ApiError> {
    let req = body(payload)?;
    Ok(Json(s.admission.update(&id, req).await?))
}

async fn deregister(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.registry.remove(&id).await?;
    tracing::info!(id = %id, "backend deregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn check(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (result, health) = s
        .checker
        .check_now(&id)
        .await
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({"result": result, "health": health})))
}

async fn restore(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BackendView>, ApiError> {
    Ok(Json(s.registry.restore(&id).await?))
}
