//! Where a request goes: the model's route in the table the request pinned, and maybe one pinned
//! endpoint of it. Decided from the request header and the table alone, so every branch is
//! unit-tested without a connection; only "read the body for `model`" is left to the caller.
//!
//! - OpenAI routes: the `x-model` header when present (the body is then never read), else the
//!   body's `model` field ([`Plan::ReadBody`]).
//! - TEI HTTP and gRPC: `x-instance` (one endpoint) and/or `x-model` headers (gRPC metadata),
//!   else the only model of the family's kinds.

use std::sync::Arc;

use http::HeaderMap;
use pingora_http::RequestHeader;

use crate::request::classify::Family;
use crate::request::error::ProxyError;
use crate::routing::pick::{any_eligible, Tried, Want};
use crate::routing::table::{Route, RoutingTable};

/// A route, and maybe one pinned endpoint of it (`x-instance`).
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<Route>,
    pub pinned: Option<usize>,
}

/// What the gateway does next with a classified request.
#[derive(Debug)]
pub enum Plan {
    /// Answer `GET /v1/models` from the table.
    ModelsList,
    /// Send it to this target.
    Route(Target),
    /// Read the body until `model` is known, then [`by_model`].
    ReadBody,
}

/// Decides from the request header: errors are the client's answer.
pub fn plan(
    table: &RoutingTable,
    ready: bool,
    family: Family,
    req: &RequestHeader,
    limit: usize,
) -> Result<Plan, ProxyError> {
    match family {
        Family::ModelsList => return Ok(Plan::ModelsList),
        Family::Unknown => {
            return Err(ProxyError::UnknownRoute {
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
            })
        }
        _ => {}
    }
    let headers = &req.headers;
    if !ready {
        return Err(ProxyError::NotReady);
    }
    if content_length(headers).is_some_and(|len| len > limit) {
        return Err(ProxyError::TooLarge(limit));
    }
    if family != Family::OpenAi {
        return from_headers(table, headers, family).map(Plan::Route);
    }
    match model_from_header(headers) {
        Some(model) => by_model(table, model).map(Plan::Route),
        None => Ok(Plan::ReadBody),
    }
}

/// The route of a model named by the client.
pub fn by_model(table: &RoutingTable, model: &str) -> Result<Target, ProxyError> {
    table
        .route(model)
        .map(|route| Target {
            route: route.clone(),
            pinned: None,
        })
        .ok_or_else(|| ProxyError::UnknownModel(model.to_string()))
}

/// Accepts a target if one of its endpoints can take the request now (pinning `want` to its
/// endpoint, if any); the route the request is then sent by.
pub fn admit(target: Target, want: &mut Want, now: u64) -> Result<Arc<Route>, ProxyError> {
    want.pinned = target.pinned;
    if any_eligible(&target.route, Tried::default(), want, now) {
        Ok(target.route)
    } else {
        Err(ProxyError::NoHealthyEndpoint(target.route.name.clone()))
    }
}

/// Resolves a TEI HTTP or gRPC request from its `x-instance` / `x-model` headers (metadata),
/// falling back to the only model of the family's kinds.
pub fn from_headers(
    table: &RoutingTable,
    headers: &HeaderMap,
    family: Family,
) -> Result<Target, ProxyError> {
    let (kinds, class) = (family.kinds(), family.class());
    if let Some(id) = header(headers, "x-instance") {
        let unknown_instance = || ProxyError::UnknownInstance(id.to_string());
        let (route, index) = match model_from_header(headers) {
            Some(m) => {
                let route = table
                    .route(m)
                    .ok_or_else(|| ProxyError::UnknownModel(m.to_string()))?;
                let index = route
                    .endpoints
                    .iter()
                    .position(|e| e.id == id)
                    .ok_or_else(unknown_instance)?;
                (route.clone(), index)
            }
            None => table.pinned(id).cloned().ok_or_else(unknown_instance)?,
        };
        return Ok(Target {
            route,
            pinned: Some(index),
        });
    }
    if let Some(model) = model_from_header(headers) {
        return by_model(table, model);
    }
    if kinds == 0 {
        return Err(ProxyError::ModelRequired);
    }
    table
        .sole(kinds, class)
        .map(|route| Target {
            route: route.clone(),
            pinned: None,
        })
        .ok_or(ProxyError::ModelRequired)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

/// The model named by the `x-model` header, if any.
pub fn model_from_header(headers: &HeaderMap) -> Option<&str> {
    header(headers, "x-model")
}

/// The request's declared body length, if any.
pub fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::fixtures::table_of;
    use crate::routing::table::{ModelKind, ProtoClass};
    use multiverse_proto::discovery::v1 as pb;

    const LIMIT: usize = 1000;
    const NOW: u64 = 1;

    fn ep(id: &str, port: u16, health: pb::HealthStatus, grpc: bool) -> pb::Endpoint {
        pb::Endpoint {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            health: health as i32,
            protocol: if grpc {
                pb::Protocol::Grpc
            } else {
                pb::Protocol::Http1
            } as i32,
            ..Default::default()
        }
    }

    fn model(name: &str, kind: pb::ModelKind, endpoints: Vec<pb::Endpoint>) -> pb::Model {
        pb::Model {
            name: name.into(),
            kind: kind as i32,
            endpoints,
            ..Default::default()
        }
    }

    /// chat (two endpoints, one unhealthy), an embedding model (HTTP and gRPC), a reranker
    /// (HTTP only) and a model whose only endpoint is draining.
    fn table() -> RoutingTable {
        use pb::HealthStatus::{Draining, Healthy, Unhealthy};
        table_of(vec![
            model(
                "chat",
                pb::ModelKind::Chat,
                vec![ep("c0", 1, Healthy, false), ep("c1", 2, Unhealthy, false)],
            ),
            model(
                "emb",
                pb::ModelKind::Embedding,
                vec![
                    ep("e-http", 3, Healthy, false),
                    ep("e-grpc", 4, Healthy, true),
                ],
            ),
            model(
                "rr",
                pb::ModelKind::Rerank,
                vec![ep("r0", 5, Healthy, false)],
            ),
            model(
                "gone",
                pb::ModelKind::Chat,
                vec![ep("g0", 6, Draining, false)],
            ),
        ])
    }

    /// A request header with these headers (method and path do not matter once classified).
    fn headers(pairs: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/any", None).expect("request");
        for (k, v) in pairs {
            req.insert_header(*k, *v).expect("header");
        }
        req
    }

    fn routed(plan: Result<Plan, ProxyError>) -> (String, Option<usize>) {
        match plan {
            Ok(Plan::Route(t)) => (t.route.name.clone(), t.pinned),
            other => panic!("expected a route, got {other:?}"),
        }
    }

    const EMBED: Family = Family::TeiHttp(ModelKind::Embedding.bit());

    #[test]
    fn models_list_and_unknown_routes_are_decided_before_readiness() {
        let t = RoutingTable::empty();
        let none = headers(&[]);
        assert!(matches!(
            plan(&t, false, Family::ModelsList, &none, LIMIT),
            Ok(Plan::ModelsList)
        ));
        let err = plan(&t, false, Family::Unknown, &none, LIMIT).unwrap_err();
        assert_eq!(err.to_string(), "No route for POST /any");
        assert_eq!(
            plan(&t, false, Family::OpenAi, &none, LIMIT).unwrap_err(),
            ProxyError::NotReady
        );
    }

    #[test]
    fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
        let t = table();
        let big = headers(&[("content-length", "1001"), ("x-model", "chat")]);
        for family in [Family::OpenAi, EMBED] {
            assert_eq!(
                plan(&t, true, family, &big, LIMIT).unwrap_err(),
                ProxyError::TooLarge(LIMIT)
            );
        }
        let at_limit = headers(&[("content-length", "1000"), ("x-model", "chat")]);
        assert_eq!(
            routed(plan(&t, true, Family::OpenAi, &at_limit, LIMIT)).0,
            "chat"
        );
    }

    #[test]
    fn openai_takes_x_model_or_reads_the_body() {
        let t = table();
        let named = headers(&[("x-model", "chat")]);
        assert_eq!(
            routed(plan(&t, true, Family::OpenAi, &named, LIMIT)),
            ("chat".into(), None)
        );
        assert!(matches!(
            plan(&t, true, Family::OpenAi, &headers(&[]), LIMIT),
            Ok(Plan::ReadBody)
        ));
        let empty = headers(&[("x-model", "")]);
        assert!(
            matches!(
                plan(&t, true, Family::OpenAi, &empty, LIMIT),
                Ok(Plan::ReadBody)
            ),
            "an empty x-model names nothing"
        );
        assert_eq!(
            plan(
                &t,
                true,
                Family::OpenAi,
                &headers(&[("x-model", "nope")]),
                LIMIT
            )
            .unwrap_err(),
            ProxyError::UnknownModel("nope".into())
        );
        assert_eq!(
            by_model(&t, "rr").map(|t| t.route.name.clone()),
            Ok("rr".into())
        );
    }

    #[test]
    fn tei_routes_by_instance_model_or_the_sole_model_of_its_kind() {
        let t = table();
        // x-instance alone finds its model; with x-model it must belong to that model.
        let pin = headers(&[("x-instance", "e-http")]);
        assert_eq!(
            routed(plan(&t, true, EMBED, &pin, LIMIT)),
            ("emb".into(), Some(0))
        );
        let both = headers(&[("x-instance", "e-grpc"), ("x-model", "emb")]);
        assert_eq!(
            routed(plan(&t, true, EMBED, &both, LIMIT)),
            ("emb".into(), Some(1))
        );
        let wrong = headers(&[("x-instance", "r0"), ("x-model", "emb")]);
        assert_eq!(
            plan(&t, true, EMBED, &wrong, LIMIT).unwrap_err(),
            ProxyError::UnknownInstance("r0".into())
        );
        let missing = headers(&[("x-instance", "zz")]);
        assert_eq!(
            plan(&t, true, EMBED, &missing, LIMIT).unwrap_err(),
            ProxyError::UnknownInstance("zz".into())
        );
        // No header: the only embedding model; a reranker for /rerank.
        assert_eq!(
            routed(plan(&t, true, EMBED, &headers(&[]), LIMIT)),
            ("emb".into(), None)
        );
        let rerank = Family::TeiHttp(ModelKind::Rerank.bit());
        assert_eq!(routed(plan(&t, true, rerank, &headers(&[]), LIMIT)).0, "rr");
        // gRPC: the reranker has no gRPC endpoint, so no sole model; non-tei services must
        // name one.
        let grpc_rerank = Family::Grpc(ModelKind::Rerank.bit());
        assert_eq!(
            plan(&t, true, grpc_rerank, &headers(&[]), LIMIT).unwrap_err(),
            ProxyError::ModelRequired
        );
        assert_eq!(
            plan(&t, true, Family::Grpc(0), &headers(&[]), LIMIT).unwrap_err(),
            ProxyError::ModelRequired
        );
        assert_eq!(
            routed(plan(
                &t,
                true,
                Family::Grpc(0),
                &headers(&[("x-model", "emb")]),
                LIMIT
            ))
            .0,
            "emb"
        );
    }

    #[test]
    fn admit_needs_an_endpoint_that_can_take_the_request_now() {
        let t = table();
        let mut http = Want {
            class: ProtoClass::Http,
            pinned: None,
            affinity: None,
        };
        let chat = by_model(&t, "chat").expect("chat");
        assert_eq!(
            admit(chat, &mut http, NOW).map(|r| r.name.clone()),
            Ok("chat".into())
        );
        let gone = by_model(&t, "gone").expect("gone");
        assert_eq!(
            admit(gone, &mut http, NOW).unwrap_err(),
            ProxyError::NoHealthyEndpoint("gone".into()),
            "draining endpoints take no new requests"
        );
        // Pinned to the unhealthy endpoint: refused, although the model has a healthy one.
        let pinned = Target {
            pinned: Some(1),
            ..by_model(&t, "chat").expect("chat")
        };
        assert!(admit(pinned, &mut http, NOW).is_err());
        assert_eq!(http.pinned, Some(1), "the pin is kept for the attempts");
        // gRPC traffic needs a gRPC endpoint.
        let mut grpc = Want {
            class: ProtoClass::Grpc,
            pinned: None,
            affinity: None,
        };
        assert!(admit(by_model(&t, "rr").expect("rr"), &mut grpc, NOW).is_err());
        assert!(admit(by_model(&t, "emb").expect("emb"), &mut grpc, NOW).is_ok());
    }
}
