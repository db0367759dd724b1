//! The gRPC front end of `mock-tei` (`--grpc`): every `tei.v1` service (Info, Embed, Predict,
//! Rerank, Tokenize, with their streaming rpcs) plus `grpc.health.v1`, API-key checks on
//! `authorization` metadata, `x-mock-instance` response metadata, and `GET /mock/stats` over
//! HTTP/1.1 on the same port.
//!
//! Bidirectional streams answer each request message in order as soon as it arrives; every
//! message counts as one model request (for `--fail-after`, `--hang-after`, `--stall-every` and
//! the counters). A call whose client reset its stream before the answer counts as `cancelled`.
//! The answer to each message is computed in `tei_grpc_handlers`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use futures::{Stream, StreamExt};
use multiverse_proto::tei::v1 as pb;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Status, Streaming};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthService, WatchStream};
use tonic_health::ServingStatus;

use super::common::{add_instance_header, grace_expired, instance_header_value, Shutdown};
use super::tei::TeiCore;
use super::tei_grpc_handlers::{
    decode_one, embed_all_one, embed_one, embed_sparse_one, metadata, predict_one,
    predict_pair_one, ranks, rerank_one, tokenize_one, Reply,
};
use super::tei_model::TeiError;

/// The `tei.v1` services, as named in grpc.health.v1.
pub const SERVICE_NAMES: [&str; 5] = [
    pb::info_server::SERVICE_NAME,
    pb::embed_server::SERVICE_NAME,
    pb::predict_server::SERVICE_NAME,
    pb::rerank_server::SERVICE_NAME,
    pb::tokenize_server::SERVICE_NAME,
];

type GrpcResult<T> = Result<tonic::Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
/// Answers one request message (started at the given instant).
type Handler<Req, Resp> = fn(&TeiCore, Req, Instant) -> Result<Resp, TeiError>;

/// The `tei.v1` services of one server.
#[derive(Debug, Clone)]
pub struct TeiGrpc {
    core: Arc<TeiCore>,
}

/// Runs one model request (started at `start`): counts it, admits it, answers it, infers it.
async fn call<Resp: Reply>(
    core: &TeiCore,
    encoded: &[u8],
    start: Instant,
    answer: impl FnOnce() -> Result<Resp, TeiError>,
) -> Result<Resp, Status> {
    core.stats.record_request(encoded);
    // Dropped unanswered (the client reset the stream): counted in `cancelled`.
    let answering = core.stats.answering();
    core.stall().await;
    if let Err(refusal) = core.admit().await {
        answering.answered();
        return Err(core.refusal_error(refusal).to_status());
    }
    let answered = match answer() {
        Ok(mut response) => core.infer(response.load()).await.map(|timing| {
            if let Some(timing) = timing {
                response.set_timing(timing);
            }
            (response, timing)
        }),
        Err(error) => Err(error),
    };
    let result = match answered {
        Ok((response, timing)) => {
            core.record_success(start, timing).await;
            Ok(response)
        }
        Err(error) => {
            core.record_failure();
            Err(error.to_status())
        }
    };
    answering.answered();
    result
}

impl TeiGrpc {
    async fn unary<Req: Message, Resp: Reply>(
        &self,
        request: tonic::Request<Req>,
        handler: Handler<Req, Resp>,
    ) -> GrpcResult<Resp> {
        let start = Instant::now();
        let req = request.into_inner();
        let encoded = req.encode_to_vec();
        let core = &self.core;
        call(core, &encoded, start, || handler(core, req, start))
            .await
            .map(tonic::Response::new)
    }

    /// A bidirectional stream answering each message in order, as it arrives.
    fn bidi<Req, Resp>(
        &self,
        request: tonic::Request<Streaming<Req>>,
        handler: Handler<Req, Resp>,
    ) -> GrpcResult<BoxStream<Resp>>
    where
        Req: Message + Default + Send + 'static,
        Resp: Reply + Send + 'static,
    {
        let core = self.core.clone();
        let responses = request.into_inner().then(move |message| {
            let core = core.clone();
            async move {
                let start = Instant::now();
                let req = message?;
                let encoded = req.encode_to_vec();
                call(&core, &encoded, start, || handler(&core, req, start)).await
            }
        });
        Ok(tonic::Response::new(Box::pin(responses)))
    }
}

#[tonic::async_trait]
impl pb::info_server::Info for TeiGrpc {
    async fn info(
        &self,
        _request: tonic::Request<pb::InfoRequest>,
    ) -> GrpcResult<pb::InfoResponse> {
        if self.core.is_hung() {
            self.core.hang().await;
            return Err(Status::unavailable("shutting down"));
        }
        let args = &self.core.args;
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let workers = args.tokenization_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Ok(tonic::Response::new(pb::InfoResponse {
            version: "mock".into(),
            sha: None,
            docker_label: None,
            model_id: args.model_id.clone(),
            model_sha: None,
            model_dtype: args.dtype.map_or("float32", |d| d.as_str()).into(),
            model_type: pb::ModelType::Embedding as i32,
            max_concurrent_requests: to_u32(args.max_concurrent_requests),
            max_input_length: to_u32(super::tei::MAX_INPUT_LENGTH),
            max_batch_tokens: to_u32(args.max_batch_tokens),
            max_batch_requests: args.max_batch_requests.map(to_u32),
            max_client_batch_size: to_u32(args.max_client_batch_size),
            tokenization_workers: to_u32(workers),
        }))
    }
}

#[tonic::async_trait]
impl pb::embed_server::Embed for TeiGrpc {
    async fn embed(
        &self,
        request: tonic::Request<pb::EmbedRequest>,
    ) -> GrpcResult<pb::EmbedResponse> {
        self.unary(request, embed_one).await
    }

    type EmbedStreamStream = BoxStream<pb::EmbedResponse>;

    async fn embed_stream(
        &self,
        request: tonic::Request<Streaming<pb::EmbedRequest>>,
    ) -> GrpcResult<Self::EmbedStreamStream> {
        self.bidi(request, embed_one)
    }

    async fn embed_sparse(
        &self,
        request: tonic::Request<pb::EmbedSparseRequest>,
    ) -> GrpcResult<pb::EmbedSparseResponse> {
        self.unary(request, embed_sparse_one).await
    }

    type EmbedSparseStreamStream = BoxStream<pb::EmbedSparseResponse>;

    async fn embed_sparse_stream(
        &self,
        request: tonic::Request<Streaming<pb::EmbedSparseRequest>>,
    ) -> GrpcResult<Self::EmbedSparseStreamStream> {
        self.bidi(request, embed_sparse_one)
    }

    async fn embed_all(
        &self,
        request: tonic::Request<pb::EmbedAllRequest>,
    ) -> GrpcResult<pb::EmbedAllResponse> {
        self.unary(request, embed_all_one).await
    }

    type EmbedAllStreamStream = BoxStream<pb::EmbedAllResponse>;

    async fn embed_all_stream(
        &self,
        request: tonic::Request<Streaming<pb::EmbedAllRequest>>,
    ) -> GrpcResult<Self::EmbedAllStreamStream> {
        self.bidi(request, embed_all_one)
    }
}

#[tonic::async_trait]
impl pb::predict_server::Predict for TeiGrpc {
    async fn predict(
        &self,
        request: tonic::Request<pb::PredictRequest>,
    ) -> GrpcResult<pb::PredictResponse> {
        self.unary(request, predict_one).await
    }

    async fn predict_pair(
        &self,
        request: tonic::Request<pb::PredictPairRequest>,
    ) -> GrpcResult<pb::PredictResponse> {
        self.unary(request, predict_pair_one).await
    }

    type PredictStreamStream = BoxStream<pb::PredictResponse>;

    async fn predict_stream(
        &self,
        request: tonic::Request<Streaming<pb::PredictRequest>>,
    ) -> GrpcResult<Self::PredictStreamStream> {
        self.bidi(request, predict_one)
    }

    type PredictPairStreamStream = BoxStream<pb::PredictResponse>;

    async fn predict_pair_stream(
        &self,
        request: tonic::Request<Streaming<pb::PredictPairRequest>>,
    ) -> GrpcResult<Self::PredictPairStreamStream> {
        self.bidi(request, predict_pair_one)
    }
}

#[tonic::async_trait]
impl pb::rerank_server::Rerank for TeiGrpc {
    async fn rerank(
        &self,
        request: tonic::Request<pb::RerankRequest>,
    ) -> GrpcResult<pb::RerankResponse> {
        self.unary(request, rerank_one).await
    }

    async fn rerank_stream(
        &self,
        request: tonic::Request<Streaming<pb::RerankStreamRequest>>,
    ) -> GrpcResult<pb::RerankResponse> {
        let start = Instant::now();
        let mut inbound = request.into_inner();
        let mut first: Option<pb::RerankStreamRequest> = None;
        let mut pairs = Vec::new();
        let mut encoded = Vec::new();
        while let Some(message) = inbound.message().await? {
            message
                .encode(&mut encoded)
                .map_err(|e| Status::internal(e.to_string()))?;
            pairs.push((message.query.clone(), message.text.clone()));
            first.get_or_insert(message);
        }
        let first = first.unwrap_or_default();
        let core = &self.core;
        let answer = || {
            let ranks = ranks(
                core,
                &pairs,
                first.truncate,
                first.truncation_direction,
                first.raw_scores,
                first.return_text,
            )?;
            let texts = pairs.iter().flat_map(|(q, t)| [q.as_str(), t.as_str()]);
            Ok(pb::RerankResponse {
                ranks,
                metadata: metadata(texts, start),
            })
        };
        call(core, &encoded, start, answer)
            .await
            .map(tonic::Response::new)
    }
}

#[tonic::async_trait]
impl pb::tokenize_server::Tokenize for TeiGrpc {
    async fn tokenize(
        &self,
        request: tonic::Request<pb::EncodeRequest>,
    ) -> GrpcResult<pb::EncodeResponse> {
        self.unary(request, tokenize_one).await
    }

    type TokenizeStreamStream = BoxStream<pb::EncodeResponse>;

    async fn tokenize_stream(
        &self,
        request: tonic::Request<Streaming<pb::EncodeRequest>>,
    ) -> GrpcResult<Self::TokenizeStreamStream> {
        self.bidi(request, tokenize_one)
    }

    async fn decode(
        &self,
        request: tonic::Request<pb::DecodeRequest>,
    ) -> GrpcResult<pb::DecodeResponse> {
        self.unary(request, decode_one).await
    }

    type DecodeStreamStream = BoxStream<pb::DecodeResponse>;

    async fn decode_stream(
        &self,
        request: tonic::Request<Streaming<pb::DecodeRequest>>,
    ) -> GrpcResult<Self::DecodeStreamStream> {
        self.bidi(request, decode_one)
    }
}

/// grpc.health.v1 backed by tonic-health's statuses, except that it stops answering once
/// `--hang-after` has triggered.
struct MockHealth {
    inner: HealthService,
    core: Arc<TeiCore>,
}

#[tonic::async_trait]
impl Health for MockHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> GrpcResult<HealthCheckResponse> {
        if self.core.is_hung() {
            self.core.hang().await;
            return Err(Status::unavailable("shutting down"));
        }
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> GrpcResult<Self::WatchStream> {
        if self.core.is_hung() {
            self.core.hang().await;
            return Err(Status::unavailable("shutting down"));
        }
        self.inner.watch(request).await
    }
}

/// Refuses calls without `authorization: Bearer <--api-key>` (health and stats are open).
async fn require_api_key(
    State(core): State<Arc<TeiCore>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &core.args.api_key {
        let path = request.uri().path();
        let open = path.starts_with("/grpc.health.v1.Health/") || path == "/mock/stats";
        let ok = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| presented == key);
        if !open && !ok {
            return Status::unauthenticated("No valid auth token").into_http::<Body>();
        }
    }
    next.run(request).await
}

/// Serves the gRPC API on a bound listener until `shutdown` fires.
pub async fn serve(
    core: Arc<TeiCore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let initial = if core.is_failed() {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    core.set_health(initial).await;

    let services = TeiGrpc { core: core.clone() };
    let health = MockHealth {
        inner: HealthService::from_health_reporter(core.health.clone()),
        core: core.clone(),
    };
    let mut builder = Routes::builder();
    builder
        .add_service(HealthServer::new(health))
        .add_service(pb::info_server::InfoServer::new(services.clone()))
        .add_service(pb::embed_server::EmbedServer::new(services.clone()))
        .add_service(pb::predict_server::PredictServer::new(services.clone()))
        .add_service(pb::rerank_server::RerankServer::new(services.clone()))
        .add_service(pb::tokenize_server::TokenizeServer::new(services));
    let header = instance_header_value(&core.name)?;
    let counter = core.stats.clone();
    let stats_core = core.clone();
    let router = builder
        .routes()
        .into_axum_router()
        .route(
            "/mock/stats",
            get(move || {
                let core = stats_core.clone();
                async move { Json(core.stats.snapshot(&core.name)) }
            }),
        )
        .layer(middleware::from_fn_with_state(core, require_api_key))
        .layer(middleware::from_fn_with_state(header, add_instance_header));

    let incoming = TcpListenerStream::new(listener).map(move |conn| {
        conn.inspect(|tcp| {
            counter.connection_accepted();
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {err}");
            }
        })
    });
    let signal = {
        let shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    let server = Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = grace_expired(shutdown) => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}
