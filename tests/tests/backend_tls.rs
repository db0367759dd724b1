//! TLS to backends, through real processes: a standalone proxy trusting a test CA
//! (`[upstream] tls_ca_file`) proxies to a `mock-openai --tls-cert/--tls-key` whose certificate
//! that CA signed for the endpoint's host; a backend whose certificate another CA signed, and
//! one reached under a host name its certificate does not carry (SNI and hostname
//! verification use the endpoint's `host`), fail with a 502 in OpenAI's format and a log line
//! naming the endpoint. Through a control plane: a backend registered as `https://` is admitted
//! only when its certificate verifies against `[health] tls_ca_file` (another CA's: 503
//! `BACKEND_UNAVAILABLE`), and is then proxied by a proxy trusting the same CA. Certificates
//! come from CAs generated per test.

use std::net::SocketAddr;

use multiverse_tests::certs::TestCa;
use multiverse_tests::*;
use serde_json::{json, Value};

/// A `[[models]]` entry of `name` served over TLS by endpoint `id` at `addr` as `host`.
fn tls_model(name: &str, id: &str, addr: SocketAddr, host: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nkind = \"chat\"\nmax_retries = 0\n\n\
         [[models.endpoints]]\nid = \"{id}\"\naddress = \"{addr}\"\ntls = true\nhost = \"{host}\"\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_against_the_configured_ca_and_host() {
    let dir = temp_dir("backend-tls");
    let ca = TestCa::new("backends ca");
    let ca_file = ca.write(&dir, "backends-ca.pem");
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "trusted");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let trusted = MockOpenAi::start(
        &dir,
        "tls-trusted",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--model",
            "good",
            "--model",
            "wronghost",
        ],
    );
    let (cert, key) = TestCa::new("stranger ca")
        .server(&["localhost"])
        .write(&dir, "stranger");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let stranger = MockOpenAi::start(
        &dir,
        "tls-stranger",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--model",
            "untrusted",
        ],
    );
    let routes = tls_model("good", "tls-good", trusted.addr, "localhost")
        + &tls_model("untrusted", "tls-untrusted", stranger.addr, "localhost")
        + &tls_model("wronghost", "tls-wronghost", trusted.addr, "wrong.example");
    let extra = format!("[upstream]\ntls_ca_file = \"{}\"\n", ca_file.display());
    let proxy = Proxy::start_standalone(&dir, "backend-tls-proxy", &routes, &extra).await;
    let client = reqwest::Client::new();
    let chat = |model: &str| {
        client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };

    // Trusted CA, the certificate names the host: proxied over TLS.
    let resp = chat("good").await.expect("good");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-mock-instance")
            .and_then(|v| v.to_str().ok()),
        Some("tls-trusted")
    );
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );

    // Signed by another CA, or reached as a host its certificate does not name: 502, OpenAI's
    // error format, and the endpoint named in the proxy's log.
    for (model, endpoint) in [
        ("untrusted", "tls-untrusted"),
        ("wronghost", "tls-wronghost"),
    ] {
        let resp = chat(model).await.expect(model);
        assert_eq!(resp.status(), 502, "{model}");
        let body: Value = resp.json().await.expect("json");
        assert!(
            body["error"]["message"].is_string() && body["error"]["type"].is_string(),
            "{model}: {body}"
        );
        eventually(
            READY_TIMEOUT,
            "the failure is logged with the endpoint",
            || async {
                proxy
                    .proc
                    .tail_log()
                    .lines()
                    .any(|l| l.contains("TLS to the endpoint failed") && l.contains(endpoint))
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_registered_as_https_is_checked_and_proxied_with_the_configured_cas() {
    let dir = temp_dir("backend-tls-registered");
    let ca = TestCa::new("backends ca");
    let ca_file = ca.write(&dir, "backends-ca.pem");
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "trusted");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let trusted = MockOpenAi::start(
        &dir,
        "tls-registered",
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let (cert, key) = TestCa::new("stranger ca")
        .server(&["localhost"])
        .write(&dir, "stranger");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let stranger = MockOpenAi::start(
        &dir,
        "tls-stranger",
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let body = format!(
        "[admin]\napi_keys = [\"operator-key-0001\"]\nallow_private_backends = true\n\
         [health]\ntls_ca_file = \"{}\"\n",
        ca_file.display()
    );
    let control = Control::start(&dir, "cp-backend-tls", &body).await;
    let client = reqwest::Client::new();
    let register = |name: &str, port: u16| {
        client
            .post(format!("{}/admin/backends", control.api_url()))
            .bearer_auth("operator-key-0001")
            .json(&json!({"name": name, "url": format!("https://localhost:{port}"), "models": ["demo"]}))
            .send()
    };

    // The control plane checks the backend over TLS against [health] tls_ca_file...
    let resp = register("stranger", stranger.addr.port())
        .await
        .expect("register");
    let status = resp.status();
    let refused: Value = resp.json().await.expect("json");
    assert_eq!(
        status, 503,
        "a certificate from another CA is not admitted: {refused}"
    );
    assert_eq!(refused["code"], "BACKEND_UNAVAILABLE", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("certificate"),
        "{refused}"
    );
    let resp = register("trusted", trusted.addr.port())
        .await
        .expect("register");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    // ...and the proxy, fed the endpoint, verifies it against its own [upstream] tls_ca_file.
    let proxy = Proxy::start_with(
        &dir,
        "backend-tls-fed",
        &[control.discovery_url()],
        &format!("[upstream]\ntls_ca_file = \"{}\"\n", ca_file.display()),
    )
    .await;
    proxy.wait_ready(&client).await;
    let resp = eventually(READY_TIMEOUT, "the https backend is routed", || async {
        let r = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(
        resp.headers()
            .get("x-mock-instance")
            .and_then(|v| v.to_str().ok()),
        Some("tls-registered")
    );
}
