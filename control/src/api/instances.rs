//! `/instances`: create (directly or from a template), list (filter by tag and status), show,
//! delete, start/stop/restart one or many TEI instances (their logs: [`super::logs`]), and the
//! templates.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{body, listing, query, ApiError, ApiState, ErrorCode};
use crate::instances::query::{InstanceQuery, InstanceSort, STATUSES};
use crate::instances::spec::InstanceSpec;
use crate::instances::{InstanceView, Manager};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/instances", get(list).post(create))
        .route("/instances/{name}", get(show).delete(delete))
        .route("/instances/{name}/logs", get(super::logs::log))
        .route("/instances/{name}/{action}", post(act))
        .route("/instances/bulk/{action}", post(bulk))
        .route("/instances/from-template/{template}", post(from_template))
        .route("/templates", get(templates))
}

async fn create(
    State(s): State<ApiState>,
    payload: Result<Json<InstanceSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<InstanceView>), ApiError> {
    let spec = body(payload)?;
    let spec = match spec.template.clone() {
        Some(t) => spec.with_template(s.instances.template(&t)?),
        None => spec,
    };
    let view = s.instances.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `POST /instances/from-template/{template}`: the body gives the name and any overrides.
async fn from_template(
    State(s): State<ApiState>,
    Path(template): Path<String>,
    payload: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<InstanceView>), ApiError> {
    let mut v = body(payload)?;
    let t = s.instances.template(&template)?.clone();
    if let Value::Object(m) = &mut v {
        m.entry("model_id")
            .or_insert_with(|| Value::String(String::new()));
    }
    let mut spec: InstanceSpec = serde_json::from_value(v)
        .map_err(|e| ApiError::new(ErrorCode::ValidationError, e.to_string()))?;
    spec.template = Some(template);
    let view = s.instances.create(spec.with_template(&t)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Query of `GET /instances`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    tag: Option<String>,
    status: Option<String>,
    model: Option<String>,
    gpu: Option<String>,
    sort: Option<String>,
    order: Option<String>,
}

async fn list(
    State(s): State<ApiState>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let f = query(filter)?;
    let statuses: Vec<(&str, &str)> = STATUSES.iter().map(|s| (s.name(), s.name())).collect();
    let status = listing::choice("status", f.status.as_deref(), &statuses)?;
    let gpu = match listing::text(f.gpu) {
        None => None,
        Some(g) => Some(g.parse::<u32>().map_err(|_| {
            ApiError::new(
                ErrorCode::ValidationError,
                format!("`gpu`: `{g}` is not a GPU index"),
            )
        })?),
    };
    let q = InstanceQuery {
        model: listing::text(f.model),
        gpu,
        sort: listing::choice("sort", f.sort.as_deref(), InstanceSort::NAMES)?.unwrap_or_default(),
        descending: listing::descending(f.order.as_deref())?,
    };
    let tag = listing::text(f.tag);
    let instances = q.apply(s.instances.list(tag.as_deref(), status).await);
    Ok(Json(json!({"instances": instances})))
}

async fn show(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<InstanceView>, ApiError> {
    Ok(Json(s.instances.get(&name).await?))
}

async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.instances.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_action(
    m: &Manager,
    name: &str,
    action: &str,
) -> Result<Option<InstanceView>, ApiError> {
    Ok(match action {
        "start" => Some(m.start(name).await?),
        "stop" => Some(m.stop(name).await?),
        "restart" => Some(m.restart(name).await?),
        "delete" => {
            m.delete(name).await?;
            None
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no action `{other}` (start, stop, restart)"),
            ))
        }
    })
}

async fn act(
    State(s): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Option<InstanceView>>, ApiError> {
    if action == "delete" {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "use DELETE /instances/{name}",
        ));
    }
    Ok(Json(run_action(&s.instances, &name, &action).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    names: Vec<String>,
}

#[derive(Serialize)]
struct BulkFailure {
    name: String,
    error: String,
    code: ErrorCode,
}

async fn bulk(
    State(s): State<ApiState>,
    Path(action): Path<String>,
    payload: Result<Json<BulkRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    if !matches!(action.as_str(), "start" | "stop" | "restart" | "delete") {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no bulk action `{action}` (start, stop, restart, delete)"),
        ));
    }
    let req = body(payload)?;
    let results = futures::future::join_all(req.names.iter().map(|n| {
        let m = s.instances.clone();
        let action = action.clone();
        async move { (n.clone(), run_action(&m, n, &action).await) }
    }))
    .await;
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for (name, r) in results {
        match r {
            Ok(_) => succeeded.push(name),
            Err(e) => failed.push(BulkFailure {
                name,
                error: e.message,
                code: e.code,
            }),
        }
    }
    Ok(Json(json!({"succeeded": succeeded, "failed": failed})))
}

async fn templates(State(s): State<ApiState>) -> Json<Value> {
    Json(json!({"templates": s.instances.templates()}))
}
