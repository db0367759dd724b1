//! One request's life, as pingora phases. Each phase is a short call into the module that owns
//! the decision, in the order they run:
//!
//! 1. `new_ctx` — pin the current [`RoutingTable`](crate::routing::table::RoutingTable) for the whole request, retries included
//!    ([`ctx`](crate::request::ctx)).
//! 2. `request_filter` — its id and trace context read or made ([`id`],
//!    [`trace`](crate::request::trace)); a browser's preflight answered, its origin noted
//!    ([`cors`]); the route
//!    family ([`classify`](crate::request::classify)), the client address's rate
//!    ([`client_limit`](crate::request::client_limit)), the inference key ([`auth`], when keys
//!    are required), the model and its route ([`target`], reading the body through [`body`]
//!    when it names the model), the key's model and limits; errors and `GET /v1/models` are
//!    answered here ([`respond`]), and the connection stays open.
//!    A model whose endpoints have a `max_concurrent` then admits it: a slot, a wait in its
//!    queue, or 429 ([`admit`]).
//! 3. `upstream_peer` — choose an endpoint ([`pick_reserved`], unless admission did) and build
//!    its peer
//!    ([`upstream`]).
//! 4. `upstream_request_filter` — rewrite host, auth and path for the endpoint (a gateway key
//!    never goes upstream); a generated id and a started trace added.
//! 5. `request_body_filter` — send the bytes read for routing first; enforce the body limit on
//!    streamed bodies.
//! 6. `upstream_response_filter` — outlier bookkeeping; a 502/503 before any byte reached the
//!    client is retried elsewhere ([`retry`]).
//! 7. `response_filter` — tag the response with `x-request-id`, `x-multiverse-endpoint`, the key's
//!    `x-ratelimit-*` headers (and an allowed origin's CORS headers, which the proxy's own
//!    answers carry too); `response_body_filter` reads its token counts as it streams past
//!    ([`usage`](crate::request::usage)) and times an SSE stream's chunks
//!    ([`pace`](crate::request::pace)).
//! 8. `fail_to_connect` / `error_while_proxy` — count the failure, decide the retry;
//!    `fail_to_proxy` — answer with the [`ProxyError`] in the route family's format, or, when
//!    the response had started, end it in its body's terms ([`midstream`]).
//! 9. `logging` — the tokens counted and charged to the key; metrics ([`Metrics`]); client faults ([`ClientFault`]) logged at info,
//!    rate-limited.
//!
//! Before any phase, pingora answers a header it cannot parse (400), one that did not arrive
//! within the header timeout (408) and CONNECT (405) with the bodies of
//! `request_header_error_body`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use multiverse_common::otlp::Otlp;
use multiverse_common::{Clock, Millis, SystemClock};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::ops::drain::Active;
use crate::ops::metrics::{LogLimit, Metrics};
use crate::request::admit;
use crate::request::auth;
use crate::request::body;
use crate::request::classify::{classify_request, Family};
use crate::request::client_limit::ClientLimit;
use crate::request::cors::{self, Cors};
use crate::request::ctx::RequestCtx;
use crate::request::error::{ClientFault, Limit, ProxyError};
use crate::request::hedge;
use crate::request::id;
use crate::request::midstream::{self, BodyKind};
use crate::request::observe::InFlight;
use crate::request::pace::Pace;
use crate::request::prefix_hash::{self, PrefixHasher, PrefixScan};
use crate::request::respond;
use crate::request::retry::{self, Answered, Attempted};
use crate::request::spans::{self, Outcome};
use crate::request::stream_usage::{self, HideUsage};
use crate::request::target::{self, Plan};
use crate::request::upstream::{self, UpstreamDefaults};
use crate::request::usage::UsageReader;
use crate::routing::affinity::Affinity;
use crate::routing::limits::Leased;
use crate::routing::outlier::{OutlierConfig, Verdict};
use crate::routing::pick::pick_reserved;
use crate::routing::queue::Priority;
use crate::routing::table::{LbStrategy, Route};
use crate::routing::TableState;

/// Client-fault log lines per second at most (the rest are counted in
/// `client_faults_total` and summarised in the next line).
const CLIENT_FAULT_LOGS_PER_SECOND: u32 = 10;

/// The endpoint that answered, on every upstream response (a typed name: no parse per insert).
static ENDPOINT_HEADER: StaticHeaderName = StaticHeaderName::new("x-multiverse-endpoint");

/// Proxy-wide settings of the request path.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub upstream: UpstreamDefaults,
    pub max_body_bytes: usize,
    pub outlier: OutlierConfig,
    /// `clients.header_timeout_ms`, named in the 408 a slow client gets.
    pub header_timeout: Duration,
    /// `clients.max_header_bytes` and `clients.max_headers`, named in the 431s.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `limits.per_ip_rpm` and `limits.per_ip_tracked`, when the limit is on.
    pub per_ip: Option<(u32, usize)>,
    /// `[cors]`: the browser origins allowed.
    pub cors: Cors,
    /// `limits.priority_header`: a request's priority in its model's admission queue.
    pub priority_header: http::HeaderName,
    /// `[tracing] sample`: the sampled flag of the traces the proxy starts (no exporter).
    pub trace_sample: bool,
    /// `[tracing] otlp_endpoint`: the span exporter, when on ([`spans`]).
    pub otlp: Option<Arc<Otlp>>,
    /// `[tracing] sample_ratio`: with the exporter, the share of started traces sampled.
    pub trace_ratio: f64,
    /// `[affinity]`: what `lb = "prefix_affinity"` keys requests by.
    pub affinity: AffinityConfig,
    /// `[usage] request_stream_usage`: ask backends for a stream's usage when the client did
    /// not ([`stream_usage`]).
    pub request_stream_usage: bool,
}

/// `[affinity]`, ready for the request path.
#[derive(Debug, Clone)]
pub struct AffinityConfig {
    pub scan: PrefixScan,
    pub session_header: http::HeaderName,
    pub load_factor: f64,
}

/// The proxy: shared state every request reads, never writes under a lock.
pub struct Gateway {
    state: Arc<TableState>,
    active: Arc<Active>,
    metrics: Arc<Metrics>,
    config: GatewayConfig,
    /// Time for outlier ejection (milliseconds since the gateway was built).
    clock: Millis<Arc<dyn Clock>>,
    /// OpenAI-format bodies of the 400, 405, 408 and 431 written before any phase (no route
    /// family is known yet), built once.
    header_errors: [(u16, Bytes); 4],
    fault_log: LogLimit,
    per_ip: Option<ClientLimit>,
    /// Upstream connections of hedged requests ([`hedge`]; pingora's pooled connector).
    connector: Connector,
}

impl Gateway {
    pub fn new(
        state: Arc<TableState>,
        active: Arc<Active>,
        metrics: Arc<Metrics>,
        config: GatewayConfig,
    ) -> Self {
        let header_errors = [
            ProxyError::MalformedHeader,
            ProxyError::ConnectNotAllowed,
            ProxyError::HeaderTimeout(config.header_timeout),
            // pingora's 431 is for either header limit: the size is the likelier one.
            ProxyError::HeaderTooLarge(config.max_header_bytes),
        ]
        .map(|e| (e.status(), respond::openai_body(&e)));
        let per_ip = config
            .per_ip
            .map(|(rpm, tracked)| ClientLimit::new(rpm, tracked));
        Self {
            state,
            active,
            metrics,
            config,
            clock: Millis::new(Arc::new(SystemClock)),
            header_errors,
            fault_log: LogLimit::new(CLIENT_FAULT_LOGS_PER_SECOND),
            per_ip,
            connector: Connector::new(None),
        }
    }

    /// The same gateway on another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Millis::new(clock);
        self
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.state.table(), self.active.enter())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let sample = match self.config.otlp {
            Some(_) => rand::random::<f64>() < self.config.trace_ratio,
            None => self.config.trace_sample,
        };
        ctx.identify(session.req_header(), sample, self.config.otlp.is_some());
        if self.config.cors.on_request(session, &mut ctx.cors).await? {
            return Ok(true);
        }
        ctx.family = classify_request(session.req_header());
        ctx.want.class = ctx.family.class();
        // HTTP/1.1 headers are held to the count by pingora; HTTP/2 ones here, in the family's
        // format (h2 itself bounds only their size).
        if session.req_header().headers.len() > self.config.max_headers {
            self.metrics
                .client_fault(ClientFault::TooManyHeaders.label());
            let err = ProxyError::TooManyHeaders(self.config.max_headers);
            respond::send_error(
                session,
                ctx.family.format(),
                &err,
                ctx.cors.as_ref(),
                None,
                ctx.id.value(),
            )
            .await?;
            return Ok(true);
        }
        let found = match self.client_limit(session, ctx) {
            Err(e) => Err(e.into_pingora()),
            Ok(()) => match auth::authenticate(&ctx.table.auth, session.req_header(), unix_ms) {
                Ok(key) => {
                    ctx.key = key;
                    self.find_route(session, ctx).await
                }
                Err(e) => Err(e.into_pingora()),
            },
        };
        let found = match found {
            // Admission: a slot on a limited endpoint, or a wait for one.
            Ok(Some(route)) => self.admit(session, ctx, &route).await.map(|()| Some(route)),
            other => other,
        };
        if let Some(p) = ctx.phases.as_mut() {
            p.routed();
        }
        let found = match found {
            // A hedged request is answered here, on its own path ([`hedge`]).
            Ok(Some(route)) => match hedge::after(&route, ctx.family, session.req_header()) {
                None => Ok(Some(route)),
                Some(after) => {
                    ctx.route = Some(route.clone());
                    self.hedged(session, ctx, &route, after)
                        .await
                        .map(|()| None)
                }
            },
            other => other,
        };
        match found {
            Ok(Some(route)) => {
                ctx.route = Some(route);
                Ok(false)
            }
            // Answered from the table.
            Ok(None) => Ok(true),
            Err(e) => match ProxyError::raised(&e) {
                // The request's own fault or state: answered here, the connection stays open.
                Some(err) => {
                    respond::send_error(
                        session,
                        ctx.family.format(),
                        err,
                        ctx.cors.as_ref(),
                        ctx.rate.as_ref(),
                        ctx.id.value(),
                    )
                    .await?;
                    Ok(true)
                }
                // A failed read from the client: pingora's error handling.
                None => Err(e),
            },
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(ProxyError::Internal("upstream_peer without a route").into_pingora());
        };
        // Admission reserved the first attempt's slot; a retry reserves its own.
        let (index, guard) = match ctx.admitted.take() {
            Some(admitted) => admitted,
            None => {
                let Some(i) = pick_reserved(&route, ctx.tried, &ctx.want, self.clock.now_ms())
                else {
                    return Err(nothing_left(&route, 503).into_pingora());
                };
                (
                    i,
                    InFlight::reserved(&route, &route.endpoints[i], &self.metrics),
                )
            }
        };
        ctx.begin_attempt(index);
        if let Some(p) = ctx.phases.as_mut() {
            p.connecting();
        }
        if route.policy.lb == LbStrategy::PeakEwma {
            ctx.attempt_sent_ms = self.clock.now_ms();
        }
        let endpoint = &route.endpoints[index];
        // Replacing the guard moves the in-flight count from the previous attempt's endpoint.
        ctx.in_flight = Some(guard);
        Ok(Box::new(upstream::peer(
            endpoint,
            &route.policy,
            &self.config.upstream,
        )))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(p) = ctx.phases.as_mut() {
            p.connected(reused);
        }
        Ok(())
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
        if let Some(endpoint) = ctx.endpoint() {
            upstream::rewrite_request(upstream_request, endpoint, ctx.key.is_some())?;
        }
        ctx.id.write_upstream(upstream_request)?;
        if ctx.usage_asked
            && upstream_request
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
        {
            // The held bytes are the whole body, rewritten. (A static name: one allocation,
            // the value.)
            upstream_request.insert_header(http::header::CONTENT_LENGTH, ctx.held.len())?;
        }
        ctx.trace.write_upstream(upstream_request)
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
            // the client's fault: answered 413 and logged as a client fault
            return Err(ProxyError::TooLargeStreamed.into_pingora().into_down());
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
        if let Some(p) = ctx.phases.as_mut() {
            p.first_byte();
        }
        let status = upstream_response.status.as_u16();
        match retry::judge(status) {
            Answered::Served => {
                if let (Some(route), Some(index)) = (ctx.route.as_ref(), ctx.endpoint) {
                    let now = self.clock.now_ms();
                    route.record_success(index, &self.config.outlier, now);
                    if route.policy.lb == LbStrategy::PeakEwma {
                        let latency = now.saturating_sub(ctx.attempt_sent_ms);
                        route.endpoints[index].state.latency.observe(latency, now);
                    }
                }
                Ok(())
            }
            Answered::GatewayFailure { retryable } => {
                self.count_failure(ctx);
                if !(retryable && self.may_retry(session, ctx)) {
                    // Passed on to the client as the upstream sent it.
                    return Ok(());
                }
                let Some(route) = ctx.route.as_ref() else {
                    return Ok(());
                };
                let mut e = nothing_left(route, status).into_pingora();
                e.esource = ErrorSource::Upstream;
                e.set_retry(true);
                Err(e)
            }
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(&id::NAME, ctx.id.value().clone())?;
        ctx.forwarded.kind = BodyKind::of(upstream_response);
        if ctx.forwarded.kind == BodyKind::Sse {
            ctx.pace = Some(Pace::new(self.metrics.stream_pace(ctx.model())));
        }
        // A stream whose usage we asked for: its usage event is not the client's. (One with a
        // Content-Length, which removing bytes would break, goes as it is.)
        ctx.hide_usage = (ctx.usage_asked
            && ctx.forwarded.kind == BodyKind::Sse
            && !upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH))
        .then(HideUsage::default);
        if let Some(endpoint) = ctx.endpoint() {
            upstream_response.insert_header(&ENDPOINT_HEADER, endpoint.id_header.clone())?;
        }
        if let Some(rate) = &ctx.rate {
            rate.write(upstream_response)?;
        }
        cors::decorate(upstream_response, ctx.cors.as_ref())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        ctx.forwarded.ended |= end_of_stream;
        let Some(chunk) = body.as_ref().filter(|c| !c.is_empty()) else {
            if end_of_stream {
                if let Some(held) = ctx.hide_usage.as_mut().and_then(HideUsage::release) {
                    *body = Some(held);
                }
            }
            return Ok(None);
        };
        if let Some(reader) = ctx.usage.as_mut() {
            reader.feed(chunk);
        }
        if let Some(hide) = ctx.hide_usage.as_mut() {
            if let Some(forwarded) = hide.filter(chunk, end_of_stream) {
                *body = Some(forwarded);
            }
        }
        if let Some(pace) = ctx.pace.as_mut() {
            // What the client gets: a hidden usage event is no token.
            pace.chunk(body.as_deref(), ctx.started);
        }
        Ok(None)
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
            // A certificate that is not trusted (or names another host) is a configuration
            // fault that every request would hit: say which backend, once per failed attempt.
            if matches!(
                e.etype(),
                ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
            ) {
                tracing::warn!(
                    endpoint = %endpoint.id,
                    source = %endpoint.source,
                    host = %endpoint.host,
                    error = %e,
                    "TLS to the endpoint failed (is its certificate trusted? see [upstream] tls_ca_file)"
                );
            }
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
        let mut can_reuse_downstream = false;
        let code = match ProxyError::from_pingora(e, ctx.route.as_deref()) {
            // The client is gone: nothing can be written.
            None => 0,
            // The response already started: its upstream cut it, ended in its body's terms
            // (an SSE stream ended cleanly leaves a sound HTTP/1.1 connection, kept:
            // third_party/PATCHES.md).
            Some(err) if session.response_written().is_some() => {
                if *e.esource() == ErrorSource::Upstream {
                    can_reuse_downstream = self.cut_midstream(session, ctx, &err).await;
                }
                0
            }
            Some(err) => {
                // pingora closes the client connection after a proxy failure: say so, so an
                // HTTP/1.1 client does not reuse it.
                session.set_keepalive(None);
                let format = ctx.family.format();
                let cors = ctx.cors.as_ref();
                if let Err(write_err) =
                    respond::send_error(session, format, &err, cors, None, ctx.id.value()).await
                {
                    tracing::debug!(error = %write_err, "could not write the error response");
                }
                err.status()
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream,
        }
    }

    fn request_header_error_body(&self, status: u16) -> Option<(&'static str, Bytes)> {
        self.header_errors
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, body)| ("application/json", body.clone()))
    }

    /// A request header that could not be read (pingora answered 400, 408 or 431, or nothing)
    /// is counted in `client_faults_total` (not logged: no request exists to name).
    fn request_header_failed(&self, e: &Error, _status: Option<u16>) {
        self.metrics.client_fault(ClientFault::of_header(e).label());
    }

    /// pingora's error lines about the request name its id and trace.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        format!(
            "{}, request_id: {}, trace_id: {}",
            session.as_ref().request_summary(),
            ctx.id,
            ctx.trace.trace_id()
        )
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
        let model = ctx.model();
        let endpoint = ctx.endpoint().map(|e| e.id.as_str()).unwrap_or("");
        self.metrics
            .request_done(model, endpoint, status, ctx.started.elapsed());
        self.charge_tokens(ctx);
        let key = ctx.key.as_ref().map_or("-", |k| k.id.as_str());
        let tokens = ctx.usage.as_ref().and_then(UsageReader::tokens);
        if let Some(tokens) = tokens {
            self.metrics.tokens(model, endpoint, key, tokens);
        }
        if ctx.table.auth.required {
            self.metrics.key_request(key, status, tokens);
        }
        if let (Some(otlp), Some(phases)) = (&self.config.otlp, &ctx.phases) {
            let req = session.req_header();
            let outcome = Outcome {
                request_id: ctx.id.value().to_str().unwrap_or("-"),
                model,
                endpoint,
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                attempts: ctx.attempts,
                failed: e.is_some(),
            };
            spans::export(otlp, phases, &outcome);
        }
        if let Some(e) = e {
            match ClientFault::of(e) {
                Some(fault) => {
                    if let Some(held_back) = self.fault_log.allow() {
                        let path = session.req_header().uri.path();
                        tracing::info!(
                            request_id = %ctx.id,
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
                None => tracing::debug!(
                    request_id = %ctx.id,
                    trace_id = ctx.trace.trace_id(),
                    model,
                    endpoint,
                    status,
                    error = %e,
                    "request failed"
                ),
            }
        }
        ctx.in_flight = None;
    }
}

/// Wall-clock milliseconds since the Unix epoch (key expiry).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why no endpoint is left for `route`: none could take requests at all, or every one tried
/// failed (the last with `status`).
fn nothing_left(route: &Route, status: u16) -> ProxyError {
    if route.available() == 0 {
        ProxyError::NoHealthyEndpoint(route.name.clone())
    } else {
        ProxyError::AllEndpointsFailed {
            model: route.name.clone(),
            status,
        }
    }
}

impl Gateway {
    /// Ends a response its upstream cut after it had started ([`midstream`]); counted, logged.
    /// True when the client's stream was ended cleanly (its connection stays sound).
    async fn cut_midstream(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        err: &ProxyError,
    ) -> bool {
        if ctx.forwarded.ended {
            return false;
        }
        let endpoint = ctx.endpoint().map_or("", |e| e.id.as_str());
        let body = ctx.forwarded.kind.label();
        let told = midstream::end(session, ctx.forwarded, err, endpoint)
            .await
            .unwrap_or_else(|write_err| {
                tracing::debug!(error = %write_err, "could not end the cut response");
                false
            });
        self.metrics.midstream_failure(ctx.model(), endpoint, body);
        tracing::warn!(
            request_id = %ctx.id,
            trace_id = ctx.trace.trace_id(),
            model = ctx.model(),
            endpoint,
            body,
            told_client = told,
            error = %err,
            "upstream failed after the response had started"
        );
        told
    }

    /// Sends a hedged request ([`hedge`]) and writes the winning answer, tagged as a proxied
    /// response is (`x-request-id`, `x-multiverse-endpoint`, rate-limit and CORS headers); a
    /// gRPC answer with its trailers ([`hedge::grpc`]). Failures are the family's errors (a
    /// gRPC status on gRPC).
    async fn hedged(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
        after: Duration,
    ) -> Result<()> {
        let limit = self.config.max_body_bytes;
        let body = hedge::read_body(session, ctx.held.bytes(), limit).await?;
        let mut template = hedge::template(session.req_header(), body.len())?;
        let grpc = matches!(ctx.family, Family::Grpc(_));
        if grpc {
            hedge::grpc::template(&mut template)?;
        }
        ctx.id.write_upstream(&mut template)?;
        ctx.trace.write_upstream(&mut template)?;
        // In-flight counts of the attempts, freed together when the race is over.
        let mut guards = Vec::with_capacity(2);
        let mut tried = ctx.tried;
        let (first, guard) = match ctx.admitted.take() {
            Some(admitted) => admitted,
            None => {
                let Some(i) = pick_reserved(route, tried, &ctx.want, self.clock.now_ms()) else {
                    return Err(nothing_left(route, 503).into_pingora());
                };
                (
                    i,
                    InFlight::reserved(route, &route.endpoints[i], &self.metrics),
                )
            }
        };
        guards.push(guard);
        tried.mark(first);
        let want = ctx.want;
        let pick = || {
            let i = pick_reserved(route, tried, &want, self.clock.now_ms())?;
            tried.mark(i);
            guards.push(InFlight::reserved(
                route,
                &route.endpoints[i],
                &self.metrics,
            ));
            Some(i)
        };
        let attempt = hedge::Attempt {
            connector: &self.connector,
            route,
            defaults: &self.config.upstream,
            template: &template,
            body: &body,
            keyed: ctx.key.is_some(),
            grpc,
        };
        let budget = route.policy.max_retries;
        let outcome = hedge::race(&attempt, first, after, budget, pick).await;
        drop(guards);
        ctx.attempts = outcome.attempts;
        if outcome.hedged {
            self.metrics.hedge(&route.name);
        }
        let now = self.clock.now_ms();
        for failed in &outcome.failed {
            if let Some(e) = &failed.error {
                tracing::debug!(request_id = %ctx.id, endpoint = %route.endpoints[failed.index].id, error = %e, "hedged attempt failed");
            }
            self.outlier_failure(route, failed.index, now);
        }
        let Some(answer) = outcome.answer else {
            let status = outcome.failed.last().map_or(502, |f| f.status);
            if let Some(f) = outcome.failed.last() {
                ctx.endpoint = Some(f.index);
            }
            return Err(nothing_left(route, status).into_pingora());
        };
        ctx.endpoint = Some(answer.index);
        if outcome.hedged && answer.index != first {
            self.metrics.hedge_win(&route.name);
        }
        route.record_success(answer.index, &self.config.outlier, now);
        if route.policy.lb == LbStrategy::PeakEwma {
            let latency = u64::try_from(answer.to_header.as_millis()).unwrap_or(u64::MAX);
            route.endpoints[answer.index]
                .state
                .latency
                .observe(latency, now);
        }
        if let Some(usage) = ctx.usage.as_mut() {
            usage.feed(&answer.body);
        }
        let mut header = answer.header;
        header.insert_header(&id::NAME, ctx.id.value().clone())?;
        let endpoint = &route.endpoints[answer.index];
        header.insert_header(&ENDPOINT_HEADER, endpoint.id_header.clone())?;
        if let Some(rate) = &ctx.rate {
            rate.write(&mut header)?;
        }
        cors::decorate(&mut header, ctx.cors.as_ref())?;
        if grpc {
            hedge::grpc::write(session, header, answer.body, answer.trailers).await?;
        } else {
            let end = answer.body.is_empty();
            session.write_response_header(Box::new(header), end).await?;
            if !end {
                session.write_response_body(Some(answer.body), true).await?;
            }
        }
        ctx.forwarded.ended = true;
        Ok(())
    }

    /// Admits the request to `route` ([`admit`]); a refusal carries `Retry-After`.
    async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
    ) -> Result<()> {
        if !route.limited {
            return Ok(());
        }
        let priority = Priority::from_header(
            session
                .req_header()
                .headers
                .get(&self.config.priority_header)
                .map(|v| v.as_bytes()),
        );
        let now = || self.clock.now_ms();
        match admit::admit(route, &ctx.want, priority, &now, &self.metrics).await {
            Ok(slot) => {
                ctx.admitted = slot.map(|i| {
                    let guard = InFlight::reserved(route, &route.endpoints[i], &self.metrics);
                    (i, guard)
                });
                Ok(())
            }
            Err(e) => {
                let rate = ctx.rate.get_or_insert_with(Default::default);
                rate.retry_after = Some(match &e {
                    ProxyError::RateLimited { retry_after, .. } => *retry_after,
                    _ => admit::RETRY_AFTER,
                });
                Err(e.into_pingora())
            }
        }
    }

    /// Charges the tokens its response reported to the key's tokens-per-minute cell.
    fn charge_tokens(&self, ctx: &RequestCtx) {
        let (Some(key), Some(reader)) = (&ctx.key, &ctx.usage) else {
            return;
        };
        let Some((prompt, completion)) = reader.tokens() else {
            return;
        };
        if let Some(tpm) = key.state.effective(Leased::Tpm, key.tpm).filter(|t| *t > 0) {
            let now = self.clock.now_ms().saturating_mul(1_000_000);
            key.state
                .tokens
                .charge(u64::from(tpm), prompt.saturating_add(completion), now);
        }
    }

    /// Refuses a request over its client address's rate (`[limits] per_ip_rpm`).
    fn client_limit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), ProxyError> {
        let Some(limit) = &self.per_ip else {
            return Ok(());
        };
        let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Ok(());
        };
        let now = self.clock.now_ms().saturating_mul(1_000_000);
        match limit.take(ip, now) {
            Some(d) if !d.allowed => {
                let refused = auth::refuse(
                    Limit::ClientAddress,
                    d.retry_after_ns,
                    auth::RateHeaders::default(),
                );
                ctx.rate = Some(refused.rate);
                Err(refused.error)
            }
            _ => Ok(()),
        }
    }

    /// The request's route (`None`: answered from the table), or why it has none.
    async fn find_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Arc<Route>>> {
        let limit = self.config.max_body_bytes;
        let ready = self.state.is_ready();
        let plan = target::plan(&ctx.table, ready, ctx.family, session.req_header(), limit);
        let target = match plan.map_err(ProxyError::into_pingora)? {
            Plan::ModelsList => {
                let list = respond::models_list(&ctx.table, ctx.key.as_deref());
                respond::send_json(session, 200, list, ctx.cors.as_ref(), ctx.id.value()).await?;
                return Ok(None);
            }
            Plan::Route(target) => {
                ctx.want.affinity = self.session_affinity(session, &target.route);
                target
            }
            Plan::ReadBody => {
                let scan = self.config.affinity.scan;
                let mut prefix = ctx
                    .table
                    .has_prefix_affinity()
                    .then(|| PrefixHasher::new(scan));
                let model =
                    body::model_from_body(session, limit, &mut ctx.held, prefix.as_mut()).await?;
                let target =
                    target::by_model(&ctx.table, &model).map_err(ProxyError::into_pingora)?;
                ctx.want.affinity = self.session_affinity(session, &target.route);
                if let (None, Some(prefix)) = (ctx.want.affinity, prefix.as_mut()) {
                    if target.route.policy.lb == LbStrategy::PrefixAffinity {
                        let key = body::read_prefix(session, limit, &mut ctx.held, prefix).await?;
                        ctx.want.affinity = key.map(|key| self.affinity(key));
                    }
                }
                self.ask_stream_usage(session, ctx);
                target
            }
        };
        auth::authorize(ctx.key.as_deref(), &target.route.name)
            .map_err(ProxyError::into_pingora)?;
        let now = self.clock.now_ms();
        let route = target::admit(target, &mut ctx.want, now).map_err(ProxyError::into_pingora)?;
        if let Some(key) = &ctx.key {
            match auth::admit(key, now.saturating_mul(1_000_000)) {
                Ok((permit, rate)) => {
                    ctx.permit = Some(permit);
                    ctx.rate = (rate != auth::RateHeaders::default()).then_some(rate);
                }
                Err(refused) => {
                    ctx.rate = Some(refused.rate);
                    return Err(refused.error.into_pingora());
                }
            }
        }
        if ctx.family == Family::OpenAi {
            ctx.usage = Some(UsageReader::default());
        }
        Ok(Some(route))
    }

    /// Adds `stream_options.include_usage` to a streamed completion's body that routing holds
    /// whole, when the client did not ask ([`stream_usage`]).
    fn ask_stream_usage(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if !self.config.request_stream_usage
            || !stream_usage::path_streams(session.req_header().uri.path())
            || !session.is_body_done()
        {
            return;
        }
        let Some(held) = ctx.held.bytes() else {
            return;
        };
        if let Some(at) = stream_usage::ask_at(held) {
            let asked = stream_usage::with_ask(held, at);
            ctx.held.replace(asked);
            ctx.usage_asked = true;
        }
    }

    /// A `prefix_affinity` route's request keyed by its session header, when it has one.
    fn session_affinity(&self, session: &Session, route: &Route) -> Option<Affinity> {
        if route.policy.lb != LbStrategy::PrefixAffinity {
            return None;
        }
        let headers = &session.req_header().headers;
        let value = headers.get(&self.config.affinity.session_header)?;
        (!value.is_empty()).then(|| self.affinity(prefix_hash::session_key(value.as_bytes())))
    }

    fn affinity(&self, key: u64) -> Affinity {
        Affinity {
            key,
            load_factor: self.config.affinity.load_factor,
        }
    }

    fn may_retry(&self, session: &Session, ctx: &RequestCtx) -> bool {
        let route = ctx.route.as_deref();
        Attempted::of(session, route, &ctx.want, ctx.tried, ctx.attempts)
            .may_retry(self.clock.now_ms())
    }

    /// Counts a gateway failure of the current attempt's endpoint, once per attempt.
    fn count_failure(&self, ctx: &mut RequestCtx) {
        if !ctx.take_failure() {
            return;
        }
        let (Some(route), Some(index)) = (ctx.route.as_ref(), ctx.endpoint) else {
            return;
        };
        self.outlier_failure(route, index, self.clock.now_ms());
    }

    /// Records a gateway failure of `route.endpoints[index]`; an ejection is counted and logged.
    fn outlier_failure(&self, route: &Route, index: usize, now: u64) {
        match route.record_failure(index, &self.config.outlier, now) {
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
        let retry = allowed && self.may_retry(session, ctx);
        if retry {
            self.metrics.retry(ctx.model());
        }
        e.set_retry(retry);
    }
}
