//! `/admin/models/{name}/policy`: a model's routing policy set through the API (the rules and
//! the layering are in [`crate::models`]). PUT replaces the API layer, DELETE removes it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::{body, ApiError, ApiState};
use crate::models::{PolicyError, PolicySpec, PolicyView};

pub fn router() -> Router<ApiState> {
    Router::new().route(
        "/admin/models/{name}/policy",
        get(show).put(update).delete(remove),
    )
}

async fn show(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    s.policies
        .get(&name)
        .map(Json)
        .ok_or_else(|| PolicyError::NotFound(name).into())
}

async fn update(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    payload: Result<Json<PolicySpec>, JsonRejection>,
) -> Result<Json<PolicyView>, ApiError> {
    let spec = body(payload)?;
    Ok(Json(s.policies.put(&name, spec).await?))
}

async fn remove(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.policies.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
