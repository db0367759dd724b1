//! The HTTP front end of `mock-tei`: TEI's routes and JSON shapes (`/health`, `/info`,
//! `/metrics`, `/embed`, `/embed_sparse`, `/embed_all`, `/rerank`, `/predict`, `/similarity`,
//! `/tokenize`, `/decode`, `/v1/embeddings`), TEI's timing headers and error bodies, plus
//! `GET /mock/stats`. Request bodies are parsed and answered in `tei_http_handlers`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::common::{
    add_instance_header, instance_header_value, read_body, ReadBodyError, StatsSnapshot,
};
use super::tei::{Pooling, TeiCore, MAX_INPUT_LENGTH};
use super::tei_http_handlers::{handle, Route};
use super::tei_model::TeiError;

/// The router of an HTTP `mock-tei`.
pub fn router(core: Arc<TeiCore>) -> anyhow::Result<Router> {
    let header = instance_header_value(&core.name)?;
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics));
    for (path, route) in [
        ("/embed", Route::Embed),
        ("/embed_sparse", Route::EmbedSparse),
        ("/embed_all", Route::EmbedAll),
        ("/rerank", Route::Rerank),
        ("/predict", Route::Predict),
        ("/similarity", Route::Similarity),
        ("/tokenize", Route::Tokenize),
        ("/decode", Route::Decode),
        ("/v1/embeddings", Route::OpenAi),
    ] {
        app = app.route(
            path,
            post(move |State(core): State<Arc<TeiCore>>, body: Body| {
                model_route(core, route, body)
            }),
        );
    }
    Ok(app
        .route_layer(middleware::from_fn_with_state(
            core.clone(),
            require_api_key,
        ))
        .route("/mock/stats", get(stats))
        .route("/mock/embed_batches", get(embed_batches))
        .route("/_mock/load", post(set_load))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(header, add_instance_header))
        .with_state(core))
}

fn error_response(route: Route, error: TeiError) -> Response {
    let body = if route == Route::OpenAi {
        json!({"message": error.message, "code": error.status().as_u16(), "type": error.error_type()})
    } else {
        json!({"error": error.message, "error_type": error.error_type()})
    };
    (error.status(), Json(body)).into_response()
}

async fn require_api_key(
    State(core): State<Arc<TeiCore>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &core.args.api_key {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| presented == key);
        if !ok {
            return error_response(Route::Embed, TeiError::unauthorized());
        }
    }
    next.run(request).await
}

async fn stats(State(core): State<Arc<TeiCore>>) -> Json<StatsSnapshot> {
    Json(core.stats.snapshot(&core.name))
}

/// The number of inputs of every `/embed` request so far, in arrival order (a JSON array).
async fn embed_batches(State(core): State<Arc<TeiCore>>) -> Json<Vec<u32>> {
    Json(core.embed_batches())
}

async fn health(State(core): State<Arc<TeiCore>>) -> Response {
    if core.is_hung() {
        core.hang().await;
        return error_response(Route::Embed, TeiError::unhealthy("shutting down"));
    }
    if core.is_failed() {
        return error_response(Route::Embed, TeiError::unhealthy("unhealthy"));
    }
    StatusCode::OK.into_response()
}

async fn info(State(core): State<Arc<TeiCore>>) -> Response {
    if core.is_hung() {
        core.hang().await;
        return error_response(Route::Embed, TeiError::unhealthy("shutting down"));
    }
    let args = &core.args;
    let workers = args.tokenization_workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Json(json!({
        "model_id": args.model_id,
        "model_sha": null,
        "served_model_name": core.served_model_name(),
        "model_dtype": args.dtype.map_or("float32", |d| d.as_str()),
        "model_type": {"embedding": {"pooling": args.pooling.unwrap_or(Pooling::Cls).as_str()}},
        "max_concurrent_requests": args.max_concurrent_requests,
        "max_input_length": MAX_INPUT_LENGTH,
        "max_batch_tokens": args.max_batch_tokens,
        "max_batch_requests": args.max_batch_requests,
        "max_client_batch_size": args.max_client_batch_size,
        "auto_truncate": args.auto_truncate,
        "tokenization_workers": workers,
        "version": "mock",
        "sha": null,
        "docker_label": null,
    }))
    .into_response()
}

async fn set_load(State(core): State<Arc<TeiCore>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<crate::engine_load::LoadSettings>(&body) {
        Ok(s) => {
            core.metrics.set_fake_load(&s);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{waiting, metrics}}: {e}"),
        )
            .into_response(),
    }
}

async fn metrics(State(core): State<Arc<TeiCore>>) -> Response {
    core.metrics.response()
}

async fn model_route(core: Arc<TeiCore>, route: Route, body: Body) -> Response {
    let start = Instant::now();
    let bytes = match read_body(body, core.args.payload_limit).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::TooLarge) => {
            let limit = core.args.payload_limit;
            let error = TeiError::validation(format!("payload is larger than {limit} bytes"));
            return error_response(route, error);
        }
        Err(ReadBodyError::Io(e)) => {
            return error_response(route, TeiError::unprocessable(e));
        }
    };
    let body_info = core.stats.record_request(&bytes);
    // Dropped unanswered (the client went away): counted in `cancelled`.
    let answering = core.stats.answering();
    core.stall().await;
    let result = match core.admit().await {
        Err(refusal) => Err(core.refusal_error(refusal)),
        Ok(()) => match handle(&core, route, &bytes) {
            Ok(answer) => match core.infer(answer.load).await {
                Ok(timing) => {
                    core.record_success(start, timing).await;
                    Ok((answer, timing))
                }
                Err(error) => {
                    core.record_failure();
                    Err(error)
                }
            },
            Err(error) => {
                core.record_failure();
                Err(error)
            }
        },
    };
    let mut response = match result {
        Ok((answer, timing)) => {
            let mut response = Json(answer.body).into_response();
            let total = start.elapsed();
            // Without simulated batching the whole time is inference, as before.
            let (queue, inference) =
                timing.map_or((Duration::ZERO, total), |t| (t.queue, t.inference));
            timing_headers(
                response.headers_mut(),
                answer.chars,
                answer.tokens,
                Times {
                    total,
                    queue,
                    inference,
                },
            );
            response
        }
        Err(error) => error_response(route, error),
    };
    body_info.apply(response.headers_mut());
    answering.answered();
    response
}

/// Where a request's time went, for TEI's timing headers.
struct Times {
    total: Duration,
    queue: Duration,
    inference: Duration,
}

fn timing_headers(headers: &mut HeaderMap, chars: usize, tokens: usize, times: Times) {
    let ms = |d: Duration| HeaderValue::from(d.as_millis() as u64);
    let pairs = [
        ("x-compute-type", HeaderValue::from_static("cpu")),
        ("x-compute-time", ms(times.total)),
        ("x-compute-characters", HeaderValue::from(chars)),
        ("x-compute-tokens", HeaderValue::from(tokens)),
        ("x-total-time", ms(times.total)),
        ("x-tokenization-time", HeaderValue::from(0u64)),
        ("x-queue-time", ms(times.queue)),
        ("x-inference-time", ms(times.inference)),
    ];
    for (name, value) in pairs {
        headers.insert(HeaderName::from_static(name), value);
    }
}
