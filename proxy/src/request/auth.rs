//! The request's inference key: found, checked against the model, and admitted by its limits.
//!
//! The presented secret (`Authorization: Bearer`, `api-key`, `x-api-key`; gRPC's
//! `authorization` metadata is the same HTTP/2 header) is hashed once with SHA-256 and looked up
//! in the table's [`KeySet`]: one hash of ~70 bytes and one lock-free map read, no allocation.
//! Limits are atomics ([`crate::routing::limits`]). Every refusal is a [`ProxyError`]; a 429
//! also carries the [`RateHeaders`] the client is told.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use multiverse_common::keys::hash_secret;
use pingora_http::{RequestHeader, ResponseHeader, StaticHeaderName};

use crate::request::error::{retry_after_secs, Limit, ProxyError};
use crate::routing::keys::{ApiKey, KeySet};
use crate::routing::limits::{Cell, Decision, Leased};

/// The credential headers a client may send its key in (`Authorization` first); all are
/// removed before the request goes upstream when the gateway checked a key. Typed names: a
/// lookup or a removal parses nothing.
pub static CREDENTIAL_HEADERS: [StaticHeaderName; 3] = [
    StaticHeaderName::new("authorization"),
    StaticHeaderName::new("api-key"),
    StaticHeaderName::new("x-api-key"),
];

/// The secret a request presents, if any.
pub fn credential(req: &RequestHeader) -> Option<&[u8]> {
    let [authorization, others @ ..] = &CREDENTIAL_HEADERS;
    if let Some(v) = req.headers.get(authorization.name()) {
        let v = v.as_bytes();
        let token = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &v[7..],
            _ => v,
        };
        return Some(token.trim_ascii());
    }
    others
        .iter()
        .find_map(|h| req.headers.get(h.name()))
        .map(|v| v.as_bytes().trim_ascii())
}

/// The request's key (`None` when no key is required), or why it is refused. `unix_ms` is read
/// only for a key that expires.
pub fn authenticate(
    keys: &KeySet,
    req: &RequestHeader,
    unix_ms: impl FnOnce() -> u64,
) -> Result<Option<Arc<ApiKey>>, ProxyError> {
    if !keys.required {
        return Ok(None);
    }
    let secret = credential(req)
        .filter(|s| !s.is_empty())
        .ok_or(ProxyError::MissingApiKey)?;
    let key = keys
        .get(&hash_secret(secret))
        .ok_or(ProxyError::InvalidApiKey)?;
    if key.expires_at_unix_ms != 0 && key.expired(unix_ms()) {
        return Err(ProxyError::ExpiredApiKey);
    }
    Ok(Some(key.clone()))
}

/// Whether `key` may use `model`.
pub fn authorize(key: Option<&ApiKey>, model: &str) -> Result<(), ProxyError> {
    match key {
        Some(k) if !k.allows(model) => Err(ProxyError::ModelNotAllowed(model.to_string())),
        _ => Ok(()),
    }
}

/// A request admitted by its key's limits: counted in flight until dropped.
#[derive(Debug)]
pub struct Permit {
    key: Arc<ApiKey>,
}

impl Permit {
    /// The key.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.key.state.leave();
    }
}

/// The `x-ratelimit-*` values of one admission (OpenAI's names); written on every response of
/// a key with limits, and on its 429s with `Retry-After`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Limited>,
    pub tokens: Option<Limited>,
    /// Set on a refusal.
    pub retry_after: Option<Duration>,
}

/// One limit of an admission: the limit a minute this proxy enforced, and what its cell said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub limit: u32,
    /// `limit` as a header value, made once per key (a clone is a reference count); `None`
    /// when a lease replaced the key's own limit (then written per response).
    pub value: Option<HeaderValue>,
    pub decision: Decision,
}

/// One limit's header names, typed once: an insert neither parses nor allocates for the name.
struct Names {
    limit: StaticHeaderName,
    remaining: StaticHeaderName,
    reset: StaticHeaderName,
}

static REQUESTS: Names = Names {
    limit: StaticHeaderName::new("x-ratelimit-limit-requests"),
    remaining: StaticHeaderName::new("x-ratelimit-remaining-requests"),
    reset: StaticHeaderName::new("x-ratelimit-reset-requests"),
};
static TOKENS: Names = Names {
    limit: StaticHeaderName::new("x-ratelimit-limit-tokens"),
    remaining: StaticHeaderName::new("x-ratelimit-remaining-tokens"),
    reset: StaticHeaderName::new("x-ratelimit-reset-tokens"),
};
static RETRY_AFTER: StaticHeaderName = StaticHeaderName::new("retry-after");
static RETRY_AFTER_MS: StaticHeaderName = StaticHeaderName::new("retry-after-ms");

impl RateHeaders {
    /// Adds the headers to `resp`. Per limit: the limit is the key's ready value (or formatted
    /// on the stack under a lease), the remaining count and the reset time are formatted on
    /// the stack; each value is one allocation (`HeaderValue` owns its bytes); the names are
    /// static (no parse, no allocation).
    pub fn write(&self, resp: &mut ResponseHeader) -> pingora_error::Result<()> {
        for (names, cell) in [(&REQUESTS, &self.requests), (&TOKENS, &self.tokens)] {
            let Some(cell) = cell else { continue };
            match &cell.value {
                Some(v) => resp.insert_header(&names.limit, v.clone())?,
                None => resp.insert_header(&names.limit, itoa::Buffer::new().format(cell.limit))?,
            }
            let remaining = cell.decision.remaining;
            resp.insert_header(&names.remaining, itoa::Buffer::new().format(remaining))?;
            let reset = GoDuration::new(Duration::from_nanos(cell.decision.reset_ns));
            resp.insert_header(&names.reset, reset.as_bytes())?;
        }
        if let Some(after) = self.retry_after {
            let secs = retry_after_secs(after);
            resp.insert_header(&RETRY_AFTER, itoa::Buffer::new().format(secs))?;
            // What the openai SDKs read first, to the millisecond.
            let ms = after.as_millis().max(1);
            resp.insert_header(&RETRY_AFTER_MS, itoa::Buffer::new().format(ms))?;
        }
        Ok(())
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*` (Go's format: `20ms`, `1.5s`, `6m0s`),
/// formatted into a stack buffer.
pub struct GoDuration {
    buf: [u8; 48],
    len: usize,
}

impl GoDuration {
    /// `d` formatted (whole milliseconds; under a second as `…ms`).
    pub fn new(d: Duration) -> Self {
        let mut out = GoDuration {
            buf: [0; 48],
            len: 0,
        };
        let ms = d.as_millis();
        if ms < 1000 {
            out.number(ms);
            out.push(b"ms");
            return out;
        }
        let minutes = ms / 60_000;
        if minutes > 0 {
            out.number(minutes);
            out.push(b"m");
        }
        let rest = ms % 60_000;
        out.number(rest / 1000);
        let frac = (rest % 1000) as u16;
        if frac != 0 {
            let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| b'0' + d as u8);
            let used = if frac % 100 == 0 {
                1
            } else if frac % 10 == 0 {
                2
            } else {
                3
            };
            out.push(b".");
            out.push(&digits[..used]);
        }
        out.push(b"s");
        out
    }

    /// The text (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// At most 39 digits (`u128::MAX`) and five more bytes fit the buffer.
    fn number(&mut self, n: u128) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..n]);
        self.len = end;
    }
}

/// [`GoDuration`] as a `String` (for messages and tests).
pub fn go_duration(d: Duration) -> String {
    String::from_utf8_lossy(GoDuration::new(d).as_bytes()).into_owned()
}

/// A request over one of its key's limits: the error and the headers it is answered with.
#[derive(Debug)]
pub struct Refused {
    pub error: ProxyError,
    pub rate: RateHeaders,
}

/// Admits a request of `key` at `now_ns` (gateway clock) by its concurrency, request and
/// token limits, or refuses it with the limit it is over and when to come back (boxed: a
/// refusal is the rare path).
pub fn admit(key: &Arc<ApiKey>, now_ns: u64) -> Result<(Permit, RateHeaders), Box<Refused>> {
    let result = admit_limits(key, now_ns);
    let counter = match &result {
        Ok(_) => &key.state.admitted,
        Err(_) => &key.state.refused,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    result
}

fn admit_limits(key: &Arc<ApiKey>, now_ns: u64) -> Result<(Permit, RateHeaders), Box<Refused>> {
    let state = &key.state;
    let mut rate = RateHeaders::default();
    if let Some(tpm) = state.effective(Leased::Tpm, key.tpm) {
        let d = cell_or_none(&state.tokens, tpm, now_ns, false);
        rate.tokens = Some(Limited {
            limit: tpm,
            value: (tpm == key.tpm).then(|| key.tpm_value.clone()),
            decision: d,
        });
        if !d.allowed {
            return Err(refuse(Limit::Tokens, d.retry_after_ns, rate));
        }
    }
    if !state.enter(state.effective(Leased::Concurrent, key.max_concurrent)) {
        // No time to give: a second is a reasonable pause for a request to finish.
        return Err(refuse(Limit::Concurrent, 1_000_000_000, rate));
    }
    let permit = Permit { key: key.clone() };
    if let Some(rpm) = state.effective(Leased::Rpm, key.rpm) {
        let d = cell_or_none(&state.requests, rpm, now_ns, true);
        rate.requests = Some(Limited {
            limit: rpm,
            value: (rpm == key.rpm).then(|| key.rpm_value.clone()),
            decision: d,
        });
        if !d.allowed {
            return Err(refuse(Limit::Requests, d.retry_after_ns, rate));
        }
    }
    Ok((permit, rate))
}

/// Takes one request (`take`) or checks for one token from `cell` at `limit` a minute; a zero
/// share (leased to other proxies) admits nothing and asks for a second's pause.
fn cell_or_none(cell: &Cell, limit: u32, now_ns: u64, take: bool) -> Decision {
    if limit == 0 {
        return Decision {
            allowed: false,
            remaining: 0,
            reset_ns: 0,
            retry_after_ns: 1_000_000_000,
        };
    }
    if take {
        cell.take(u64::from(limit), 1, now_ns)
    } else {
        cell.peek(u64::from(limit), now_ns)
    }
}

pub fn refuse(limit: Limit, retry_after_ns: u64, mut rate: RateHeaders) -> Box<Refused> {
    let retry_after = Duration::from_nanos(retry_after_ns.max(1_000_000));
    rate.retry_after = Some(retry_after);
    Box::new(Refused {
        error: ProxyError::RateLimited { limit, retry_after },
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::keys::{KeySpec, PlaneAuth};
    use multiverse_common::keys::hash_secret;
    use std::collections::HashMap;

    fn keys(require: bool, models: &[&str], rpm: u32, expires: u64) -> KeySet {
        let plane = PlaneAuth {
            require_keys: require,
            keys: vec![KeySpec {
                id: "k1".into(),
                hash: hash_secret(b"mv-good"),
                models: models.iter().map(|m| m.to_string()).collect(),
                rpm,
                tpm: 0,
                max_concurrent: 0,
                expires_at_unix_ms: expires,
            }],
        };
        KeySet::merge([&plane].into_iter(), &mut HashMap::new())
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("req");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn every_credential_header_is_read() {
        let set = keys(true, &[], 0, 0);
        for h in [
            ("authorization", "Bearer mv-good"),
            ("authorization", "bearer  mv-good "),
            ("api-key", "mv-good"),
            ("x-api-key", "mv-good"),
        ] {
            let key = authenticate(&set, &req(&[h]), || 0).expect("accepted");
            assert_eq!(key.map(|k| k.id.clone()).as_deref(), Some("k1"), "{h:?}");
        }
        let refused = |h: &[(&str, &str)]| authenticate(&set, &req(h), || 0).unwrap_err();
        assert_eq!(refused(&[]), ProxyError::MissingApiKey);
        assert_eq!(
            refused(&[("authorization", "Bearer ")]),
            ProxyError::MissingApiKey
        );
        assert_eq!(
            refused(&[("authorization", "Bearer mv-bad")]),
            ProxyError::InvalidApiKey
        );
        assert_eq!(
            refused(&[("x-api-key", "mv-goo")]),
            ProxyError::InvalidApiKey
        );
        assert_eq!(ProxyError::InvalidApiKey.status(), 401);
        assert_eq!(
            ProxyError::InvalidApiKey.grpc_code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn open_mode_asks_nothing_and_expiry_is_checked() {
        let open = keys(false, &[], 0, 0);
        assert!(authenticate(&open, &req(&[]), || 0)
            .expect("open")
            .is_none());
        let expiring = keys(true, &[], 0, 1000);
        let r = req(&[("api-key", "mv-good")]);
        assert!(authenticate(&expiring, &r, || 999).is_ok());
        assert_eq!(
            authenticate(&expiring, &r, || 1000).unwrap_err(),
            ProxyError::ExpiredApiKey
        );
    }

    #[test]
    fn models_are_checked_and_limits_refuse_with_headers() {
        let set = keys(true, &["demo"], 2, 0);
        let key = authenticate(&set, &req(&[("api-key", "mv-good")]), || 0)
            .expect("ok")
            .expect("key");
        assert!(authorize(Some(&key), "demo").is_ok());
        let err = authorize(Some(&key), "other").unwrap_err();
        assert_eq!((err.status(), err.code()), (403, "model_not_allowed"));
        assert_eq!(err.grpc_code(), tonic::Code::PermissionDenied);
        let now = 1_000_000_000;
        let (_p1, r1) = admit(&key, now).expect("first");
        let r1 = r1.requests.expect("requests");
        assert_eq!((r1.limit, r1.decision.remaining), (2, 1));
        assert_eq!(r1.value.as_ref().map(|v| v.as_bytes()), Some(&b"2"[..]));
        let (_p2, _) = admit(&key, now).expect("second");
        let refused = admit(&key, now).expect_err("third");
        let (err, rate) = (refused.error, refused.rate);
        assert_eq!(
            (err.status(), err.code(), err.kind()),
            (429, "rate_limit_exceeded", "requests")
        );
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(rate.retry_after, Some(Duration::from_secs(30)));
        let mut resp = ResponseHeader::build(429, None).expect("resp");
        rate.write(&mut resp).expect("headers");
        let h = |n: &str| {
            resp.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        assert_eq!(h("retry-after").as_deref(), Some("30"));
        assert_eq!(h("x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(h("x-ratelimit-remaining-requests").as_deref(), Some("0"));
        assert_eq!(h("x-ratelimit-reset-requests").as_deref(), Some("1m0s"));
        assert_eq!(
            key.state
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the refused request is not in flight"
        );
    }

    #[test]
    fn durations_read_as_openai_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(20)), "20ms");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(61_250)), "1m1.25s");
        assert_eq!(go_duration(Duration::ZERO), "0ms");
        assert_eq!(go_duration(Duration::from_nanos(999_999_999)), "999ms");
        assert_eq!(go_duration(ms(59_999)), "59.999s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(60_500)), "1m0.5s");
        assert_eq!(go_duration(ms(3_600_010)), "60m0.01s");
        assert_eq!(
            go_duration(Duration::from_nanos(u64::MAX)),
            "307445734m33.709s"
        );
        assert_eq!(go_duration(Duration::MAX), "307445734561825860m15.999s");
    }

    #[test]
    fn headers_of_an_admission_read_the_same_with_or_without_a_lease() {
        let headers = |rate: &RateHeaders| {
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            rate.write(&mut resp).expect("headers");
            let mut all: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            all.sort();
            all
        };
        let decision = Decision {
            allowed: true,
            remaining: 41,
            reset_ns: 1_500_000_000,
            retry_after_ns: 0,
        };
        let own = RateHeaders {
            requests: Some(Limited {
                limit: 42,
                value: Some(HeaderValue::from(42u32)),
                decision,
            }),
            tokens: Some(Limited {
                limit: 1000,
                value: None,
                decision: Decision {
                    remaining: 999,
                    reset_ns: 60_000_000,
                    ..decision
                },
            }),
            retry_after: None,
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let expected = vec![
            pair("x-ratelimit-limit-requests", "42"),
            pair("x-ratelimit-limit-tokens", "1000"),
            pair("x-ratelimit-remaining-requests", "41"),
            pair("x-ratelimit-remaining-tokens", "999"),
            pair("x-ratelimit-reset-requests", "1.5s"),
            pair("x-ratelimit-reset-tokens", "60ms"),
        ];
        assert_eq!(headers(&own), expected);
        let leased = RateHeaders {
            requests: own.requests.clone().map(|l| Limited { value: None, ..l }),
            ..own.clone()
        };
        assert_eq!(headers(&leased), expected, "a lease formats the same value");
        let refused = RateHeaders {
            retry_after: Some(Duration::from_micros(1_500_400)),
            ..own
        };
        let all = headers(&refused);
        assert!(all.contains(&pair("retry-after", "2")), "{all:?}");
        assert!(all.contains(&pair("retry-after-ms", "1500")), "{all:?}");
    }
}
