//! CORS: browsers on the origins of `[cors] allowed_origins` (the web UI's playground) may call
//! the proxy. The proxy answers their preflights itself (never forwarded) and tags every
//! response to them, the proxy's own errors and SSE streams included, with
//! `Access-Control-Allow-Origin: <origin>`, `Vary: Origin` and
//! `Access-Control-Expose-Headers: x-multiverse-endpoint, x-request-id`. Any other origin gets
//! no CORS header (so the browser withholds the response from its page), and its preflight a
//! 403.
//!
//! Cost on the request path: nothing when the list is empty (no header is looked at); otherwise
//! one header lookup (`Origin`) and a byte comparison per allowed origin; on an allowed
//! origin's response three header inserts of values built when the config loaded (reference
//! counted, no allocation).

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_LENGTH, ORIGIN, VARY,
};
use http::{HeaderValue, Method};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Methods a browser may use (the OpenAI and TEI routes are GET and POST).
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a browser may send (the playground sends both; OpenAI SDKs send the first).
const ALLOW_HEADERS: &str =
    "authorization, content-type, x-model, x-instance, x-request-id, traceparent, tracestate";
/// How long a browser may cache a preflight's answer (seconds).
const MAX_AGE: &str = "600";
/// Response headers a page may read (which endpoint served the reply).
const EXPOSE_HEADERS: &str = "x-multiverse-endpoint, x-request-id";

/// The allowed origins, as the header values echoed to them.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    allowed: Box<[HeaderValue]>,
}

/// What the proxy does with a request's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An ordinary request: its response carries the origin's headers when it is allowed.
    Pass(Option<HeaderValue>),
    /// A preflight: answered now (204 with the headers for an allowed origin, else 403).
    Preflight(Option<HeaderValue>),
}

impl Cors {
    /// The policy for `origins` (already validated by the config: `scheme://host[:port]`).
    pub fn new(origins: &[String]) -> std::result::Result<Self, String> {
        let allowed = origins
            .iter()
            .map(|o| {
                let v = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(o.as_bytes()))
                    .map_err(|_| format!("`{o}` is not a valid header value"))?;
                // The first clone of a vector-backed `Bytes` makes it shared; done here, every
                // later clone (one per response) is a reference count increment.
                drop(v.clone());
                Ok(v)
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Cors {
            allowed: allowed.into(),
        })
    }

    /// No origin is allowed: the proxy does no CORS work at all.
    pub fn is_off(&self) -> bool {
        self.allowed.is_empty()
    }

    /// The request's verdict (`Pass(None)` without a lookup when the list is empty).
    pub fn verdict(&self, req: &RequestHeader) -> Verdict {
        if self.allowed.is_empty() {
            return Verdict::Pass(None);
        }
        let allowed = req.headers.get(ORIGIN).and_then(|origin| {
            self.allowed
                .iter()
                .find(|a| a.as_bytes() == origin.as_bytes())
                .cloned()
        });
        if req.method == Method::OPTIONS && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            Verdict::Preflight(allowed)
        } else {
            Verdict::Pass(allowed)
        }
    }
}

impl Cors {
    /// The request phase's one call: answers a preflight (true: answered) or notes in `origin`
    /// the allowed origin its response is tagged for.
    pub async fn on_request(
        &self,
        session: &mut Session,
        origin: &mut Option<HeaderValue>,
    ) -> Result<bool> {
        match self.verdict(session.req_header()) {
            Verdict::Pass(allowed) => {
                *origin = allowed;
                Ok(false)
            }
            Verdict::Preflight(allowed) => {
                answer_preflight(session, allowed.as_ref()).await?;
                Ok(true)
            }
        }
    }
}

/// Adds the headers of an allowed origin to a response (`Vary` is appended: an upstream's own
/// `Vary` stays).
pub fn decorate(resp: &mut ResponseHeader, origin: Option<&HeaderValue>) -> Result<()> {
    let Some(origin) = origin else {
        return Ok(());
    };
    resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    resp.append_header(VARY, HeaderValue::from_static("Origin"))?;
    resp.insert_header(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    )?;
    Ok(())
}

/// Answers a preflight: `204` with the allowed methods and headers for an allowed origin,
/// `403` with no CORS header otherwise (the browser then refuses the real request).
pub async fn answer_preflight(session: &mut Session, origin: Option<&HeaderValue>) -> Result<()> {
    let status = if origin.is_some() { 204 } else { 403 };
    let mut resp = ResponseHeader::build(status, Some(8))?;
    if origin.is_some() {
        decorate(&mut resp, origin)?;
        resp.insert_header(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        )?;
        resp.insert_header(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        )?;
        resp.insert_header(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE))?;
    }
    resp.insert_header(CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    session.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/v1/chat/completions", None).expect("header");
        for (k, v) in headers {
            r.insert_header(*k, v.to_string()).expect("header");
        }
        r
    }

    const UI: &str = "http://127.0.0.1:9000";

    #[test]
    fn an_empty_list_never_looks() {
        let cors = Cors::new(&[]).expect("policy");
        assert!(cors.is_off());
        let r = request(
            "OPTIONS",
            &[("origin", UI), ("access-control-request-method", "POST")],
        );
        assert_eq!(cors.verdict(&r), Verdict::Pass(None));
    }

    #[test]
    fn exact_origins_only() {
        let cors = Cors::new(&[UI.to_string()]).expect("policy");
        let ui = HeaderValue::from_static(UI);
        assert_eq!(
            cors.verdict(&request("POST", &[("origin", UI)])),
            Verdict::Pass(Some(ui.clone()))
        );
        for other in [
            "http://127.0.0.1:9001",
            "https://127.0.0.1:9000",
            "http://127.0.0.1:9000/",
            "null",
        ] {
            assert_eq!(
                cors.verdict(&request("POST", &[("origin", other)])),
                Verdict::Pass(None),
                "{other}"
            );
        }
        assert_eq!(cors.verdict(&request("POST", &[])), Verdict::Pass(None));
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        assert_eq!(
            cors.verdict(&request("OPTIONS", &[("origin", UI)])),
            Verdict::Pass(Some(ui.clone()))
        );
        assert_eq!(
            cors.verdict(&request(
                "OPTIONS",
                &[("origin", UI), ("access-control-request-method", "POST")]
            )),
            Verdict::Preflight(Some(ui))
        );
        assert_eq!(
            cors.verdict(&request(
                "OPTIONS",
                &[
                    ("origin", "http://evil.example"),
                    ("access-control-request-method", "POST")
                ]
            )),
            Verdict::Preflight(None)
        );
    }

    #[test]
    fn decorate_adds_the_three_headers_and_keeps_vary() {
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.insert_header("vary", "accept-encoding").expect("vary");
        decorate(&mut resp, Some(&HeaderValue::from_static(UI))).expect("decorate");
        assert_eq!(resp.headers["access-control-allow-origin"], UI);
        assert_eq!(
            resp.headers["access-control-expose-headers"],
            "x-multiverse-endpoint, x-request-id"
        );
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "Origin"]);
        let mut plain = ResponseHeader::build(200, None).expect("header");
        decorate(&mut plain, None).expect("decorate");
        assert!(plain.headers.is_empty());
    }
}
