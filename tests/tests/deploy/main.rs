//! The deploy artefacts in `deploy/` and the profiles in `config/`, checked with the tools their
//! users run, offline: hadolint on the Containerfiles, podman building and running the images,
//! shellcheck on the shell scripts, `systemd-analyze verify` / `security` on the units,
//! `kubectl kustomize` + kubernetes-validate (bundled schemas) +
//! deploy/kubernetes/check_manifests.py on the manifests (and the proxy started with the
//! Deployment's `dns+http://` control-plane URL), promtool on the Prometheus config and
//! rules, and a real Prometheus scraping both planes with the shipped scrape config.
//! scripts/test installs the tools (scripts/ensure-deploy-tools.sh); a missing tool fails its
//! test with the fix.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use multiverse_tests::*;

mod containers;
mod kubernetes_url;
mod prometheus;

pub(crate) fn root() -> PathBuf {
    multiverse_tests::repo_root()
}

/// The path of `tool` on PATH, or a panic naming the fix.
pub(crate) fn require(tool: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: scripts/test installs it (scripts/ensure-deploy-tools.sh)"
        )
    })
}

pub(crate) fn find(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Runs a command to completion; returns its output (stdout and stderr as text).
pub(crate) fn run(cmd: &mut Command) -> (bool, String, String) {
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
pub(crate) fn ok(cmd: &mut Command) -> String {
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
