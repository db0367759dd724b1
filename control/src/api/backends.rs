//! `/admin/backends`: register, list, show, update, deregister, check and restore external
//! OpenAI-compatible backends.
//!
//! Registration validates the fields, refuses non-public addresses unless allowed (resolving
//! the host once and pinning the address), runs the initial health check (which also discovers
//! the models when none are given) and only then stores the backend.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use multiverse_common::time::now_rfc3339;
use multiverse_common::ModelKind;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, ApiError, ApiState};
use crate::backends::probe::{self, CheckResult};
use crate::backends::registry::{new_id, BackendView, RegistryError};
use crate::backends::{parse_url, ssrf, BackendSpec};
use crate::store::BackendRecord;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/admin/backends", get(list).post(register))
        .route(
            "/admin/backends/{id}",
            get(show).put(update).delete(deregister),
        )
        .route("/admin/backends/{id}/check", post(check))
        .route("/admin/backends/{id}/restore", post(restore))
}

/// The body of `POST` and `PUT /admin/backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    pub name: String,
    pub url: String,
    /// Discovered from the backend's `/v1/models` when omitted.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Upstream key. On update: omitted keeps the stored one, "" removes it.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub kind: Option<String>,
}

fn registry_error(e: RegistryError) -> ApiError {
    let (status, code) = match &e {
        RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "BACKEND_NOT_FOUND"),
        RegistryError::Exists(_) => (StatusCode::CONFLICT, "BACKEND_EXISTS"),
        RegistryError::MaxReached(_) => (StatusCode::UNPROCESSABLE_ENTITY, "MAX_BACKENDS_REACHED"),
        RegistryError::ConfigOwned(_) => (StatusCode::CONFLICT, "CONFIG_BACKEND"),
        RegistryError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "STATE_WRITE_FAILED"),
    };
    if let RegistryError::State(err) = &e {
        tracing::error!(error = %err, "could not save the state; the change was not applied");
    }
    ApiError::new(status, code, e.to_string())
}

fn not_found(id: &str) -> ApiError {
    registry_error(RegistryError::NotFound(id.to_string()))
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
    let req = body(payload)?;
    let now = now_rfc3339();
    let (record, check) = admit(&s, req, None, new_id(), now.clone(), now).await?;
    let view = s
        .registry
        .insert(record, check, &s.health)
        .await
        .map_err(registry_error)?;
    tracing::info!(backend = %view.name, id = %view.id, models = ?view.models, "backend registered");
    Ok((StatusCode::CREATED, Json(view)))
}

async fn update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    payload: Result<Json<BackendRequest>, JsonRejection>,
) -> Result<Json<BackendView>, ApiError> {
    let req = body(payload)?;
    let old = s.registry.record(&id).ok_or_else(|| not_found(&id))?;
    let (record, check) = admit(
        &s,
        req,
        Some(&old),
        id,
        old.created_at.clone(),
        now_rfc3339(),
    )
    .await?;
    let view = s
        .registry
        .update(record, check, &s.health)
        .await
        .map_err(registry_error)?;
    tracing::info!(backend = %view.name, id = %view.id, "backend updated");
    Ok(Json(view))
}

async fn deregister(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.registry.remove(&id).await.map_err(registry_error)?;
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
    s.registry
        .restore(&id)
        .await
        .map(Json)
        .map_err(registry_error)
}

fn validation(field: &str, message: String) -> ApiError {
    let code = if field == "url" {
        "INVALID_URL"
    } else {
        "VALIDATION_ERROR"
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        code,
        format!("`{field}`: {message}"),
    )
}

/// Validates a request, checks the address and the backend itself, and builds the record.
async fn admit(
    s: &ApiState,
    req: BackendRequest,
    old: Option<&BackendRecord>,
    id: String,
    created_at: String,
    updated_at: String,
) -> Result<(BackendRecord, CheckResult), ApiError> {
    let api_key = match (&req.api_key, old) {
        (Some(k), _) if k.is_empty() => None,
        (Some(k), _) => Some(k.clone()),
        (None, Some(old)) => old.api_key.clone(),
        (None, None) => None,
    };
    let mut spec = BackendSpec {
        name: req.name,
        url: req.url,
        // Validated below once known.
        models: req.models.clone().unwrap_or_else(|| vec!["-".into()]),
        weight: req.weight.unwrap_or(1),
        api_key,
        kind: req.kind,
    };
    spec.validate()
        .map_err(|e| validation(e.field, e.message))?;
    validate_tags(&req.tags)?;
    if req.owner.len() > 256 {
        return Err(validation("owner", "must be at most 256 characters".into()));
    }
    let target = parse_url(&spec.url).map_err(|m| validation("url", m))?;

    // Refuse non-public addresses unless allowed; pin the address that was checked.
    let mut pinned_address = None;
    if !s.allow_private_backends {
        let addr = ssrf::check_public(&target.hostname, target.port, s.clients.resolver())
            .await
            .map_err(|m| {
                ApiError::new(StatusCode::BAD_REQUEST, "PRIVATE_ADDRESS_NOT_ALLOWED", m)
            })?;
        pinned_address = Some(addr.to_string());
    }
    let http = s
        .clients
        .for_backend(&spec.url, pinned_address.as_deref())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e))?;

    let (check, discovered) = probe::check(
        &http,
        &spec.url,
        spec.api_key.as_deref(),
        Duration::from_millis(s.health.timeout_ms),
    )
    .await;
    if !check.ok {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKEND_UNAVAILABLE",
            format!(
                "the initial health check of {} failed: {}",
                spec.url,
                check.reason.as_deref().unwrap_or("unknown error")
            ),
        ));
    }
    spec.models = match req.models {
        Some(m) => m,
        None => discovered.unwrap_or_default(),
    };
    if spec.models.is_empty() {
        return Err(validation(
            "models",
            "the backend lists no models; name them in `models`".into(),
        ));
    }
    spec.validate()
        .map_err(|e| validation(e.field, e.message))?;
    let record = BackendRecord {
        id,
        name: spec.name,
        url: spec.url,
        models: spec.models,
        kind: spec.kind.unwrap_or_else(|| ModelKind::Chat.to_string()),
        weight: spec.weight,
        owner: req.owner,
        tags: req.tags,
        api_key: spec.api_key,
        pinned_address,
        created_at,
        updated_at,
        deregistered: false,
    };
    Ok((record, check))
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in tags {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            return Err(validation(
                "tags",
                format!("key `{k}` must be 1-63 letters, digits, '-', '_', '.' or '/'"),
            ));
        }
        if v.len() > 256 {
            return Err(validation(
                "tags",
                format!("value of `{k}` is over 256 characters"),
            ));
        }
    }
    Ok(())
}
