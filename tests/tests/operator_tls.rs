//! The operator API over TLS and mTLS (`[admin.tls]`), through a real control plane: cleartext
//! is not answered; without a client certificate only `/health` answers, everything else is
//! 401 in the API's error format; a certificate from the client CA with an allowed name is
//! served (and the admin key is still required on `/admin/*`); one outside the allow-list or
//! from another CA is refused in the handshake. The web UI is served over https (curl). A
//! certificate forwarded by a TLS-terminating reverse proxy in `X-SSL-Client-Cert` counts only
//! from a peer in `trusted_proxies` (127.0.0.1 here; the untrusted client binds 127.0.0.2).
//! SIGHUP reloads the pair for new connections. Certificates come from CAs generated per test.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multiverse_control::config::ControlConfig;
use multiverse_tests::certs::{Leaf, TestCa};
use multiverse_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

const CAP: Duration = Duration::from_secs(20);
const KEY: &str = "operator-key-0001";

/// A control plane configured by `body` whose API speaks TLS: ready once `GET /health` answers
/// 200 over https to `client`.
async fn start(dir: &Path, id: &str, body: &str, client: &reqwest::Client) -> Control {
    let mut base = ControlConfig::default();
    base.admin.public_read = true;
    let config = multiverse_testkit::config_file::overlay(&base, body)
        .unwrap_or_else(|e| panic!("control plane {id}: {e:#}"));
    let control =
        Control::try_spawn(&Launch::for_tests(dir), id, config).unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("https://{}/health", control.api);
    try_wait_ok(client, &url, READY_TIMEOUT, &control.proc)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    control
}

/// A client trusting `ca`, presenting `identity` if any, from `local` if given.
fn client(ca: &TestCa, identity: Option<&Leaf>, local: Option<IpAddr>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("ca pem"))
        .expect("ca into store");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key pem"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .local_address(local)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Status and JSON body of `GET url` (with the admin key when `key`).
async fn get(client: &reqwest::Client, url: &str, key: bool) -> reqwest::Result<(u16, Value)> {
    let mut req = client.get(url);
    if key {
        req = req.bearer_auth(KEY);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The `[admin]` table with a key and TLS by `plane`'s server pair, operators' CA `client_ca`
/// (if any), allowed names and trusted proxies.
fn admin_toml(
    dir: &Path,
    plane: &TestCa,
    client_ca: Option<&Path>,
    allowed: &[&str],
    trusted: &[&str],
) -> (String, PathBuf, PathBuf) {
    let (cert, key) = plane
        .server(&["localhost", "127.0.0.1"])
        .write(dir, "plane");
    let mut body = format!(
        "[admin]\napi_keys = [\"{KEY}\"]\n[admin.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        body += &format!("client_ca_file = \"{}\"\n", ca.display());
    }
    body += &format!("allowed_names = {allowed:?}\ntrusted_proxies = {trusted:?}\n");
    (body, cert, key)
}

fn assert_api_error(body: &Value, code: &str) {
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_an_allowed_client_certificate_and_still_a_key() {
    let dir = temp_dir("operator-mtls");
    let plane = TestCa::new("plane ca");
    let operators = TestCa::new("operators ca");
    let ops_ca = operators.write(&dir, "operators-ca.pem");
    let plane_ca = plane.write(&dir, "plane-ca.pem");
    let (body, _, _) = admin_toml(&dir, &plane, Some(&ops_ca), &["*.ops.test"], &[]);
    let anonymous = client(&plane, None, None);
    let control = start(&dir, "cp-operator-mtls", &body, &anonymous).await;
    let base = format!("https://{}", control.api);

    // Cleartext gets no HTTP answer from a TLS listener.
    let cleartext = reqwest::Client::new()
        .get(format!("http://{}/health", control.api))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(cleartext.is_err(), "{cleartext:?}");

    // No certificate: /health only; the rest is 401 in the API's format.
    let (status, _) = get(&anonymous, &format!("{base}/health"), false)
        .await
        .expect("health");
    assert_eq!(status, 200);
    for path in ["/admin/backends", "/openapi.json", "/"] {
        let (status, body) = get(&anonymous, &format!("{base}{path}"), true)
            .await
            .expect(path);
        assert_eq!(status, 401, "{path}: {body}");
        assert_api_error(&body, "UNAUTHORIZED");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("client certificate"),
            "{body}"
        );
    }

    // An allowed certificate is served; /admin/* still needs the key.
    let alice = operators.client("alice", &["alice.ops.test"]);
    let alice = client(&plane, Some(&alice), None);
    let (status, _) = get(&alice, &format!("{base}/openapi.json"), false)
        .await
        .expect("openapi");
    assert_eq!(status, 200);
    let (status, body) = get(&alice, &format!("{base}/admin/backends"), false)
        .await
        .expect("no key");
    assert_eq!(status, 401, "{body}");
    assert_api_error(&body, "UNAUTHORIZED");
    let (status, body) = get(&alice, &format!("{base}/admin/backends"), true)
        .await
        .expect("with key");
    assert_eq!(status, 200, "{body}");

    // Outside the allow-list (same CA), and from another CA: refused in the handshake.
    let mallory = operators.client("mallory", &["mallory.elsewhere.test"]);
    let refused = get(
        &client(&plane, Some(&mallory), None),
        &format!("{base}/health"),
        true,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    let stranger = TestCa::new("stranger ca").client("eve", &["eve.ops.test"]);
    let refused = get(
        &client(&plane, Some(&stranger), None),
        &format!("{base}/health"),
        true,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    eventually(CAP, "the plane logs the refused name", || async {
        control
            .proc
            .tail_log()
            .contains("client certificate refused: no name in the allow-list")
            .then_some(())
    })
    .await;

    // The web UI over https, with curl.
    let alice_leaf = operators.client("alice", &["alice.ops.test"]);
    let (cert, key) = alice_leaf.write(&dir, "alice");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&plane_ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-H", "accept: text/html", "-w", "\n%{http_code}"])
        .arg(format!("{base}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("\n200") && text.contains("<html"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_client_certificate_counts_only_from_a_trusted_proxy() {
    let dir = temp_dir("operator-forwarded");
    let plane = TestCa::new("plane ca");
    let operators = TestCa::new("operators ca");
    let ops_ca = operators.write(&dir, "operators-ca.pem");
    let (body, _, _) = admin_toml(
        &dir,
        &plane,
        Some(&ops_ca),
        &["*.ops.test"],
        &["127.0.0.1/32"],
    );
    let trusted_peer = client(&plane, None, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let other_peer = client(&plane, None, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    let control = start(&dir, "cp-operator-fwd", &body, &trusted_peer).await;
    let url = format!("https://{}/admin/backends", control.api);
    let escaped = |leaf: &Leaf| {
        let mut s = String::new();
        for b in leaf.cert_pem.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                s.push(b as char);
            } else {
                s += &format!("%{b:02X}");
            }
        }
        s
    };
    let alice = escaped(&operators.client("alice", &["alice.ops.test"]));
    let send = |client: &reqwest::Client, cert: &str| {
        client
            .get(&url)
            .bearer_auth(KEY)
            .header("x-ssl-client-cert", cert)
            .send()
    };

    // From the trusted proxy: the forwarded certificate is the identity.
    let resp = send(&trusted_peer, &alice).await.expect("trusted");
    assert_eq!(resp.status(), 200);
    // The same header from another peer is ignored: no certificate, 401.
    let resp = send(&other_peer, &alice).await.expect("untrusted");
    assert_eq!(resp.status(), 401);
    assert_api_error(&resp.json().await.expect("json"), "UNAUTHORIZED");
    // From the trusted proxy, a certificate outside the allow-list, or from another CA: 403.
    for leaf in [
        operators.client("mallory", &["mallory.elsewhere.test"]),
        TestCa::new("stranger ca").client("eve", &["eve.ops.test"]),
    ] {
        let resp = send(&trusted_peer, &escaped(&leaf)).await.expect("refused");
        assert_eq!(resp.status(), 403);
        assert_api_error(&resp.json().await.expect("json"), "FORBIDDEN");
    }
    let resp = send(&trusted_peer, "garbage").await.expect("garbage");
    assert_eq!(resp.status(), 403);
    // No header from the trusted proxy either: 401.
    let resp = trusted_peer
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("no header");
    assert_eq!(resp.status(), 401);
}

/// A TLS connection to `addr` offering `alpn`, verified against `ca` as `localhost`.
async fn connect(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let tcp = tokio::time::timeout(CAP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(CAP, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

fn served(
    conn: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned()
}

/// `GET /health` on an open HTTP/1.1 connection: the status.
async fn health_on(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 12];
    tokio::time::timeout(CAP, conn.read_exact(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[9..12])
        .parse()
        .expect("status")
}

/// Writes `leaf` over `cert`/`key` as a certificate manager does (a new file moved in).
fn replace(leaf: &Leaf, cert: &Path, key: &Path) {
    for (path, text) in [(cert, &leaf.cert_pem), (key, &leaf.key_pem)] {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_both_listeners_for_new_connections_and_keeps_open_ones() {
    let dir = temp_dir("control-tls-reload");
    let old_ca = TestCa::new("old ca");
    let new_ca = TestCa::new("new ca");
    let old_ca_file = old_ca.write(&dir, "old-ca.pem");
    let (body, api_cert, api_key) = admin_toml(&dir, &old_ca, None, &[], &[]);
    let (disc_cert, disc_key) = old_ca
        .server(&["localhost", "127.0.0.1"])
        .write(&dir, "discovery");
    // Backends on loopback may be registered (the mock); [admin] keys go before [admin.tls].
    let body = format!(
        "{}[discovery.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        body.replacen("[admin]\n", "[admin]\nallow_private_backends = true\n", 1),
        disc_cert.display(),
        disc_key.display()
    );
    let control = start(&dir, "cp-tls-reload", &body, &client(&old_ca, None, None)).await;

    // A proxy trusting only the old CA streams routes; a connection to the API stays open.
    let http = reqwest::Client::new();
    let proxy = Proxy::start_with(
        &dir,
        "proxy-reload",
        &[format!("https://{}", control.discovery)],
        &format!("[discovery]\ntls_ca_file = \"{}\"\n", old_ca_file.display()),
    )
    .await;
    proxy.wait_ready(&http).await;
    let mut open = connect(&old_ca, control.api, &[b"http/1.1"]).await;
    let old_leaf = served(&open);

    // New pairs from another CA, then SIGHUP: both listeners reload.
    let api_leaf = new_ca.server(&["localhost", "127.0.0.1"]);
    let disc_leaf = new_ca.server(&["localhost", "127.0.0.1"]);
    replace(&api_leaf, &api_cert, &api_key);
    replace(&disc_leaf, &disc_cert, &disc_key);
    control.proc.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(CAP, "both listeners reload", || async {
        (control
            .proc
            .tail_log()
            .matches("TLS certificate reloaded")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    // New handshakes get the new pairs...
    assert_eq!(
        served(&connect(&new_ca, control.api, &[b"http/1.1"]).await),
        api_leaf.der
    );
    assert_eq!(
        served(&connect(&new_ca, control.discovery, &[b"h2"]).await),
        disc_leaf.der
    );
    // ...the open API connection keeps its own and still answers...
    assert_eq!(served(&open), old_leaf);
    assert_eq!(health_on(&mut open).await, 200);
    // ...and so does the proxy's open discovery stream: a backend registered now reaches it
    // (a reconnect could not: the proxy does not trust the new CA).
    let mock = MockOpenAi::start(&dir, "reload-openai", &[]);
    let resp = client(&new_ca, None, None)
        .post(format!("https://{}/admin/backends", control.api))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"name": "late", "url": mock.url(), "models": ["demo"]}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    eventually(CAP, "the proxy routes the new backend", || async {
        let r = http
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(!proxy.proc.tail_log().contains("control plane unreachable"));

    // A broken key is rejected on reload; the current pair keeps serving.
    std::fs::write(&api_key, "not a key").expect("break the key");
    control.proc.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(CAP, "the broken pair is rejected", || async {
        control
            .proc
            .tail_log()
            .contains("TLS certificate reload rejected")
            .then_some(())
    })
    .await;
    assert_eq!(
        served(&connect(&new_ca, control.api, &[b"http/1.1"]).await),
        api_leaf.der
    );
    control
        .proc
        .ensure_running()
        .expect("SIGHUP does not stop the control plane");
}
