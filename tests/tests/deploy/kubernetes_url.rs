//! The Kubernetes manifests' control-plane URL works as written: the proxy Deployment's
//! `dns+http://` argument started on the real proxy (issue 17).

use std::time::Duration;

use multiverse_tests::*;
use serde_json::Value;

use super::root;

/// The proxy Deployment's control-plane URL (deploy/kubernetes/base/proxy-deployment.yaml),
/// as the kubelet expands it, with the ConfigMap's proxy.toml: the real proxy starts with
/// exactly those arguments (listeners moved to free ports), takes the URL as a `dns+` source
/// and asks the system resolver for the headless Service's name — which nothing answers here,
/// so it reports the resolution error and is not ready, instead of refusing the URL.
#[tokio::test]
async fn the_kubernetes_manifests_control_plane_url_is_accepted_as_written() {
    let root = root();
    let manifest =
        std::fs::read_to_string(root.join("deploy/kubernetes/base/proxy-deployment.yaml"))
            .expect("the proxy Deployment");
    let url = manifest
        .lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix("- ")
                .filter(|a| a.starts_with("dns+http://"))
        })
        .expect("a dns+http:// argument in the proxy Deployment")
        .replace("$(POD_NAMESPACE)", "multiverse");
    assert_eq!(url, "dns+http://multiverse-control.multiverse.svc:9001");
    let dir = temp_dir("k8s-url");
    let (listen, admin) = (
        try_free_addr().expect("port"),
        try_free_addr().expect("port"),
    );
    let config = root.join("deploy/kubernetes/base/config/proxy.toml");
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--control-plane",
        &url,
        "--listen",
        &listen.to_string(),
        "--admin-listen",
        &admin.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Launch::for_tests(&dir)
        .spawn("k8s-proxy", multiverse_tests::binaries::PROXY, &args, false)
        .expect("spawn the proxy");
    let client = reqwest::Client::new();
    let admin_url = format!("http://{admin}");
    try_wait_ok(
        &client,
        &format!("{admin_url}/healthz"),
        READY_TIMEOUT,
        &proc,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let source = eventually(
        Duration::from_secs(30),
        "the name resolved (or not)",
        || async {
            let dump: Value = client
                .get(format!("{admin_url}/config_dump"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let source = dump["control_planes"][&url].clone();
            source["resolve_error"].is_string().then_some(source)
        },
    )
    .await;
    assert_eq!(source["kind"], "dns", "{source}");
    assert_eq!(source["resolver"], "system", "{source}");
    assert!(
        source["resolve_error"]
            .as_str()
            .is_some_and(|e| e.contains("multiverse-control.multiverse.svc")),
        "{source}"
    );
    let ready = client
        .get(format!("{admin_url}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503, "no control plane answered: not ready");
}
