//! The web UI (issue 12) against the real binaries: how the control plane serves it (types,
//! cache validators, pages vs API on shared URLs), and a real headless Chromium driving every
//! page (tests/ui/browser_test.py, selenium with Debian's chromium and chromium-driver, which
//! scripts/test installs) against a control plane supervising a mock-tei instance, a proxy fed
//! by it (allowing the UI's origin, `[cors]`; named to the UI by `[ui] proxy_url`) and mock
//! OpenAI backends. The browser is a normal one: same-origin rules on.
//!
//! Screenshots of every page at 1280 px and 390 px go to `$MULTIVERSE_UI_SCREENSHOTS`, by default
//! `<cargo target tmp>/ui-screenshots` (not committed); the test prints the folder.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use multiverse_tests::*;
use serde_json::{json, Value};

const KEY: &str = "ui-test-admin-key";
/// How long the whole browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(420);

fn workspace_root() -> PathBuf {
    multiverse_tests::repo_root()
}

/// 40 free ports in 29000-29959 for instances (below the instance tests' sentinel ports).
fn instance_ports() -> (u16, u16) {
    let first = (std::process::id() % 24) as u16;
    (0..24)
        .map(|i| 29000 + ((first + i) % 24) * 40)
        .find(|lo| (*lo..*lo + 40).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .map(|lo| (lo, lo + 39))
        .expect("40 free ports in 29000-29959")
}

fn control_body(backends: &str, ports: (u16, u16)) -> String {
    format!(
        "[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
         [health]\ninterval_ms = 300\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         deregister_after_failures = 4\n\
         [instances]\nbinary = \"{}\"\nport_range = [{}, {}]\nstartup_probe_interval_ms = 100\n\
         liveness_interval_ms = 500\nprobe_timeout_ms = 1000\ndrain_ms = 50\nstop_grace_ms = 1000\n\
         [templates.small]\nmodel_id = \"BAAI/bge-small-en-v1.5\"\npooling = \"cls\"\n\
         tags = {{ team = \"search\" }}\n\
         [gpu]\nsimulated = [{{ name = \"Sim UI\", memory_total_mb = 16384, memory_used_mb = 2048 }}]\n\
         [discovery]\ncoalesce_ms = 20\n{backends}\n",
        bin("mock-tei").display(),
        ports.0,
        ports.1
    )
}

async fn get(client: &reqwest::Client, url: &str, accept: &str) -> reqwest::Response {
    client
        .get(url)
        .header("accept", accept)
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test]
async fn the_control_plane_serves_the_ui() {
    let dir = temp_dir("ui-serve");
    let cp = Control::start(&dir, "cp-ui-serve", &control_body("", instance_ports())).await;
    let c = reqwest::Client::new();
    let api = cp.api_url();

    // Every page URL answers the page shell.
    for page in [
        "/",
        "/register",
        "/backends/bk-1",
        "/backends/bk-1/edit",
        "/models",
        "/playground",
        "/docs",
    ] {
        let r = get(&c, &format!("{api}{page}"), "*/*").await;
        assert_eq!(r.status(), 200, "{page}");
        assert_eq!(
            r.headers()["content-type"],
            "text/html; charset=utf-8",
            "{page}"
        );
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        assert!(r.text().await.unwrap().contains("/ui/js/app.js"), "{page}");
    }

    // Shared URLs: the page for a browser's navigation, the JSON for API clients.
    for path in ["/instances", "/gpus", "/proxies", "/instances/emb-1"] {
        let page = get(
            &c,
            &format!("{api}{path}"),
            "text/html,application/xhtml+xml,*/*;q=0.8",
        )
        .await;
        assert_eq!(page.status(), 200, "{path} as a page");
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["vary"], "Accept");
        for accept in ["*/*", "application/json"] {
            let r = get(&c, &format!("{api}{path}"), accept).await;
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("application/json"), "{path} {accept}: {ct}");
            assert!(r.headers().get_all("vary").iter().any(|v| v == "Accept"));
        }
    }
    let r = get(&c, &format!("{api}/gpus"), "application/json").await;
    let gpus: Value = r.json().await.unwrap();
    assert!(gpus["nvml"].is_string(), "{gpus}");
    // The page does not bypass the admin key: without it the API still says 401.
    let r = c
        .get(format!("{api}/instances"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Assets: types, validators, 304 on revalidation, JSON 404 for an unknown file.
    for (path, ct) in [
        ("/ui/js/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/pages/dashboard.html", "text/html; charset=utf-8"),
        (
            "/ui/vendor/alpine/alpine.min.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/ui/vendor/swagger-ui/swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = get(&c, &format!("{api}{path}"), "*/*").await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ct, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        let etag = r.headers()["etag"].clone();
        let again = c
            .get(format!("{api}{path}"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    // An unknown URL: the UI's "page not found" for a browser, the API's JSON 404 otherwise.
    let r = get(&c, &format!("{api}/no/such/page"), "text/html").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let r = get(&c, &format!("{api}/no/such/page"), "*/*").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "NOT_FOUND");
    let r = get(&c, &format!("{api}/ui/nope.js"), "*/*").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(body["timestamp"].is_string());
}

/// Fails (never skips) when the browser or selenium is missing, naming the fix.
async fn require_browser() {
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import selenium, shutil, sys; sys.exit(0 if shutil.which('chromium') and shutil.which('chromedriver') else 3)",
        ])
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "the browser test needs Debian's chromium and chromium-driver and the selenium Python \
         package: run scripts/test (it installs them) or `apt-get install chromium chromium-driver` \
         and `python3 -m pip install -r tests/ui/requirements.txt`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the browser test's whole process group (python, chromedriver, Chromium) when dropped:
/// on a timeout or a panic nothing is left running. After a normal exit the group is empty.
struct BrowserGroup(i32);

impl Drop for BrowserGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn a_real_browser_drives_every_page() {
    require_browser().await;
    let dir = temp_dir("ui-browser");
    let chat = MockOpenAi::start(
        &dir,
        "mock-chat",
        &[
            "--model",
            "demo",
            "--tokens",
            "12",
            "--chunk-interval-ms",
            "60",
        ],
    );
    // The backend the test registers through the form.
    let extra = MockOpenAi::start(&dir, "mock-extra", &["--model", "extra-model"]);
    // A backend the browser test kills, so health checking deregisters it and Restore shows.
    let flaky = MockOpenAi::start(&dir, "mock-flaky", &["--model", "flaky-model"]);
    // With a readiness probe of its own, so the backend page has probe statistics to show.
    let backends = format!(
        "[[backends]]\nname = \"mock-chat\"\nurl = \"{}\"\nmodels = [\"demo\"]\n\
         [backends.probes.readiness]\npath = \"/mock/ready\"\njson_pointer = \"/ready\"\njson_equals = \"true\"\n",
        chat.url()
    );
    // The proxy allows the UI's origin (CORS), and the control plane names the proxy to the
    // UI ([ui] proxy_url): each needs the other's address, so the control plane's are chosen
    // first and the proxy (which reconnects until it is up) starts before it.
    let (api_addr, discovery_addr) = (try_free_addr().unwrap(), try_free_addr().unwrap());
    let proxy = Proxy::start_with(
        &dir,
        "proxy-ui",
        &[format!("http://{discovery_addr}")],
        &format!("[cors]\nallowed_origins = [\"http://{api_addr}\"]"),
    )
    .await;
    let ui = format!("[ui]\nproxy_url = \"{}\"\n", proxy.url());
    let cp = Control::start_on(
        &dir,
        "cp-ui",
        &format!("{ui}{}", control_body(&backends, instance_ports())),
        api_addr,
        discovery_addr,
    )
    .await;
    assert_eq!(
        cp.api_url(),
        format!("http://{api_addr}"),
        "the allowed origin"
    );
    let c = reqwest::Client::new();
    proxy.wait_ready(&c).await;

    // One supervised instance (mock-tei launched as TEI) for the instance pages.
    let r = c
        .post(format!("{}/instances/from-template/small", cp.api_url()))
        .bearer_auth(KEY)
        // Its process reports 700 MiB on the simulated GPU, for the instance page's GPU section.
        .json(&json!({"name": "emb-1", "extra_args": ["--simulated-vram-mb", "700"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let api = cp.api_url();
    let r = c
        .post(format!("{api}/admin/backends"))
        .bearer_auth(KEY)
        .json(&json!({"name": "flaky", "url": flaky.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let flaky_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .expect("id")
        .to_string();
    eventually(Duration::from_secs(30), "emb-1 ready", || async {
        let v: Value = get(&c, &format!("{api}/instances/emb-1"), "application/json")
            .await
            .json()
            .await
            .ok()?;
        (v["status"] == "ready").then_some(())
    })
    .await;
    // …and routed by the proxy, so the playground can embed through it.
    eventually(Duration::from_secs(30), "emb-1 on the proxy", || async {
        proxy
            .endpoint_health(&c, "BAAI/bge-small-en-v1.5", "emb-1")
            .await
    })
    .await;

    let shots = std::env::var_os("MULTIVERSE_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    std::fs::create_dir_all(&shots).expect("create the screenshots folder");
    let config = json!({
        "control": cp.api_url(),
        "proxy": proxy.url(),
        "key": KEY,
        "extra_backend_url": extra.url(),
        "dead_url": format!("http://{}", try_free_addr().unwrap()),
        "chat_backend": "mock-chat",
        "instance": "emb-1",
        "flaky_id": flaky_id,
        "flaky_pid": flaky.proc.pid(),
        "screenshots": shots,
        "work_dir": dir.join("chromium"),
    });
    let child = tokio::process::Command::new("python3")
        .arg(workspace_root().join("tests/ui/browser_test.py"))
        .arg(config.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so chromedriver and Chromium die with it (see BrowserGroup).
        .process_group(0)
        .spawn()
        .expect("spawn python3 tests/ui/browser_test.py");
    let _group = BrowserGroup(child.id().expect("a pid") as i32);
    let out = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser test did not finish within {BROWSER_TIMEOUT:?}"))
        .expect("wait for the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    eprintln!("screenshots: {}", shots.display());
    assert!(
        out.status.success(),
        "the browser test failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n\
         --- control plane log:\n{}\n--- proxy log:\n{}",
        out.status,
        cp.proc.tail_log(),
        proxy.proc.tail_log()
    );
}
