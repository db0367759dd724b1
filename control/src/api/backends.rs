//! `/admin/backends`: register (or only test the connection), list, show, update, deregister, check and restore external
//! OpenAI-compatible backends (the rules are in [`crate::backends::admission`]).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, listing, query, ApiError, ApiState};
use crate::backends::admission::{BackendRequest, Tested};
use crate::backends::query::{BackendQuery, BackendSort};
use crate::backends::registry::{BackendView, RegistryError};
use crate::health::Status;

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

/// Query of `GET /admin/backends`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    model: Option<String>,
    health: Option<String>,
    owner: Option<String>,
    tag: Option<String>,
    deregistered: Option<String>,
    sort: Option<String>,
    order: Option<String>,
}

impl ListQuery {
    fn parse(self) -> Result<BackendQuery, ApiError> {
        let health = [
            ("healthy", Status::Healthy),
            ("unhealthy", Status::Unhealthy),
            ("unknown", Status::Unknown),
        ];
        Ok(BackendQuery {
            model: listing::text(self.model),
            health: listing::choice("health", self.health.as_deref(), &health)?,
            owner: listing::text(self.owner),
            tag: listing::text(self.tag),
            deregistered: listing::choice(
                "deregistered",
                self.deregistered.as_deref(),
                &[("true", true), ("false", false)],
            )?,
            sort: listing::choice("sort", self.sort.as_deref(), BackendSort::NAMES)?
                .unwrap_or_default(),
            descending: listing::descending(self.order.as_deref())?,
        })
    }
}

async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?.parse()?;
    Ok(Json(json!({"backends": q.apply(s.registry.list())})))
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
