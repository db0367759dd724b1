//! Real clients through the proxy: the unmodified `openai` Python SDK (models list, chat
//! stream and non-stream, embeddings) and a `grpcio` client generated from our `tei.v1` protos
//! (unary Embed, bidi EmbedStream, NOT_FOUND for an unknown model), and a `pyarrow` + `grpcio`
//! client of the proxy's Arrow batch embedding (`BatchEmbed/EmbedArrow`). The Python side lives in
//! tests/python/ (its requirements.txt is installed by scripts/test); each test starts the
//! backend mock and a standalone proxy, runs one script against the proxy and asserts it exits 0.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use multiverse_tests::*;

/// How long one Python client run may take before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (tests/python/ and proto/ hang off it).
fn workspace_root() -> PathBuf {
    multiverse_tests::repo_root()
}

/// `python3` with loopback-safe environment: no HTTP(S)/gRPC proxy variables, so the clients
/// talk to 127.0.0.1 directly whatever the CI machine sets.
fn python3() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "grpc_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "GRPC_PROXY",
        "OPENAI_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Fails (never skips) when the Python packages are missing, naming the fix.
async fn require_python_packages() {
    let out = python3()
        .args(["-c", "import openai, grpc, grpc_tools, pyarrow"])
        .output()
        .await
        .expect("run python3 (is Python 3 installed?)");
    assert!(
        out.status.success(),
        "the Python clients are not installed: run \
         `python3 -m pip install -r tests/python/requirements.txt` (scripts/test does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `python3 tests/python/<script> <args>` with a timeout; panics with its output and the
/// tails of the given processes' logs unless it exits 0. Returns its stdout.
async fn run_script(script: &str, args: &[&str], logs: &[&Proc]) -> String {
    let path = workspace_root().join("tests/python").join(script);
    let child = python3()
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 {}: {e}", path.display()));
    let logs = || {
        logs.iter()
            .map(|p| format!("--- {} log:\n{}", p.name, p.tail_log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // On timeout the future (and with it the child, kill_on_drop) is dropped: killed.
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{script} {args:?} did not finish within {SCRIPT_TIMEOUT:?}\n{}",
                logs()
            )
        })
        .expect("wait for python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n{}",
        out.status,
        logs()
    );
    eprintln!("{script}: {}", stdout.trim());
    stdout
}

#[tokio::test]
async fn openai_python_sdk_through_the_proxy() {
    require_python_packages().await;
    let dir = temp_dir("py-openai");
    let mock = MockOpenAi::start(
        &dir,
        "mock-chat",
        &[
            "--model",
            "demo",
            "--model",
            "embed-demo",
            "--tokens",
            "6",
            "--chunk-interval-ms",
            "10",
        ],
    );
    let routes = format!(
        r#"version = "py-openai"

[[models]]
name = "demo"
kind = "chat"
[[models.endpoints]]
id = "mock-chat"
address = "{addr}"
protocol = "http1"

[[models]]
name = "embed-demo"
kind = "embedding"
[[models.endpoints]]
id = "mock-chat"
address = "{addr}"
protocol = "http1"
"#,
        addr = mock.addr
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-py", &routes, "").await;
    let out = run_script(
        "openai_client.py",
        &[&proxy.url()],
        &[&proxy.proc, &mock.proc],
    )
    .await;
    assert!(out.contains("endpoint=mock-chat"), "{out}");
}

#[tokio::test]
async fn grpcio_client_through_the_proxy() {
    require_python_packages().await;
    let dir = temp_dir("py-grpc");
    let tei = MockTei::start(
        &dir,
        "mock-tei-grpc",
        &["--grpc", "--model-id", "BAAI/bge-small-en-v1.5"],
    );
    let tei_addr = tei.addr;
    let routes = format!(
        r#"version = "py-grpc"

[[models]]
name = "embed-grpc"
kind = "embedding"
[[models.endpoints]]
id = "tei-grpc-1"
address = "{tei_addr}"
protocol = "grpc"
"#
    );
    let proxy = Proxy::start_standalone(&dir, "proxy-py-grpc", &routes, "").await;
    let out = run_script(
        "grpc_client.py",
        &[&proxy.listen.to_string(), "embed-grpc"],
        &[&proxy.proc, &tei.proc],
    )
    .await;
    assert!(out.contains("endpoint=tei-grpc-1"), "{out}");
}

/// A fresh secret and the `[auth]` table of a routes file that accepts it for `models` at
/// `rpm` requests a minute.
fn keyed_routes(models: &[&str], rpm: u32) -> (String, String) {
    let random: [u8; 32] = rand::random();
    let secret = multiverse_common::keys::secret_from(&random);
    let hash =
        multiverse_common::keys::to_hex(&multiverse_common::keys::hash_secret(secret.as_bytes()));
    let models: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    let auth = format!(
        "\n[auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"team-a\"\nsha256 = \"{hash}\"\nmodels = [{}]\nrpm = {rpm}\n",
        models.join(", ")
    );
    (secret, auth)
}

#[tokio::test]
async fn openai_python_sdk_with_keys() {
    require_python_packages().await;
    let dir = temp_dir("py-openai-keys");
    let mock = MockOpenAi::start(&dir, "mock-keys", &["--model", "demo", "--model", "other"]);
    const RPM: u32 = 10;
    let (secret, auth) = keyed_routes(&["demo"], RPM);
    let mut routes = String::from("version = \"py-keys\"\n");
    for model in ["demo", "other"] {
        routes.push_str(&format!(
            "\n[[models]]\nname = \"{model}\"\nkind = \"chat\"\n[[models.endpoints]]\nid = \"mock-keys\"\naddress = \"{}\"\n",
            mock.addr
        ));
    }
    routes.push_str(&auth);
    let proxy = Proxy::start_standalone(&dir, "proxy-py-keys", &routes, "").await;
    let out = run_script(
        "openai_keys_client.py",
        &[&proxy.url(), &secret, &RPM.to_string()],
        &[&proxy.proc, &mock.proc],
    )
    .await;
    assert!(out.contains("429 after 10"), "{out}");
    // The secret never reaches a log.
    assert!(!proxy.proc.tail_log().contains(&secret));
}

#[tokio::test]
async fn pyarrow_client_embeds_a_batch_through_the_proxy() {
    require_python_packages().await;
    let dir = temp_dir("py-arrow");
    let tei = MockTei::start(&dir, "mock-tei-arrow", &["--max-client-batch-size", "4"]);
    let listen = try_free_addr().expect("free port");
    let routes = format!(
        "version = \"py-arrow\"\n\n[[models]]\nname = \"embed-arrow\"\nkind = \"embedding\"\n\
         [[models.endpoints]]\nid = \"tei-arrow-1\"\naddress = \"{}\"\nmax_client_batch_size = 4\n",
        tei.addr
    );
    let proxy = Proxy::start_standalone(
        &dir,
        "proxy-py-arrow",
        &routes,
        &format!("[batch_embed]\nlisten = \"{listen}\"\n"),
    )
    .await;
    let out = run_script(
        "arrow_client.py",
        &[&listen.to_string(), "embed-arrow"],
        &[&proxy.proc, &tei.proc],
    )
    .await;
    assert!(out.contains("ok rows=13"), "{out}");
}

#[tokio::test]
async fn grpcio_client_with_keys() {
    require_python_packages().await;
    let dir = temp_dir("py-grpc-keys");
    let tei = MockTei::start(
        &dir,
        "mock-tei-grpc-keys",
        &["--grpc", "--model-id", "BAAI/bge-small-en-v1.5"],
    );
    let tei_addr = tei.addr;
    let (secret, auth) = keyed_routes(&["embed-grpc"], 0);
    let mut routes = String::from("version = \"py-grpc-keys\"\n");
    for model in ["embed-grpc", "embed-other"] {
        routes.push_str(&format!(
            "\n[[models]]\nname = \"{model}\"\nkind = \"embedding\"\n[[models.endpoints]]\nid = \"{model}-1\"\naddress = \"{tei_addr}\"\nprotocol = \"grpc\"\n"
        ));
    }
    routes.push_str(&auth);
    let proxy = Proxy::start_standalone(&dir, "proxy-py-grpc-keys", &routes, "").await;
    let out = run_script(
        "grpc_keys_client.py",
        &[
            &proxy.listen.to_string(),
            "embed-grpc",
            &secret,
            "embed-other",
        ],
        &[&proxy.proc, &tei.proc],
    )
    .await;
    assert!(out.contains("PERMISSION_DENIED"), "{out}");
}
