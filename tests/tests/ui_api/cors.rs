//! The proxy's CORS (`[cors] allowed_origins`): preflights answered by the proxy, allowed
//! origins tagged on every response (SSE and the proxy's own errors included), others not.

use reqwest::header::HeaderMap;
use serde_json::json;

use super::*;

fn cors_headers(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-") || k.as_str() == "vary")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    v.sort();
    v
}

fn assert_allowed(h: &HeaderMap, what: &str) {
    assert_eq!(
        h.get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(UI),
        "{what}: {:?}",
        cors_headers(h)
    );
    assert!(
        h.get_all("vary").iter().any(|v| v == "Origin"),
        "{what}: Vary: Origin in {:?}",
        cors_headers(h)
    );
    assert_eq!(
        h.get("access-control-expose-headers")
            .map(|v| v.to_str().unwrap()),
        Some("x-multiverse-endpoint, x-request-id"),
        "{what}"
    );
}

fn assert_no_cors(h: &HeaderMap, what: &str) {
    let cors = cors_headers(h);
    assert!(
        cors.iter().all(|(k, v)| k == "vary" && v != "Origin"),
        "{what}: no CORS header: {cors:?}"
    );
}

#[tokio::test]
async fn the_proxy_answers_cors_for_allowed_origins_only() {
    let dir = temp_dir("ui-cors");
    let chat = MockOpenAi::start(
        &dir,
        "mock-cors",
        &[
            "--model",
            "demo",
            "--tokens",
            "5",
            "--chunk-interval-ms",
            "5",
        ],
    );
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("mock-cors", chat.addr, "healthy")],
    ) + &model_toml(
        "dead",
        "chat",
        "max_retries = 0",
        &[Ep::http("dead-1", try_free_addr().unwrap(), "unhealthy")],
    );
    let proxy = Proxy::start_standalone(
        &dir,
        "proxy-cors",
        &routes,
        &format!("[cors]\nallowed_origins = [\"http://127.0.0.1:1\", \"{UI}\"]"),
    )
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", proxy.url());
    let before = chat.stats(&c).await;

    // Preflight from the UI: answered by the proxy, never forwarded.
    let r = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", UI)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers().clone();
    assert_allowed(&h, "preflight");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allow = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow.contains("content-type") && allow.contains("authorization"),
        "{allow}"
    );
    assert_eq!(h["access-control-max-age"], "600");
    // From another origin: refused, no CORS header.
    let r = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_no_cors(r.headers(), "preflight from an unknown origin");
    let after = chat.stats(&c).await;
    assert_eq!(
        (before["connections"].clone(), before["requests"].clone()),
        (after["connections"].clone(), after["requests"].clone()),
        "preflights reached the backend: {before} -> {after}"
    );

    // A streamed reply to the UI: tagged, endpoint exposed.
    let body =
        json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = c
        .post(&url)
        .header("origin", UI)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_allowed(r.headers(), "SSE");
    assert_eq!(r.headers()["x-multiverse-endpoint"], "mock-cors");
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // The proxy's own answers: /v1/models, an unknown model (404), no healthy endpoint (503).
    let r = c
        .get(format!("{}/v1/models", proxy.url()))
        .header("origin", UI)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(r.headers(), "/v1/models");
    for (model, status) in [("nope", 404), ("dead", 503)] {
        let r = c
            .post(&url)
            .header("origin", UI)
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{model}");
        assert_allowed(r.headers(), model);
        let (_, err) = json_of(r).await;
        assert!(err["error"]["code"].is_string(), "{err}");
    }
    // Unknown origins and requests without an origin: no CORS header, same answer.
    for origin in [
        Some("http://evil.example"),
        Some("http://127.0.0.1:90000"),
        None,
    ] {
        let mut req = c.post(&url).json(&body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{origin:?}");
        assert_no_cors(r.headers(), &format!("{origin:?}"));
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }

    // Without [cors]: no CORS header, and a preflight is not answered as one.
    let plain = Proxy::start_standalone(&dir, "proxy-no-cors", &routes, "").await;
    let r = c
        .post(format!("{}/v1/chat/completions", plain.url()))
        .header("origin", UI)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_no_cors(r.headers(), "no [cors]");
    let r = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", plain.url()),
        )
        .header("origin", UI)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 204);
    assert_no_cors(r.headers(), "preflight without [cors]");

    // An invalid origin: the proxy refuses to start, naming the key and the file.
    let bad = dir.join("bad-cors.toml");
    std::fs::write(&bad, "[cors]\nallowed_origins = [\"http://ui.example/\"]\n").unwrap();
    let out = std::process::Command::new(bin("multiverse-proxy"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run multiverse-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad origin");
    assert!(
        stderr.contains("cors.allowed_origins[0]") && stderr.contains("bad-cors.toml"),
        "{stderr}"
    );
    let _ = Duration::ZERO;
}
