//! The scripts in `examples/` (seed 002's register / use / list / check-health, in Python and
//! as curl one-liners) run against a real stack: mock-openai, a control plane and a proxy
//! subscribed to it. Each test asserts on the scripts' output and exit codes, including their
//! errors (a wrong key, a duplicate name, an unknown model, a backend that went down).
//! The Python ones need `openai` (tests/python/requirements.txt, installed by scripts/test).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use multiverse_tests::*;

/// How long one example run may take before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_KEY: &str = "examples-admin-key";

fn examples_dir() -> PathBuf {
    multiverse_tests::repo_root().join("examples")
}

/// mock-openai serving "demo", a control plane with an admin key and fast health checks, and a
/// proxy subscribed to it (ready, with an empty table).
struct Stack {
    mock: MockOpenAi,
    control: Control,
    proxy: Proxy,
}

impl Stack {
    async fn start(tag: &str) -> Stack {
        let dir = temp_dir(tag);
        let mock = MockOpenAi::start(
            &dir,
            &format!("mock-{tag}"),
            &[
                "--model",
                "demo",
                "--tokens",
                "5",
                "--chunk-interval-ms",
                "5",
            ],
        );
        let control = Control::start(
            &dir,
            &format!("cp-{tag}"),
            &format!(
                "[admin]\napi_keys = [\"{ADMIN_KEY}\"]\nallow_private_backends = true\n\
                 [health]\ninterval_ms = 200\ntimeout_ms = 500\nunhealthy_threshold = 2\nhealthy_threshold = 1\n"
            ),
        )
        .await;
        let proxy = Proxy::start(&dir, &format!("proxy-{tag}"), &[control.discovery_url()]).await;
        proxy.wait_ready(&reqwest::Client::new()).await;
        Stack {
            mock,
            control,
            proxy,
        }
    }

    /// Runs `program examples/<script> args` with the stack's addresses in the environment.
    async fn run(&self, program: &str, script: &str, args: &[&str], key: &str) -> Run {
        let path = examples_dir().join(script);
        let mut cmd = tokio::process::Command::new(program);
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "OPENAI_BASE_URL",
            "MULTIVERSE_BACKEND_API_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg(&path)
            .args(args)
            .env("MULTIVERSE_URL", self.proxy.url())
            .env("MULTIVERSE_ADMIN_URL", self.proxy.admin_url())
            .env("MULTIVERSE_CONTROL_URL", self.control.api_url())
            .env("MULTIVERSE_ADMIN_KEY", key)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} {}: {e}", path.display()));
        let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{script} {args:?} did not finish in {SCRIPT_TIMEOUT:?}"))
            .expect("wait for the example");
        let run = Run {
            what: format!("{script} {args:?}"),
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "--- {}: ok={}\n{}{}",
            run.what, run.ok, run.stdout, run.stderr
        );
        run
    }

    /// Waits until the proxy routes `model` to `healthy` healthy endpoints.
    async fn wait_model(&self, model: &str, healthy: u64) {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/models", self.proxy.url());
        eventually(
            READY_TIMEOUT,
            &format!("{model} with {healthy} healthy endpoints"),
            || {
                let (client, url) = (&client, &url);
                async move {
                    let v: serde_json::Value =
                        client.get(url).send().await.ok()?.json().await.ok()?;
                    v["data"]
                        .as_array()?
                        .iter()
                        .any(|m| {
                            m["id"] == model
                                && m["multiverse"]["healthy_endpoints"].as_u64() == Some(healthy)
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }
}

struct Run {
    what: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn succeeded(&self) -> &str {
        assert!(
            self.ok,
            "{} failed\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what, self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a non-zero exit; returns stdout and stderr together.
    fn failed(&self) -> String {
        assert!(
            !self.ok,
            "{} should have failed:\n{}",
            self.what, self.stdout
        );
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Fails (never skips) when the openai package is missing, naming the fix.
async fn require_openai() {
    let out = tokio::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .await
        .expect("run python3 (is Python 3 installed?)");
    assert!(
        out.status.success(),
        "the examples need the openai package: run \
         `python3 -m pip install -r tests/python/requirements.txt` (scripts/test does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn python_examples_against_a_running_stack() {
    require_openai().await;
    let mut s = Stack::start("expy").await;
    let mock_url = s.mock.url();
    let name = s.mock.name.clone();

    let out = s.run("python3", "list_models.py", &[], ADMIN_KEY).await;
    assert!(out.succeeded().contains("no models yet"), "{}", out.stdout);

    let wrong = s
        .run(
            "python3",
            "register_server.py",
            &["--name", &name, "--url", &mock_url],
            "wrong-key-123",
        )
        .await;
    assert!(wrong.failed().contains("403 FORBIDDEN"), "{}", wrong.stderr);

    let reg = s
        .run(
            "python3",
            "register_server.py",
            &[
                "--name",
                &name,
                "--url",
                &mock_url,
                "--api-key",
                "sk-upstream-example",
            ],
            ADMIN_KEY,
        )
        .await;
    let line = reg.succeeded();
    assert!(
        line.contains(&format!("registered {name} id=bk-"))
            && line.contains("models=demo")
            && line.contains("health=healthy")
            && line.contains("api_key=set"),
        "{line}"
    );
    assert!(
        !line.contains("sk-upstream-example"),
        "the key is never shown: {line}"
    );

    let dup = s
        .run(
            "python3",
            "register_server.py",
            &["--name", &name, "--url", &mock_url],
            ADMIN_KEY,
        )
        .await;
    assert!(
        dup.failed().contains("409 BACKEND_EXISTS"),
        "{}",
        dup.stderr
    );
    let upd = s
        .run(
            "python3",
            "register_server.py",
            &[
                "--name",
                &name,
                "--url",
                &mock_url,
                "--model",
                "demo",
                "--replace",
            ],
            ADMIN_KEY,
        )
        .await;
    assert!(
        upd.succeeded().contains(&format!("updated {name} id=bk-")),
        "{}",
        upd.stdout
    );

    s.wait_model("demo", 1).await;
    let out = s.run("python3", "list_models.py", &[], ADMIN_KEY).await;
    assert!(
        out.succeeded()
            .contains("demo: kind=chat healthy endpoints: 1/1"),
        "{}",
        out.stdout
    );

    let out = s
        .run(
            "python3",
            "use_model.py",
            &["--model", "demo", "Hello there"],
            ADMIN_KEY,
        )
        .await;
    let text = out.succeeded();
    assert!(text.contains(&format!("endpoint={name}")), "{text}");
    assert!(
        text.contains("non-streaming: 'tok0 tok1 tok2 tok3 tok4 '"),
        "{text}"
    );
    // The mock streams one chunk per token plus the role chunk: at least 5, all of the text.
    let streamed = text
        .lines()
        .find_map(|l| l.strip_prefix("streamed "))
        .unwrap_or_else(|| panic!("no streamed line: {text}"));
    let chunks: u32 = streamed
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{streamed}"));
    assert!(
        chunks >= 5 && streamed.ends_with("25 characters"),
        "{streamed}"
    );

    let unknown = s
        .run(
            "python3",
            "use_model.py",
            &["--model", "no-such-model"],
            ADMIN_KEY,
        )
        .await;
    assert!(
        unknown.failed().contains("404 model_not_found"),
        "{}",
        unknown.stderr
    );

    let out = s.run("python3", "check_health.py", &[], ADMIN_KEY).await;
    let text = out.succeeded();
    assert!(
        text.contains("proxy ready: yes")
            && text.contains(&format!("backend {name}: healthy"))
            && text.contains("subscribed proxy proxy-expy: connected")
            && text.ends_with("all healthy\n"),
        "{text}"
    );

    // The backend goes away: the health check says so and exits 1.
    s.mock.proc.kill();
    s.wait_model("demo", 0).await;
    let out = s.run("python3", "check_health.py", &[], ADMIN_KEY).await;
    let text = out.failed();
    assert!(
        text.contains(&format!("backend {name}: unhealthy"))
            && text.contains(&format!("UNHEALTHY: backend {name} is unhealthy")),
        "{text}"
    );
}

#[tokio::test]
async fn shell_examples_against_a_running_stack() {
    let mut s = Stack::start("exsh").await;
    let mock_url = s.mock.url();
    let name = s.mock.name.clone();

    let out = s.run("bash", "list_models.sh", &[], ADMIN_KEY).await;
    assert!(out.succeeded().contains(r#""data":[]"#), "{}", out.stdout);

    let wrong = s
        .run(
            "bash",
            "register_server.sh",
            &[&name, &mock_url],
            "wrong-key-123",
        )
        .await;
    assert!(
        wrong.failed().contains(r#""code":"FORBIDDEN""#),
        "{}",
        wrong.stdout
    );

    let reg = s
        .run(
            "bash",
            "register_server.sh",
            &[&name, &mock_url, "demo"],
            ADMIN_KEY,
        )
        .await;
    let body = reg.succeeded();
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("backend JSON");
    assert_eq!(v["name"], name.as_str(), "{body}");
    assert_eq!(v["models"], serde_json::json!(["demo"]), "{body}");
    assert_eq!(v["health"]["status"], "healthy", "{body}");

    let dup = s
        .run("bash", "register_server.sh", &[&name, &mock_url], ADMIN_KEY)
        .await;
    assert!(
        dup.failed().contains(r#""code":"BACKEND_EXISTS""#),
        "{}",
        dup.stdout
    );

    s.wait_model("demo", 1).await;
    let out = s.run("bash", "list_models.sh", &[], ADMIN_KEY).await;
    let v: serde_json::Value = serde_json::from_str(out.succeeded().trim()).expect("models JSON");
    assert_eq!(v["data"][0]["id"], "demo", "{}", out.stdout);
    assert_eq!(
        v["data"][0]["multiverse"]["healthy_endpoints"], 1,
        "{}",
        out.stdout
    );

    let out = s
        .run("bash", "use_model.sh", &["demo", "Hello there"], ADMIN_KEY)
        .await;
    let text = out.succeeded();
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-multiverse-endpoint: {name}")),
        "{text}"
    );
    assert!(
        text.contains(r#""content":"tok0 tok1 tok2 tok3 tok4 ""#),
        "{text}"
    );
    let events = sse_data(text.split("== streaming").nth(1).expect("streaming part"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(events.len() >= 6, "chunks and [DONE]: {events:?}");

    let unknown = s
        .run("bash", "use_model.sh", &["no-such-model"], ADMIN_KEY)
        .await;
    assert!(
        unknown.failed().contains(r#""code":"model_not_found""#),
        "{}",
        unknown.stdout
    );

    let out = s.run("bash", "check_health.sh", &[], ADMIN_KEY).await;
    let text = out.succeeded();
    assert!(
        text.contains(r#"proxy ready: {"status":"ready""#)
            && text.contains(r#""status":"healthy""#)
            && text.contains(r#""node_id":"proxy-exsh""#)
            && text.ends_with("all healthy\n"),
        "{text}"
    );

    s.mock.proc.kill();
    s.wait_model("demo", 0).await;
    let out = s.run("bash", "check_health.sh", &[], ADMIN_KEY).await;
    let text = out.failed();
    assert!(
        text.contains("a backend is not healthy") && text.ends_with("UNHEALTHY\n"),
        "{text}"
    );
}
