//! The deploy artefacts in `deploy/` and the profiles in `config/`, checked with the tools their
//! users run, offline: hadolint on the Containerfiles, podman building and running the images,
//! shellcheck on the shell scripts, `systemd-analyze verify` / `security` on the units,
//! `kubectl kustomize` + kubernetes-validate (bundled schemas) +
//! deploy/kubernetes/check_manifests.py on the manifests, promtool on the Prometheus config and
//! rules, and a real Prometheus scraping both planes with the shipped scrape config.
//! scripts/test installs the tools (scripts/ensure-deploy-tools.sh); a missing tool fails its
//! test with the fix.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use multiverse_tests::*;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The path of `tool` on PATH, or a panic naming the fix.
fn require(tool: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: scripts/test installs it (scripts/ensure-deploy-tools.sh)"
        )
    })
}

fn find(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Runs a command to completion; returns its output (stdout and stderr as text).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command and asserts it succeeds; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let (success, stdout, stderr) = run(cmd);
    assert!(
        success,
        "{what} failed\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    stdout
}

#[test]
fn containerfiles_pass_hadolint() {
    let hadolint = require("hadolint");
    let out = ok(Command::new(hadolint).current_dir(root()).args([
        "--failure-threshold",
        "info",
        "deploy/container/Containerfile",
        "deploy/container/Containerfile.tei",
    ]));
    assert!(out.trim().is_empty(), "hadolint findings:\n{out}");
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let shellcheck = require("shellcheck");
    let mut scripts = vec![
        "deploy/container/control-entrypoint.sh".to_string(),
        "scripts/ensure-deploy-tools.sh".to_string(),
    ];
    for entry in std::fs::read_dir(root().join("examples")).expect("examples") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".sh") {
            scripts.push(format!("examples/{name}"));
        }
    }
    assert!(scripts.len() >= 6, "{scripts:?}");
    let out = ok(Command::new(shellcheck).current_dir(root()).args(&scripts));
    assert!(out.trim().is_empty(), "shellcheck findings:\n{out}");
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let analyze = require("systemd-analyze");
    // A root with the units, placeholder executables where they expect binaries, and the
    // host's targets and slices they order against (verify needs no running systemd).
    let dir = temp_dir("systemd");
    let sysroot = dir.join("root");
    let units = sysroot.join("etc/systemd/system");
    let lib = sysroot.join("usr/lib/systemd/system");
    for d in [&units, &lib] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for exe in [
        "usr/local/bin/multiverse-proxy",
        "usr/local/bin/multiverse-control",
        "usr/bin/curl",
        "bin/kill",
    ] {
        let p = sysroot.join(exe);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "#!/bin/true\n").expect("write");
        let mut perm = std::fs::metadata(&p).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).expect("chmod");
    }
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("the host's systemd units (Debian package systemd)");
    for entry in std::fs::read_dir(host_units).expect("read units") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".target") || name.ends_with(".slice") {
            std::fs::copy(&path, lib.join(name)).expect("copy unit");
        }
    }
    let mut texts = Vec::new();
    for unit in ["multiverse-proxy.service", "multiverse-control.service"] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).expect("unit");
        std::fs::write(units.join(unit), &text).expect("copy unit");
        texts.push(text);
    }
    let root_arg = format!("--root={}", sysroot.display());

    // verify: exit 0 and not a word (unknown keys and bad values are only warnings).
    let (success, stdout, stderr) = run(Command::new(&analyze).args([
        "verify",
        &root_arg,
        "multiverse-proxy.service",
        "multiverse-control.service",
    ]));
    assert!(
        success && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );

    // The exposure score systemd computes from the sandboxing settings (0 best, 10 worst). The
    // control plane is allowed more: GPU devices, and no W^X or syscall filter for CUDA.
    for (unit, max) in [
        ("multiverse-proxy.service", 2.0),
        ("multiverse-control.service", 4.0),
    ] {
        let (_, out, err) = run(Command::new(&analyze).args([
            "security",
            "--offline=yes",
            &root_arg,
            "--no-pager",
            unit,
        ]));
        let text = format!("{out}{err}");
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}"));
        eprintln!("{unit}: exposure {score}");
        assert!(score <= max, "{unit}: exposure {score} > {max}\n{text}");
    }

    // The settings the deployment guide promises, and readiness URLs in step with the
    // production profiles' listeners.
    let (proxy, control) = (&texts[0], &texts[1]);
    for (unit, text) in [("proxy", proxy), ("control", control)] {
        for line in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "CapabilityBoundingSet=\n",
        ] {
            assert!(text.contains(line), "{unit} unit lacks {line:?}");
        }
    }
    assert!(control.contains("StateDirectory=multiverse-control"));
    assert!(control.contains("DeviceAllow=char-nvidia* rw"));
    assert!(control.contains("KillMode=mixed"));
    assert!(control.contains("LoadCredential=admin-keys:/etc/multiverse/admin-keys"));
    let prod_proxy =
        std::fs::read_to_string(root().join("config/production-proxy.toml")).expect("profile");
    let prod_control =
        std::fs::read_to_string(root().join("config/production-control.toml")).expect("profile");
    assert!(
        prod_proxy.contains("admin = \"0.0.0.0:9901\"")
            && proxy.contains("http://127.0.0.1:9901/healthz")
    );
    assert!(
        prod_control.contains("api = \"0.0.0.0:9000\"")
            && control.contains("http://127.0.0.1:9000/health")
    );
    assert!(prod_control
        .contains("api_key_file = \"/run/credentials/multiverse-control.service/admin-keys\""));
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    let validate = require("kubernetes-validate");
    let k8s = root().join("deploy/kubernetes");
    let dir = temp_dir("k8s");
    // (kustomization, extra check_manifests.py flags)
    let cases: [(&str, &[&str]); 3] = [
        (
            "base",
            &["--gpu", "--external-secret", "multiverse-admin-keys"],
        ),
        ("overlays/development", &[]),
        (
            "overlays/production",
            &["--gpu", "--external-secret", "multiverse-admin-keys"],
        ),
    ];
    let Some(kubectl) = find("kubectl") else {
        // Without kustomize the overlays (patches) cannot be rendered: validate the base's
        // plain manifests one by one, and say so.
        eprintln!(
            "kubectl is not installed: overlays not rendered, base files validated one by one"
        );
        for entry in std::fs::read_dir(k8s.join("base")).expect("base") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                ok(Command::new(&validate)
                    .args(["--strict", "--quiet"])
                    .arg(&path));
            }
        }
        return;
    };
    for (kustomization, flags) in cases {
        let rendered = ok(Command::new(&kubectl)
            .arg("kustomize")
            .arg(k8s.join(kustomization)));
        let file = dir.join(format!("{}.yaml", kustomization.replace('/', "-")));
        std::fs::write(&file, &rendered).expect("write render");
        // The oldest Kubernetes the manifests support (preStop sleep is beta from 1.30) and
        // the newest the package bundles.
        for version in ["1.30.0", ""] {
            let mut cmd = Command::new(&validate);
            cmd.args(["--strict", "--quiet"]);
            if !version.is_empty() {
                cmd.args(["-k", version]);
            }
            let (success, out, err) = run(cmd.arg(&file));
            assert!(
                success && !out.contains("ERROR") && !err.contains("ERROR"),
                "{kustomization} against {version:?}:\n{out}{err}"
            );
        }
        let mut check = Command::new("python3");
        check
            .arg(k8s.join("check_manifests.py"))
            .args(flags)
            .stdin(std::fs::File::open(&file).expect("open render"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = check.output().expect("run check_manifests.py");
        assert!(
            out.status.success(),
            "{kustomization}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{kustomization}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    // The validator rejects what it should (so a pass above means something): an unknown
    // field and a wrong type.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: x\nspec:\n  maxUnavailabl: 1\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: y\nspec:\n  ports:\n    - port: \"eighty\"\n",
    )
    .expect("write");
    let (success, out, err) = run(Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&bad));
    let text = format!("{out}{err}");
    assert!(
        !success && text.contains("maxUnavailabl") && text.contains("eighty"),
        "{text}"
    );
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let promtool = require("promtool");
    let prom = root().join("deploy/prometheus");
    let out =
        ok(Command::new(&promtool)
            .current_dir(&prom)
            .args(["check", "config", "prometheus.yml"]));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = ok(Command::new(&promtool)
        .current_dir(&prom)
        .args(["check", "rules", "alerts.yml"]));
    assert!(out.contains("SUCCESS: 13 rules found"), "{out}");
    // Each alert's unit test: fires when it should, not before, with the expected labels.
    let out =
        ok(Command::new(&promtool)
            .current_dir(&prom)
            .args(["test", "rules", "alerts_test.yml"]));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A real Prometheus with the shipped prometheus.yml and alerts.yml (scrape and evaluation
/// every second instead of 15 s, targets files pointing at this test's processes) scrapes a
/// proxy and a control plane; the test reads a series of each back through the HTTP API.
#[tokio::test]
async fn prometheus_scrapes_both_planes() {
    let prometheus = require("prometheus");
    let dir = temp_dir("prometheus");
    let client = reqwest::Client::new();
    let mock = MockOpenAi::start(&dir, "mock-prom", &["--model", "demo"]);
    let control = Control::start(&dir, "cp-prom", &backends_toml(&[&mock], "demo")).await;
    let proxy = Proxy::start(&dir, "proxy-prom", &[control.discovery_url()]).await;
    proxy.wait_ready(&client).await;
    let chat = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .json(
            &serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(chat.status(), 200);

    let conf_dir = dir.join("prometheus");
    std::fs::create_dir_all(conf_dir.join("targets")).expect("mkdir");
    let shipped =
        std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).expect("config");
    let fast = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("scrape_timeout: 5s", "scrape_timeout: 1s");
    assert!(fast.contains("scrape_interval: 1s") && fast.contains("evaluation_interval: 1s"));
    std::fs::write(conf_dir.join("prometheus.yml"), fast).expect("write config");
    std::fs::copy(
        root().join("deploy/prometheus/alerts.yml"),
        conf_dir.join("alerts.yml"),
    )
    .expect("copy rules");
    std::fs::write(
        conf_dir.join("targets/proxies.yml"),
        format!("- targets: [\"{}\"]\n", proxy.admin),
    )
    .expect("targets");
    std::fs::write(
        conf_dir.join("targets/control-planes.yml"),
        format!("- targets: [\"{}\"]\n", control.api),
    )
    .expect("targets");

    let web = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        format!(
            "--config.file={}",
            conf_dir.join("prometheus.yml").display()
        ),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={web}"),
        "--log.level=warn".into(),
    ];
    let prom = Proc::spawn("prometheus", &prometheus, &args, &dir, false);
    wait_ok(
        &client,
        &format!("http://{web}/-/ready"),
        READY_TIMEOUT,
        &prom,
    )
    .await;

    let query = |q: &'static str| {
        let (client, web) = (client.clone(), web.clone());
        async move {
            let v: serde_json::Value = client
                .get(format!("http://{web}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let result = v["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        }
    };
    let proxied = eventually(READY_TIMEOUT, "the proxy's request counter in Prometheus", || {
        query(r#"multiverse_proxy_requests_total{job="multiverse-proxy",model="demo",status="200"}"#)
    })
    .await;
    assert_eq!(proxied[0]["metric"]["endpoint"], "mock-prom", "{proxied:?}");
    assert_eq!(proxied[0]["value"][1], "1", "{proxied:?}");
    let backends = eventually(
        READY_TIMEOUT,
        "the control plane's backends gauge in Prometheus",
        || query(r#"multiverse_control_backends{job="multiverse-control"}"#),
    )
    .await;
    assert_eq!(backends[0]["value"][1], "1", "{backends:?}");
    assert_eq!(
        backends[0]["metric"]["instance"],
        control.api.to_string().as_str(),
        "{backends:?}"
    );
    let acked = eventually(
        READY_TIMEOUT,
        "the proxy's ACKed version in Prometheus",
        || query(r#"multiverse_control_proxy_acked_version{node="proxy-prom"}"#),
    )
    .await;
    assert!(
        acked[0]["value"][1].as_str().is_some_and(|v| v != "0"),
        "{acked:?}"
    );

    // Both jobs up, and the shipped rules loaded and evaluating without errors.
    let up = eventually(READY_TIMEOUT, "both targets up", || async {
        let r = query("up == 1").await?;
        (r.len() == 2).then_some(r)
    })
    .await;
    let jobs: Vec<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    assert!(
        jobs.contains(&"multiverse-proxy") && jobs.contains(&"multiverse-control"),
        "{jobs:?}"
    );
    let rules = eventually(READY_TIMEOUT, "the alert rules evaluated", || {
        let (client, web) = (client.clone(), web.clone());
        async move {
            let v: serde_json::Value = client
                .get(format!("http://{web}/api/v1/rules"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let rules: Vec<serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules
                .iter()
                .all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .then_some(rules)
        }
    })
    .await;
    assert_eq!(rules.len(), 13, "{rules:?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // Nothing is wrong with this stack, so no alert fires.
    let firing: Vec<&serde_json::Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:?}");
    drop(prom);
}

/// Podman with its own storage under `dir` (never the machine's), removed on drop with
/// everything in it.
struct Podman {
    dir: PathBuf,
    podman: PathBuf,
    base: Vec<String>,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let podman = require("podman");
        let mut base = vec![
            format!("--root={}", dir.join("storage").display()),
            format!("--runroot={}", dir.join("run").display()),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
        ];
        // crun (podman's default) refuses cgroup v1+v2 hybrid hosts such as this sandbox;
        // runc runs there and everywhere else.
        if find("runc").is_some() {
            base.push("--runtime=runc".into());
        }
        Podman {
            dir: dir.to_path_buf(),
            podman,
            base,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.podman);
        c.args(&self.base);
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--force", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .cmd()
            .args(["system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A runtime base with what gcr.io/distroless/cc-debian12 has and the binaries use: glibc's
/// loader, libc, libm, libgcc_s, the CA bundle, /etc/passwd with `nonroot` (65532), /tmp.
fn distroless_like_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in [
        "lib/x86_64-linux-gnu",
        "lib64",
        "etc/ssl/certs",
        "tmp",
        "home/nonroot",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    for (from, to) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
        (
            "/lib/x86_64-linux-gnu/libm.so.6",
            "lib/x86_64-linux-gnu/libm.so.6",
        ),
        (
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "lib/x86_64-linux-gnu/libgcc_s.so.1",
        ),
        (
            "/etc/ssl/certs/ca-certificates.crt",
            "etc/ssl/certs/ca-certificates.crt",
        ),
    ] {
        std::fs::copy(from, rootfs.join(to)).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").expect("group");
    let tar = dir.join("base.tar");
    ok(Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    // /tmp world-writable and /home/nonroot owned by nonroot, as in distroless.
    let fixed = dir.join("base-fixed.tar");
    ok(Command::new("python3")
        .args([
            "-c",
            r#"
import sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
with tarfile.open(src) as i, tarfile.open(dst, "w") as o:
    for m in i.getmembers():
        if m.name in ("./tmp",):
            m.mode = 0o1777
        if m.name == "./home/nonroot":
            m.uid = m.gid = 65532
        o.addfile(m, i.extractfile(m) if m.isfile() else None)
"#,
        ])
        .arg(&tar)
        .arg(&fixed));
    fixed
}

/// The Containerfile's runtime stages, built by podman and run. The build stage (cargo in
/// docker.io/library/rust) and the distroless base (gcr.io) cannot be pulled here, since only
/// package registries are reachable: the stage is replaced by this test's binaries
/// (`--build-context build=DIR`, as the Containerfile documents) and the base by an image made
/// of the same files distroless/cc ships. Everything after `FROM` is the shipped file's.
#[tokio::test]
async fn container_images_build_and_run() {
    let dir = temp_dir("podman");
    let podman = Podman::new(&dir.join("podman"));
    let base_tar = distroless_like_rootfs(&dir);
    ok(podman
        .cmd()
        .args(["import", "--quiet"])
        .arg(&base_tar)
        .arg("localhost/multiverse-test-base:cc"));

    // Prebuilt binaries, debug symbols stripped (the test profile's are ~180 MB each).
    let prebuilt = dir.join("prebuilt");
    std::fs::create_dir_all(prebuilt.join("out")).expect("mkdir");
    for name in ["multiverse-proxy", "multiverse-control"] {
        let dst = prebuilt.join("out").join(name);
        let (stripped, _, _) = run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin(name))
            .arg(&dst));
        if !stripped {
            std::fs::copy(bin(name), &dst).expect("copy binary");
        }
    }
    let context = dir.join("context");
    std::fs::create_dir_all(&context).expect("mkdir");
    let containerfile = root().join("deploy/container/Containerfile");
    let mut sizes = Vec::new();
    for target in ["proxy", "control"] {
        let tag = format!("localhost/multiverse-{target}:test");
        ok(podman
            .cmd()
            .args(["build", "--quiet", "--network=none", "--pull=never", "-f"])
            .arg(&containerfile)
            .args(["--target", target])
            .arg(format!("--build-context=build={}", prebuilt.display()))
            .args([
                "--build-arg",
                "RUNTIME_IMAGE=localhost/multiverse-test-base:cc",
                "-t",
                &tag,
            ])
            .arg(&context));
        let inspect = ok(podman.cmd().args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}|{{json .Config.Entrypoint}}|{{.Size}}",
            &tag,
        ]));
        let fields: Vec<&str> = inspect.trim().split('|').collect();
        assert_eq!(
            fields[0], "65532:65532",
            "{target} runs as nonroot: {inspect}"
        );
        assert_eq!(
            fields[1],
            format!("[\"/usr/local/bin/multiverse-{target}\"]"),
            "{inspect}"
        );
        sizes.push(format!(
            "{target} {:.1} MB",
            fields[2].parse::<f64>().unwrap_or(0.0) / 1e6
        ));
        // No shell at runtime.
        let (ran, out, err) = run(podman.cmd().args([
            "run",
            "--rm",
            "--network=host",
            "--ulimit=nofile=4096:4096",
            "--ulimit=nproc=4096:4096",
            "--entrypoint=/bin/sh",
            &tag,
            "-c",
            "true",
        ]));
        assert!(
            !ran && format!("{out}{err}").contains("/bin/sh"),
            "{target} has a shell?\n{out}{err}"
        );
    }
    eprintln!(
        "image sizes (debug binaries, stripped): {}",
        sizes.join(", ")
    );
    // The images hold them now: free the disk (~90 MB).
    for p in ["prebuilt", "rootfs"] {
        let _ = std::fs::remove_dir_all(dir.join(p));
    }
    for p in ["base.tar", "base-fixed.tar"] {
        let _ = std::fs::remove_file(dir.join(p));
    }

    // Both images serve: the control plane from its image, the proxy image subscribed to it,
    // a request through the proxy to a mock on the host (host network, loopback ports; the
    // sandbox also needs explicit, lower rlimits than podman's defaults).
    let client = reqwest::Client::new();
    let mock = MockOpenAi::start(&dir, "mock-img", &["--model", "demo"]);
    let (api, disc, listen, admin) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("control.toml"),
        format!(
            "id = \"cp-image\"\n[admin]\nallow_private_backends = true\n[[backends]]\nname = \"mock-img\"\nurl = \"{}\"\nmodels = [\"demo\"]\n",
            mock.url()
        ),
    )
    .expect("write config");
    // As on Kubernetes (readOnlyRootFilesystem, no /tmp): a read-only root, the control plane's
    // data directory a volume owned by the image's user.
    let run_args = [
        "run",
        "--detach",
        "--network=host",
        "--ulimit=nofile=4096:4096",
        "--ulimit=nproc=4096:4096",
        "--read-only",
        "--read-only-tmpfs=false",
    ];
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).expect("chown data dir");
    ok(podman
        .cmd()
        .args(run_args)
        .args(["--name", "mv-control"])
        .arg(format!(
            "--volume={}:/etc/multiverse/control.toml:ro",
            dir.join("control.toml").display()
        ))
        .arg(format!("--volume={}:/home/nonroot/data", data.display()))
        .args([
            "localhost/multiverse-control:test",
            "--config",
            "/etc/multiverse/control.toml",
        ])
        .arg(format!("--api-listen=127.0.0.1:{api}"))
        .arg(format!("--discovery-listen=127.0.0.1:{disc}"))
        .args(["--data-dir", "/home/nonroot/data"]));
    ok(podman
        .cmd()
        .args(run_args)
        .args(["--name", "mv-proxy", "localhost/multiverse-proxy:test"])
        .arg(format!("--listen=127.0.0.1:{listen}"))
        .arg(format!("--admin-listen=127.0.0.1:{admin}"))
        .arg(format!("--control-plane=http://127.0.0.1:{disc}")));
    let logs = || {
        ["mv-control", "mv-proxy"]
            .iter()
            .map(|c| {
                let (_, out, err) = run(podman.cmd().args(["logs", c]));
                format!("--- {c}:\n{out}{err}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let answered = eventually(READY_TIMEOUT, "a chat completion through the containers", || {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("http://127.0.0.1:{listen}/v1/chat/completions"))
                .json(&serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then(|| {
                r.headers()
                    .get("x-multiverse-endpoint")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
        }
    })
    .await;
    assert_eq!(answered.as_deref(), Some("mock-img"), "{}", logs());
    let health: serde_json::Value = client
        .get(format!("http://127.0.0.1:{api}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["control_plane_id"], "cp-image");
    // The processes run as nonroot inside, and that user wrote the control plane's run
    // directory into the volume.
    let top = ok(podman.cmd().args(["top", "mv-control", "user"]));
    assert!(top.contains("nonroot"), "{top}");
    let run_dir = std::fs::metadata(data.join("run")).expect("the control plane's run dir");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&run_dir), 65532);
    drop(mock);
    drop(podman);
}
