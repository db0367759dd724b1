//! The Containerfile's images, built and run by podman (offline: see the test's doc).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use multiverse_tests::*;

use crate::{find, ok, require, root, run};

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
            // Its own libpod tmpdir too (default /run/libpod, shared by every podman on the
            // host): a concurrent podman's cleanup there failed an import ("creating runtime
            // status file: open /run/libpod/alive").
            format!("--tmpdir={}", dir.join("libpod-tmp").display()),
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
