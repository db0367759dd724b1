//! One request's life, as pingora phases. Each phase is a short call into the module that owns
//! the concern, in the order they run:
//!
//! 1. `new_ctx` — pin the current [`RoutingTable`] for the whole request (retries included).
//! 2. `request_filter` — classify ([`route`]), find the model, look up its route; answer errors
//!    and `GET /v1/models` locally.
//! 3. `upstream_peer` — choose an endpoint ([`pick`]) and build its peer ([`upstream`]).
//! 4. `upstream_request_filter` — rewrite host, auth and path for the endpoint.
//! 5. `request_body_filter` — send the bytes read for routing first ([`route::Held`]).
//! 6. `response_filter` — tag the response with `x-multiverse-endpoint`.
//! 7. `fail_to_connect` / `fail_to_proxy` — retry on another endpoint ([`retry`]) or answer
//!    with an error in the route family's format ([`respond`]).
//! 8. `logging` — metrics ([`observe`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::lifecycle::{Active, ActiveGuard};
use crate::observe::{InFlight, Metrics};
use crate::pick::{pick, Tried};
use crate::respond::{self, ProxyError};
use crate::route::{self, Family, Held};
use crate::table::{Route, RoutingTable};
use crate::upstream::{self, UpstreamDefaults};
use crate::{retry, TableState};

/// The proxy: shared state every request reads, never writes under a lock.
pub struct Gateway {
    state: Arc<TableState>,
    active: Arc<Active>,
    metrics: Arc<Metrics>,
    defaults: UpstreamDefaults,
    max_body_bytes: usize,
}

impl Gateway {
    pub fn new(
        state: Arc<TableState>,
        active: Arc<Active>,
        metrics: Arc<Metrics>,
        defaults: UpstreamDefaults,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            state,
            active,
            metrics,
            defaults,
            max_body_bytes,
        }
    }
}

/// Everything one request carries through its phases.
pub struct RequestCtx {
    /// The table this request routes by, pinned at its start.
    table: Arc<RoutingTable>,
    family: Family,
    route: Option<Arc<Route>>,
    /// Body bytes read to find the model.
    held: Held,
    tried: Tried,
    attempts: u32,
    /// Index in `route.endpoints` of the current attempt.
    endpoint: Option<usize>,
    in_flight: Option<InFlight>,
    started: Instant,
    _active: ActiveGuard,
}

impl RequestCtx {
    fn endpoint(&self) -> Option<&crate::table::Endpoint> {
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
            held: Held::default(),
            tried: Tried::default(),
            attempts: 0,
            endpoint: None,
            in_flight: None,
            started: Instant::now(),
            _active: self.active.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.family = route::classify(&req.method, req.uri.path());
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
            Family::OpenAi => self.route_openai(session, ctx).await?,
        };
        match outcome {
            Ok(route) => {
                ctx.route = Some(route);
                Ok(false)
            }
            Err(err) => {
                respond::send_error(session, &err).await?;
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
        let Some(index) = pick(&route, ctx.tried) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy endpoint");
        };
        ctx.attempts += 1;
        ctx.endpoint = Some(index);
        ctx.tried.mark(index);
        ctx.held.rearm();
        let endpoint = &route.endpoints[index];
        // Replacing the guard moves the in-flight count from the previous attempt's endpoint.
        ctx.in_flight = Some(InFlight::start(endpoint, &self.metrics));
        Ok(Box::new(upstream::peer(
            endpoint,
            &route.policy,
            &self.defaults,
        )))
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
        ctx.held.prepend_to(body);
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
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if let Some(endpoint) = ctx.endpoint() {
            self.metrics.connect_error(&endpoint.id);
        }
        let Some(route) = ctx.route.as_ref() else {
            return e;
        };
        retry::after_connect_failure(route, ctx.tried, ctx.attempts, e, &self.metrics)
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
                if let Err(write_err) = respond::send_error(session, &err).await {
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
            tracing::debug!(model, endpoint, status, error = %e, "request failed");
        }
        ctx.in_flight = None;
    }
}

impl Gateway {
    /// Finds the model of an OpenAI request (header, else body) and its route.
    async fn route_openai(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<std::result::Result<Arc<Route>, ProxyError>> {
        if !self.state.is_ready() {
            return Ok(Err(ProxyError::not_ready()));
        }
        let model = match route::model_from_header(session) {
            Some(m) => m.to_owned(),
            None => {
                match route::model_from_body(session, self.max_body_bytes, &mut ctx.held).await? {
                    Ok(m) => m,
                    Err(err) => return Ok(Err(err)),
                }
            }
        };
        let Some(route) = ctx.table.route(&model) else {
            return Ok(Err(ProxyError::unknown_model(&model)));
        };
        if route.available() == 0 {
            return Ok(Err(ProxyError::no_endpoint(&model)));
        }
        Ok(Ok(route.clone()))
    }
}
