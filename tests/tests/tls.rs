//! TLS on the proxy's client listener, through real processes: ALPN `h2` and `http/1.1` (curl
//! `--http2` / `--http1.1`, proxied to a mock backend), a SIGHUP that serves a new certificate
//! to new connections while an open one keeps working, and a bad certificate file refused at
//! start naming the file. Certificates come from a CA generated per test ([`certs::TestCa`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use multiverse_tests::certs::TestCa;
use multiverse_tests::*;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The longest any single network wait may take before the test calls it a hang.
const CAP: Duration = Duration::from_secs(10);

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;

/// A standalone proxy routing `demo` to a mock-openai, with a TLS client listener on `tls`
/// serving `cert`/`key`.
async fn setup(
    dir: &Path,
    tag: &str,
    tls: SocketAddr,
    cert: &Path,
    key: &str,
) -> (Proxy, MockOpenAi) {
    let openai = MockOpenAi::start(dir, &format!("{tag}-openai"), &[]);
    let routes = model_toml(
        "demo",
        "chat",
        "",
        &[Ep::http("openai-1", openai.addr, "healthy")],
    );
    let extra = format!(
        "[clients_tls]\nlisten = \"{tls}\"\ncert_file = \"{}\"\nkey_file = \"{key}\"\n",
        cert.display()
    );
    let proxy = Proxy::start_standalone(dir, &format!("{tag}-proxy"), &routes, &extra).await;
    (proxy, openai)
}

/// `curl` with `flag` (`--http2` / `--http1.1`) trusting `ca`: the HTTP version and status.
fn curl(ca: &Path, flag: &str, url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(["-H", "content-type: application/json", "-d", CHAT, url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {flag} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_speaks_h2_and_http11_by_alpn() {
    let dir = temp_dir("tls-alpn");
    let ca = TestCa::new("multiverse test ca");
    let ca_file = ca.write(&dir, "ca.pem");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]).write(&dir, "server");
    let tls = try_free_addr().expect("port");
    let (proxy, _openai) = setup(&dir, "tls-alpn", tls, &cert, &key.display().to_string()).await;

    let url = format!("https://{tls}/v1/chat/completions");
    assert_eq!(curl(&ca_file, "--http2", &url), "2 200");
    assert_eq!(curl(&ca_file, "--http1.1", &url), "1.1 200");
    // The cleartext listener is unchanged.
    let plain = format!("{}/v1/chat/completions", proxy.url());
    assert_eq!(curl(&ca_file, "--http1.1", &plain), "1.1 200");
    // A client that does not trust the CA is refused by its own verification: the listener
    // really serves the configured certificate.
    let other = TestCa::new("another ca").write(&dir, "other.pem");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&other)
        .arg(&url)
        .output()
        .expect("run curl");
    assert!(
        !out.status.success(),
        "an untrusted CA must fail verification"
    );
}

/// A TLS connection offering HTTP/1.1 only, verified against `ca`.
async fn connect(ca: &TestCa, addr: SocketAddr) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let tcp = tokio::time::timeout(CAP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(CAP, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

fn served_cert(conn: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, session) = conn.get_ref();
    session.peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned()
}

/// One keep-alive chat request on `conn`: the response status.
async fn chat_on(conn: &mut TlsStream<TcpStream>) -> u16 {
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    conn.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "connection closed mid-response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a content-length response");
            if buf.len() >= end + 4 + len {
                return text[9..12].parse::<u16>().expect("status");
            }
        }
    };
    tokio::time::timeout(CAP, read)
        .await
        .expect("response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    let dir = temp_dir("tls-reload");
    let ca = TestCa::new("multiverse test ca");
    let first = ca.server(&["localhost", "127.0.0.1"]);
    let (cert, key) = first.write(&dir, "server");
    let tls = try_free_addr().expect("port");
    let (proxy, _openai) = setup(&dir, "tls-reload", tls, &cert, &key.display().to_string()).await;

    let mut open = connect(&ca, tls).await;
    assert_eq!(served_cert(&open), first.der);
    assert_eq!(chat_on(&mut open).await, 200);

    // New files, moved into place as a certificate manager does, then SIGHUP.
    let second = ca.server(&["localhost", "127.0.0.1"]);
    let (new_cert, new_key) = second.write(&dir, "next");
    std::fs::rename(&new_cert, &cert).expect("move cert");
    std::fs::rename(&new_key, &key).expect("move key");
    proxy.reload();
    eventually(CAP, "a new connection gets the new certificate", || async {
        (served_cert(&connect(&ca, tls).await) == second.der).then_some(())
    })
    .await;

    // The connection opened before the reload still serves requests, on its own certificate.
    assert_eq!(chat_on(&mut open).await, 200);
    assert_eq!(served_cert(&open), first.der);

    // A reload with a broken key is refused and the current certificate keeps serving.
    std::fs::write(&key, "not a key").expect("break key");
    proxy.reload();
    eventually(CAP, "the rejected reload is logged", || async {
        proxy
            .proc
            .tail_log()
            .contains("TLS certificate reload rejected")
            .then_some(())
    })
    .await;
    let mut after = connect(&ca, tls).await;
    assert_eq!(served_cert(&after), second.der);
    assert_eq!(chat_on(&mut after).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_stops_the_start_naming_the_file() {
    let dir = temp_dir("tls-missing");
    let config = dir.join("proxy.toml");
    let tls = try_free_addr().expect("port");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, "").expect("write routes");
    std::fs::write(
        &config,
        format!(
            "[listen]\nclients = \"{}\"\nadmin = \"{}\"\n[standalone]\nroutes_file = \"{}\"\n[clients_tls]\nlisten = \"{tls}\"\ncert_file = \"{}/absent.crt\"\nkey_file = \"{}/absent.key\"\n",
            try_free_addr().expect("port"),
            try_free_addr().expect("port"),
            routes.display(),
            dir.display(),
            dir.display(),
        ),
    )
    .expect("write config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut proxy = Proc::spawn(
        "tls-missing-proxy",
        &bin("multiverse-proxy"),
        &args,
        &dir,
        false,
    );
    let code = proxy.wait_exit(Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    let log = proxy.tail_log();
    assert!(
        log.contains("clients_tls") && log.contains("absent.crt"),
        "{log}"
    );
}
