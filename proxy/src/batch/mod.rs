//! Arrow batch embedding: the `multiverse.embed.v1.BatchEmbed/EmbedArrow` gRPC service on its own
//! listener (`[batch_embed] listen`). A call's texts ([`ipc`]) are split into pieces that fit
//! the model's endpoints ([`split`]), sent to them in parallel, at most `concurrency` at once
//! ([`dispatch`]), and answered as one Arrow batch in input order with per-row errors.

pub mod dispatch;
pub mod ipc;
pub mod split;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use multiverse_common::keys::hash_secret;
use multiverse_common::{Millis, ModelKind};
use multiverse_proto::embed::v1::batch_embed_server::{BatchEmbed, BatchEmbedServer};
use multiverse_proto::embed::v1::{EmbedArrowRequest, EmbedArrowResponse};
use tonic::{Request, Response, Status};

use crate::batch::dispatch::{Dispatcher, Options, WANT};
use crate::batch::ipc::{RowResult, Texts, DEFAULT_TEXT_COLUMN};
use crate::batch::split::{estimate_tokens, split, Limits};
use crate::config::BatchEmbedConfig;
use crate::routing::outlier::OutlierConfig;
use crate::routing::TableState;

/// The service's state.
pub struct Service {
    state: Arc<TableState>,
    dispatcher: Dispatcher,
    max_rows: usize,
    concurrency: usize,
}

impl Service {
    pub fn new(
        state: Arc<TableState>,
        cfg: &BatchEmbedConfig,
        outlier: OutlierConfig,
        connect_timeout: Duration,
    ) -> Result<Service, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .build()
            .map_err(|e| format!("batch_embed: HTTP client: {e}"))?;
        Ok(Service {
            state,
            dispatcher: Dispatcher {
                client,
                clock: Millis::default(),
                outlier,
                timeout: Duration::from_millis(cfg.timeout_ms),
            },
            max_rows: cfg.max_rows,
            concurrency: cfg.concurrency,
        })
    }
}

/// Serves `service` on `listener` (a bound std socket) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    max_request_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "batch_embed: cannot use the listener");
            return;
        }
    };
    let server = BatchEmbedServer::new(service)
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        tracing::error!(error = %e, "batch_embed: server failed");
    }
}

/// The key a call presents, checked as the gateway checks HTTP and gRPC requests (key, expiry,
/// model); rate limits are not applied to batch calls.
fn authorize(
    state: &TableState,
    metadata: &tonic::metadata::MetadataMap,
    model: &str,
) -> Result<(), Status> {
    let table = state.table();
    let keys = &table.auth;
    if !keys.required {
        return Ok(());
    }
    let secret = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim()
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("an API key is required (authorization: Bearer <key>)")
        })?;
    let key = keys
        .get(&hash_secret(secret.as_bytes()))
        .ok_or_else(|| Status::unauthenticated("invalid API key"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if key.expires_at_unix_ms != 0 && key.expired(now) {
        return Err(Status::unauthenticated("the API key has expired"));
    }
    if !key.allows(model) {
        return Err(Status::permission_denied(format!(
            "the API key may not use model `{model}`"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl BatchEmbed for Service {
    async fn embed_arrow(
        &self,
        request: Request<EmbedArrowRequest>,
    ) -> Result<Response<EmbedArrowResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if req.model.is_empty() {
            return Err(Status::invalid_argument("`model` is required"));
        }
        authorize(&self.state, &metadata, &req.model)?;
        let table = self.state.table();
        let route = table
            .route(&req.model)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("model `{}` is not routed", req.model)))?;
        if route.kind != ModelKind::Embedding {
            return Err(Status::invalid_argument(format!(
                "model `{}` is a {} model, not an embedding model",
                req.model, route.kind
            )));
        }
        let column = if req.text_column.is_empty() {
            DEFAULT_TEXT_COLUMN
        } else {
            req.text_column.as_str()
        };
        let texts = Texts::read(&req.arrow_ipc, column, self.max_rows)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let texts = texts.collect();
        let usable: Vec<_> = route
            .endpoints
            .iter()
            .filter(|e| e.protocol.class() == WANT.class && e.health.accepts_new())
            .collect();
        if usable.is_empty() {
            return Err(Status::unavailable(format!(
                "model `{}` has no healthy TEI HTTP endpoint",
                req.model
            )));
        }
        let limits = Limits::tightest(
            usable
                .iter()
                .map(|e| (e.max_client_batch_size, e.max_batch_tokens)),
        );
        let mut results: Vec<RowResult> = texts
            .iter()
            .map(|t| match t {
                None => Err("text is null".to_string()),
                Some(_) => Err("not embedded".to_string()),
            })
            .collect();
        let rows: Vec<u32> = (0..texts.len() as u32)
            .filter(|&r| texts[r as usize].is_some())
            .collect();
        let pieces = split(
            &rows,
            |r| estimate_tokens(texts[r as usize].unwrap_or_default()),
            limits,
        );
        let options = Options {
            normalize: req.normalize,
            truncate: req.truncate,
            dimensions: req.dimensions,
        };
        let (route, texts) = (&*route, &texts[..]);
        let done: Vec<(Vec<u32>, Vec<RowResult>)> = futures::stream::iter(pieces)
            .map(|piece| async move {
                let out = self.dispatcher.piece(route, &piece, texts, options).await;
                (piece, out)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (piece, out) in done {
            for (row, result) in piece.into_iter().zip(out) {
                results[row as usize] = result;
            }
        }
        let failed_rows = results.iter().filter(|r| r.is_err()).count() as u32;
        let arrow_ipc = ipc::write(&results)
            .map_err(|e| Status::internal(format!("cannot write the answer: {e}")))?;
        tracing::debug!(model = %req.model, rows = results.len(), failed_rows, "batch embedded");
        Ok(Response::new(EmbedArrowResponse {
            arrow_ipc,
            failed_rows,
        }))
    }
}
