//! One custom HTTP check ([`ProbeSpec`]): `method url` with the spec's headers and body must
//! answer the expected status (default any 2xx) within the timeout and, with `json_pointer`,
//! hold a value there (equal to `json_equals` when given). Shared by TEI instances
//! (`instances::probe`) and external backends (`backends::probe`), with the rules that check
//! a spec ([`validate`]).

use std::time::Duration;

use crate::store::ProbeSpec;

/// Why a check failed: the HTTP status when one came back, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub status: Option<u16>,
    pub reason: String,
}

impl Failed {
    fn new(status: Option<u16>, reason: String) -> Self {
        Self { status, reason }
    }
}

/// Runs `spec` against `url` (the spec's path already joined to it); `bearer` is sent as
/// `Authorization: Bearer` unless the spec sets its own `authorization` header. `Ok` is the
/// status received.
pub async fn check(
    http: &reqwest::Client,
    url: &str,
    spec: &ProbeSpec,
    default_timeout: Duration,
    bearer: Option<&str>,
) -> Result<u16, Failed> {
    let timeout = spec
        .timeout_ms
        .map_or(default_timeout, Duration::from_millis);
    let what = format!("{} {}", spec.method, spec.path);
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| Failed::new(None, format!("{what}: bad method")))?;
    let mut req = http.request(method, url).timeout(timeout);
    let has = |name: &str| spec.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    if let Some(key) = bearer.filter(|_| !has("authorization")) {
        req = req.bearer_auth(key);
    }
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &spec.body {
        if !has("content-type") {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.clone());
    }
    let resp = req.send().await.map_err(|e| {
        let reason = if e.is_timeout() {
            format!("{what} timed out after {timeout:?}")
        } else if e.is_connect() {
            "connection refused".into()
        } else {
            format!("{what} failed: {e}")
        };
        Failed::new(None, reason)
    })?;
    let status = resp.status().as_u16();
    let ok = match spec.expected_status {
        Some(want) => status == want,
        None => (200..300).contains(&status),
    };
    if !ok {
        let want = spec
            .expected_status
            .map_or("2xx".to_string(), |s| s.to_string());
        return Err(Failed::new(
            Some(status),
            format!("{what} answered {status}, expected {want}"),
        ));
    }
    let Some(pointer) = &spec.json_pointer else {
        return Ok(status);
    };
    let fail = |reason: String| Err(Failed::new(Some(status), reason));
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(e) => return fail(format!("{what}: the body is not JSON ({e})")),
    };
    match (body.pointer(pointer), &spec.json_equals) {
        (None | Some(serde_json::Value::Null), _) => {
            fail(format!("{what}: no {pointer} in the body"))
        }
        (Some(v), Some(want)) => {
            let got = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            if &got == want {
                Ok(status)
            } else {
                fail(format!("{what}: {pointer} is {got:?}, expected {want:?}"))
            }
        }
        (Some(_), None) => Ok(status),
    }
}

/// Checks one probe spec; `Err(field, message)` names the field under `probes.<kind>.`.
pub fn validate(kind: &str, s: &ProbeSpec) -> Result<(), String> {
    let at = |f: &str| format!("`probes.{kind}.{f}`");
    if !s.path.starts_with('/') || s.path.contains(char::is_whitespace) {
        return Err(format!("{} must be a path starting with /", at("path")));
    }
    if !["GET", "POST", "PUT", "HEAD"].contains(&s.method.as_str()) {
        return Err(format!("{} must be GET, POST, PUT or HEAD", at("method")));
    }
    if s.expected_status.is_some_and(|c| !(100..=599).contains(&c)) {
        return Err(format!("{} must be 100-599", at("expected_status")));
    }
    if s.timeout_ms == Some(0) {
        return Err(format!("{} must be greater than 0", at("timeout_ms")));
    }
    if s.json_pointer
        .as_deref()
        .is_some_and(|p| !p.is_empty() && !p.starts_with('/'))
    {
        return Err(format!("{} must start with /", at("json_pointer")));
    }
    if s.json_equals.is_some() && s.json_pointer.is_none() {
        return Err(format!("{} needs json_pointer", at("json_equals")));
    }
    for (k, v) in &s.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            return Err(format!("{} `{k}` is not a valid header", at("headers")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> ProbeSpec {
        ProbeSpec {
            path: path.into(),
            method: "GET".into(),
            expected_status: None,
            headers: Default::default(),
            body: None,
            timeout_ms: None,
            json_pointer: None,
            json_equals: None,
        }
    }

    #[test]
    fn specs_are_checked_by_field() {
        validate("readiness", &spec("/health")).expect("valid");
        let e = validate("readiness", &spec("health")).unwrap_err();
        assert!(e.contains("`probes.readiness.path`"), "{e}");
        let mut s = spec("/x");
        s.method = "DELETE".into();
        assert!(validate("liveness", &s)
            .unwrap_err()
            .contains("probes.liveness.method"));
        let mut s = spec("/x");
        s.json_equals = Some("ok".into());
        assert!(validate("startup", &s).unwrap_err().contains("json_equals"));
        let mut s = spec("/x");
        s.headers.insert("bad header".into(), "v".into());
        assert!(validate("startup", &s).unwrap_err().contains("headers"));
    }

    #[tokio::test]
    async fn checks_status_json_and_sends_the_key() {
        let addr = crate::testing::serve("127.0.0.1:0".parse().expect("addr"), |req| async move {
            let auth = req
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            let body = serde_json::json!({"status": "ready", "n": 3, "auth": auth});
            (200, body.to_string())
        })
        .await;
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/info");
        let t = Duration::from_secs(2);
        let mut s = spec("/info");
        assert_eq!(check(&http, &url, &s, t, None).await, Ok(200));
        s.json_pointer = Some("/status".into());
        s.json_equals = Some("ready".into());
        assert_eq!(check(&http, &url, &s, t, None).await, Ok(200));
        let mut auth = spec("/info");
        auth.json_pointer = Some("/auth".into());
        auth.json_equals = Some("Bearer k".into());
        assert_eq!(check(&http, &url, &auth, t, Some("k")).await, Ok(200));
        assert!(check(&http, &url, &auth, t, None).await.is_err());
        auth.headers
            .insert("Authorization".into(), "Bearer own".into());
        assert!(
            check(&http, &url, &auth, t, Some("k")).await.is_err(),
            "the spec's own header wins over the backend's key"
        );
        s.json_equals = Some("loading".into());
        let e = check(&http, &url, &s, t, None).await.unwrap_err();
        assert_eq!(e.status, Some(200));
        assert!(e.reason.contains("expected \"loading\""), "{e:?}");
        s.json_pointer = Some("/n".into());
        s.json_equals = Some("3".into());
        assert_eq!(check(&http, &url, &s, t, None).await, Ok(200));
        s.json_pointer = Some("/missing".into());
        s.json_equals = None;
        assert!(check(&http, &url, &s, t, None).await.is_err());
        let mut s = spec("/info");
        s.expected_status = Some(204);
        let e = check(&http, &url, &s, t, None).await.unwrap_err();
        assert!(e.reason.contains("answered 200, expected 204"), "{e:?}");
    }
}
