//! One request's life, as pingora phases. Each phase is a short call into the module that owns
//! the concern, in the order they run:
//!
//! 1. `new_ctx` — pin the current [`RoutingTable`] for the whole request (retries included).
//! 2. `request_filter` — classify ([`route`]), find the model (body, header or metadata), look
//!    up its route; answer errors and `GET /v1/models` locally.
//! 3. `upstream_peer` — choose an endpoint ([`pick`]) and build its peer ([`upstream`]).
//! 4. `upstream_request_filter` — rewrite host, auth and path for the endpoint.
//! 5. `request_body_filter` — send the bytes read for routing first ([`route::Held`]); enforce
//!    the body limit on streamed bodies.
//! 6. `upstream_response_filter` — outlier bookkeeping ([`outlier`]); a 502/503 before any
//!    byte reached the client is retried elsewhere ([`retry`]).
//! 7. `response_filter` — tag the response with `x-multiverse-endpoint`.
//! 8. `fail_to_connect` / `error_while_proxy` / `fail_to_proxy` — retry on another endpoint or
//!    answer with an error in the route family's format ([`respond`]).
//! 9. `logging` — metrics ([`observe`]); client faults logged at info, rate-limited.
//!
//! Before any phase, pingora answers a header it cannot parse (400), one that did not arrive
//! within the header timeout (408) and CONNECT (405) with the bodies of
//! `request_header_error_body`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::lifecycle::{Active, ActiveGuard};
use crate::observe::{InFlight, LogLimit, Metrics};
use crate::outlier::{self, OutlierConfig, Verdict};
use crate::pick::{any_eligible, pick, Tried, Want};
use crate::respond::{self, ProxyError};
use crate::retry::ClientFault;
use crate::route::{self, Family, Held, Target};
use crate::table::{Endpoint, ProtoClass, Route, RoutingTable};
use crate::upstream::{self, UpstreamDefaults};
use crate::{retry, TableState};

/// Client-fault log lines per second at most (the rest are counted in
/// `client_faults_total` and summarised in the next line).
const CLIENT_FAULT_LOGS_PER_SECOND: u32 = 10;

/// Proxy-wide settings of the request path.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub upstream: UpstreamDefaults,
    pub max_body_bytes: usize,
    pub outlier: OutlierConfig,
    /// `clients.header_timeout_ms`, named in the 408 a slow client gets.
    pub header_timeout: Duration,
}

/// The proxy: shared state every request reads, never writes under a lock.
pub struct Gateway {
    state: Arc<TableState>,
    active: Arc<Active>,
    metrics: Arc<Metrics>,
    config: GatewayConfig,
    /// OpenAI-format bodies of the 400, 405 and 408 written before any phase (no route family
    /// is known yet), built once.
    header_errors: [(u16, Bytes); 3],
    fault_log: LogLimit,
}

impl Gateway {
    pub fn new(
        state: Arc<TableState>,
        active: Arc<Active>,
        metrics: Arc<Metrics>,
        config: GatewayConfig,
    ) -> Self {
        let header_errors = [
            (400, ProxyError::malformed_header().openai_body()),
            (405, ProxyError::connect_not_allowed().openai_body()),
            (
                408,
                ProxyError::header_timeout(config.header_timeout).openai_body(),
            ),
        ];
        Self {
            state,
            active,
            metrics,
            config,
            header_errors,
            fault_log: LogLimit::new(CLIENT_FAULT_LOGS_PER_SECOND),
        }
    }
}

/// Everything one request carries through its phases.
pub struct RequestCtx {
    /// The table this request routes by, pinned at its start.
    table: Arc<RoutingTable>,
    family: Family,
    route: Option<Arc<Route>>,
    want: Want,
    /// Body bytes read to find the model.
    held: Held,
    /// Body bytes sent upstream in this attempt (for the size limit).
    body_bytes: usize,
    tried: Tried,
    attempts: u32,
    /// Index in `route.endpoints` of the current attempt.
    endpoint: Option<usize>,
    /// The current attempt's failure was already counted for outlier detection.
    failure_counted: bool,
    in_flight: Option<InFlight>,
    started: Instant,
    _active: ActiveGuard,
}

impl RequestCtx {
    fn endpoint(&self) -> Option<&Endpoint> {
        Some(&self.route.as_ref()?.endpoints[self.endpoint?])
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            table: self.state.table(),
            family: Family::Unknown,
            route: None,
            want: Want {
                class: ProtoClass::Http,
                pinned: None,
            },
            held: Held::default(),
            body_bytes: 0,
            tried: Tried::default(),
            attempts: 0,
            endpoint: None,
            failure_counted: false,
            in_flight: None,
            started: Instant::now(),
            _active: self.active.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        ctx.family = route::classify(&req.method, req.uri.path(), content_type);
        ctx.want.class = ctx.family.class();
        let outcome = match ctx.family {
            Family::ModelsList => {
                let body = respond::models_list(&ctx.table);
                respond::send_json(session, 200, body).await?;
                return Ok(true);
            }
            Family::Unknown => Err(ProxyError::unknown_route(
                req.method.as_str(),
                req.uri.path(),
            )),
            _ => self.find_target(session, ctx).await?,
        };
        let outcome = outcome.and_then(|target| {
            ctx.want.pinned = target.pinned;
            if any_eligible(&target.route, Tried::default(), &ctx.want) {
                Ok(target.route)
            } else {
                Err(ProxyError::no_endpoint(&target.route.name))
            }
        });
        match outcome {
            Ok(route) => {
                ctx.route = Some(route);
                Ok(false)
            }
            Err(err) => {
                respond::send_error(session, ctx.family.format(), &err).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let Some(index) = pick(&route, ctx.tried, &ctx.want) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy endpoint");
        };
        ctx.attempts += 1;
        ctx.endpoint = Some(index);
        ctx.tried.mark(index);
        ctx.failure_counted = false;
        ctx.held.rearm();
        ctx.body_bytes = ctx.held.len();
        let endpoint = &route.endpoints[index];
        // Replacing the guard moves the in-flight count from the previous attempt's endpoint.
        ctx.in_flight = Some(InFlight::start(endpoint, &self.metrics));
        Ok(Box::new(upstream::peer(
            endpoint,
            &route.policy,
            &self.config.upstream,
        )))
    }

    fn upstream_idle_timeout(&self, ctx: &RequestCtx) -> Option<std::time::Duration> {
        ctx.route.as_ref()?.policy.idle_timeout
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match ctx.endpoint() {
            Some(endpoint) => upstream::rewrite_request(upstream_request, endpoint),
            None => Ok(()),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, Bytes::len);
        if ctx.body_bytes > self.config.max_body_bytes {
            let mut e = Error::explain(ErrorType::HTTPStatus(413), "request body over the limit");
            // the client's fault: answered 413 and logged as a client fault
            e.esource = ErrorSource::Downstream;
            return Err(e);
        }
        ctx.held.prepend_to(body);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if !matches!(status, 502..=504) {
            if let Some(endpoint) = ctx.endpoint() {
                endpoint.load.outlier.success(&self.config.outlier);
            }
            return Ok(());
        }
        self.count_failure(ctx);
        if status != 504
            && retry::can_retry(
                session,
                &ctx.want,
                ctx.route.as_deref(),
                ctx.tried,
                ctx.attempts,
            )
        {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream answered with a gateway error; retrying on another endpoint",
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(endpoint) = ctx.endpoint() {
            upstream_response.insert_header("x-multiverse-endpoint", endpoint.id_header.clone())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(endpoint) = ctx.endpoint() {
            self.metrics.connect_error(&endpoint.id);
        }
        self.count_failure(ctx);
        self.decide_retry(session, ctx, &mut e, true);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let upstream_fault = *e.esource() == ErrorSource::Upstream;
        if upstream_fault {
            self.count_failure(ctx);
        }
        self.decide_retry(session, ctx, &mut e, upstream_fault);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = retry::final_error(e, ctx.route.as_deref());
        let code = match err {
            // The client is gone or the response already started: nothing can be written.
            None => 0,
            Some(_) if session.response_written().is_some() => 0,
            Some(err) => {
                // pingora closes the client connection after a proxy failure: say so, so an
                // HTTP/1.1 client does not reuse it.
                session.set_keepalive(None);
                if let Err(write_err) =
                    respond::send_error(session, ctx.family.format(), &err).await
                {
                    tracing::debug!(error = %write_err, "could not write the error response");
                }
                err.status
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn request_header_error_body(&self, status: u16) -> Option<(&'static str, Bytes)> {
        self.header_errors
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, body)| ("application/json", body.clone()))
    }

    /// pingora's "Fail to proxy" ERROR line is for the gateway's own failures; client faults
    /// are logged by `logging` at info, rate-limited.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        ClientFault::of(e).is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let model = ctx.route.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        let endpoint = ctx.endpoint().map(|e| e.id.as_str()).unwrap_or("");
        self.metrics
            .request_done(model, endpoint, status, ctx.started.elapsed());
        if let Some(e) = e {
            match ClientFault::of(e) {
                Some(fault) => {
                    if let Some(held_back) = self.fault_log.allow() {
                        let path = session.req_header().uri.path();
                        tracing::info!(
                            fault = fault.label(),
                            status,
                            model,
                            path,
                            error = %e,
                            held_back,
                            "request failed by the client's doing"
                        );
                    }
                    self.metrics.client_fault(fault.label());
                }
                None => tracing::debug!(model, endpoint, status, error = %e, "request failed"),
            }
        }
        ctx.in_flight = None;
    }
}

impl Gateway {
    /// Finds the route: OpenAI by `x-model` or the body's `model`, TEI and gRPC by headers.
    async fn find_target(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<std::result::Result<Target, ProxyError>> {
        if !self.state.is_ready() {
            return Ok(Err(ProxyError::not_ready()));
        }
        let limit = self.config.max_body_bytes;
        if route::content_length(session).is_some_and(|len| len > limit) {
            return Ok(Err(ProxyError::too_large(limit)));
        }
        if ctx.family != Family::OpenAi {
            return Ok(route::target_from_headers(&ctx.table, session, ctx.family));
        }
        let model = match route::model_from_header(session) {
            Some(m) => m.to_owned(),
            None => match route::model_from_body(session, limit, &mut ctx.held).await? {
                Ok(m) => m,
                Err(err) => return Ok(Err(err)),
            },
        };
        Ok(ctx
            .table
            .route(&model)
            .map(|route| Target {
                route: route.clone(),
                pinned: None,
            })
            .ok_or_else(|| ProxyError::unknown_model(&model)))
    }

    /// Counts a gateway failure of the current attempt's endpoint, once per attempt.
    fn count_failure(&self, ctx: &mut RequestCtx) {
        if std::mem::replace(&mut ctx.failure_counted, true) {
            return;
        }
        let (Some(route), Some(index)) = (ctx.route.as_ref(), ctx.endpoint) else {
            return;
        };
        match outlier::failure(route, index, &self.config.outlier) {
            Verdict::Ejected(duration) => {
                let id = &route.endpoints[index].id;
                self.metrics.ejection(id);
                tracing::warn!(endpoint = %id, model = %route.name, ?duration, "endpoint ejected after consecutive gateway failures");
            }
            Verdict::CappedByMaxPercent => {
                tracing::debug!(model = %route.name, "ejection skipped: max_ejection_percent reached");
            }
            Verdict::Counted => {}
        }
    }

    /// Marks `e` retryable when the failure allows it and the request can still be retried.
    fn decide_retry(&self, session: &Session, ctx: &RequestCtx, e: &mut Error, allowed: bool) {
        let retry = allowed
            && retry::can_retry(
                session,
                &ctx.want,
                ctx.route.as_deref(),
                ctx.tried,
                ctx.attempts,
            );
        if retry {
            if let Some(route) = ctx.route.as_ref() {
                self.metrics.retry(&route.name);
            }
        }
        e.set_retry(retry);
    }
}
