//! TLS and mTLS on the control plane's discovery listener, through real processes: proxies
//! stream routes from an `https://` control plane presenting client certificates. One whose
//! certificate names a host in the plane's allow-list is served (ready, routes a request); one
//! signed by the same CA but outside the list, and one without a certificate, are refused in
//! the handshake and never listed by the plane. Certificates come from CAs generated per test.

use std::path::Path;
use std::time::Duration;

use multiverse_tests::certs::TestCa;
use multiverse_tests::*;
use serde_json::Value;

const CAP: Duration = Duration::from_secs(20);

/// A proxy streaming from `url`, trusting `plane_ca`, presenting `identity` (cert, key) if any.
async fn proxy(
    dir: &Path,
    node: &str,
    url: &str,
    plane_ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Proxy {
    let mut extra = format!("[discovery]\ntls_ca_file = \"{}\"\n", plane_ca.display());
    if let Some((cert, key)) = identity {
        extra += &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        );
    }
    Proxy::start_with(dir, node, &[url.to_string()], &extra).await
}

async fn listed(client: &reqwest::Client, control: &Control) -> Vec<String> {
    let v: Value = client
        .get(format!("{}/proxies", control.api_url()))
        .send()
        .await
        .expect("GET /proxies")
        .json()
        .await
        .expect("json");
    v["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_discovery_serves_allowed_proxies_and_refuses_the_rest() {
    let dir = temp_dir("mtls-discovery");
    let planes = TestCa::new("planes ca");
    let proxies = TestCa::new("proxies ca");
    let plane_ca = planes.write(&dir, "planes-ca.pem");
    let proxy_ca = proxies.write(&dir, "proxies-ca.pem");
    let (cert, key) = planes
        .server(&["localhost", "127.0.0.1"])
        .write(&dir, "plane");
    let mock = MockOpenAi::start(&dir, "mtls-openai", &[]);
    let body = format!(
        "{}\n[discovery.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nallowed_names = [\"*.proxies.test\", \"proxy-cn-only\"]\n",
        backends_toml(&[&mock], "demo"),
        cert.display(),
        key.display(),
        proxy_ca.display(),
    );
    let control = Control::start(&dir, "cp-mtls", &body).await;
    let url = format!("https://{}", control.discovery);
    let client = reqwest::Client::new();

    // Inside the list by a DNS SAN, and by the CN alone.
    let (c, k) = proxies
        .client("proxy-in", &["in.proxies.test"])
        .write(&dir, "in");
    let inside = proxy(&dir, "proxy-in", &url, &plane_ca, Some((&c, &k))).await;
    let (c, k) = proxies.client("proxy-cn-only", &[]).write(&dir, "cn");
    let by_cn = proxy(&dir, "proxy-cn-only", &url, &plane_ca, Some((&c, &k))).await;
    inside.wait_ready(&client).await;
    by_cn.wait_ready(&client).await;
    let resp = client
        .post(format!("{}/v1/chat/completions", inside.url()))
        .json(
            &serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(resp.status(), 200);

    // Signed by the same CA, but its names are outside the list; and one with no certificate.
    let (c, k) = proxies
        .client("proxy-out", &["out.elsewhere.test"])
        .write(&dir, "out");
    let outside = proxy(&dir, "proxy-out", &url, &plane_ca, Some((&c, &k))).await;
    let anonymous = proxy(&dir, "proxy-anon", &url, &plane_ca, None).await;
    eventually(CAP, "the plane refuses the outside certificate", || async {
        control
            .proc
            .tail_log()
            .contains("client certificate refused: no name in the allow-list")
            .then_some(())
    })
    .await;
    eventually(
        CAP,
        "the outside proxy reports the plane unreachable",
        || async {
            outside
                .proc
                .tail_log()
                .contains("control plane unreachable")
                .then_some(())
        },
    )
    .await;
    eventually(
        CAP,
        "the anonymous proxy reports the plane unreachable",
        || async {
            anonymous
                .proc
                .tail_log()
                .contains("control plane unreachable")
                .then_some(())
        },
    )
    .await;
    for refused in [&outside, &anonymous] {
        let r = client
            .get(format!("{}/ready", refused.admin_url()))
            .send()
            .await
            .expect("ready");
        assert_eq!(r.status(), 503, "a refused proxy gets no routes");
    }
    let mut names = listed(&client, &control).await;
    names.sort();
    assert_eq!(names, vec!["proxy-cn-only", "proxy-in"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_trust_the_plane_certificate_gets_no_routes() {
    let dir = temp_dir("tls-discovery-untrusted");
    let planes = TestCa::new("planes ca");
    let (cert, key) = planes
        .server(&["localhost", "127.0.0.1"])
        .write(&dir, "plane");
    let body = format!(
        "[discovery.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display(),
    );
    let control = Control::start(&dir, "cp-tls", &body).await;
    let url = format!("https://{}", control.discovery);
    let client = reqwest::Client::new();
    // TLS without client certificates: a proxy trusting the plane's CA is served...
    let plane_ca = planes.write(&dir, "planes-ca.pem");
    let trusting = proxy(&dir, "proxy-trusting", &url, &plane_ca, None).await;
    trusting.wait_ready(&client).await;
    // ...one trusting another CA refuses the plane's certificate.
    let other = TestCa::new("other ca").write(&dir, "other.pem");
    let wary = proxy(&dir, "proxy-wary", &url, &other, None).await;
    eventually(
        CAP,
        "the wary proxy reports the plane unreachable",
        || async {
            wary.proc
                .tail_log()
                .contains("control plane unreachable")
                .then_some(())
        },
    )
    .await;
    assert_eq!(listed(&client, &control).await, vec!["proxy-trusting"]);
}
