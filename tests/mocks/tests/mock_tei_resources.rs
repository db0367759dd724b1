//! The process resources `mock-tei` takes on purpose for a supervisor's resource checks: an
//! RSS ballast (`--ballast-mb`, growing with `--ballast-grow-mb-per-sec` up to
//! `--ballast-max-mb`) and a simulated per-process VRAM record (`--simulated-vram-mb` in
//! `--simulated-gpu-dir` / `MULTIVERSE_SIMULATED_GPU_DIR`), each shown on a real process.

mod support;

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use multiverse_mocks::tei_resources::{record_path, stat_start_time, VramRecord};

const BIN: &str = env!("CARGO_BIN_EXE_mock-tei");
const MIB: u64 = 1024 * 1024;

#[test]
fn the_ballast_is_resident_from_the_start_and_grows_to_its_maximum() {
    let plain = support::MockProcess::start(BIN, &["--hostname", "127.0.0.1", "-p", "0"]);
    let baseline = support::rss_bytes(plain.pid());
    drop(plain);
    assert!(baseline < 64 * MIB, "baseline RSS {baseline}");

    let ballast = support::MockProcess::start(
        BIN,
        &["--hostname", "127.0.0.1", "-p", "0", "--ballast-mb", "96"],
    );
    let rss = support::rss_bytes(ballast.pid());
    assert!(
        rss >= 96 * MIB,
        "RSS {} MiB with --ballast-mb 96",
        rss / MIB
    );
    drop(ballast);

    let growing = support::MockProcess::start(
        BIN,
        &[
            "--hostname",
            "127.0.0.1",
            "-p",
            "0",
            "--ballast-mb",
            "8",
            "--ballast-grow-mb-per-sec",
            "200",
            "--ballast-max-mb",
            "72",
        ],
    );
    let pid = growing.pid();
    let grown = support::poll(Duration::from_secs(10), "RSS reaching 72 MiB", || {
        let rss = support::rss_bytes(pid);
        (rss >= 72 * MIB).then_some(rss)
    });
    assert!(grown < 72 * MIB + baseline + 16 * MIB, "{}", grown / MIB);
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mock-tei-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn read_record(dir: &std::path::Path, pid: u32) -> VramRecord {
    let bytes = std::fs::read(record_path(dir, pid)).expect("the VRAM record");
    serde_json::from_slice(&bytes).expect("a VramRecord")
}

#[test]
fn simulated_vram_is_recorded_per_pid_and_removed_on_exit() {
    let dir = scratch_dir("vram");
    let dir_arg = dir.display().to_string();
    let mut process = support::MockProcess::start_with_env(
        BIN,
        &[
            "--hostname",
            "127.0.0.1",
            "-p",
            "0",
            "--device-id",
            "1",
            "--simulated-vram-mb",
            "1536",
            "--simulated-gpu-dir",
            &dir_arg,
        ],
        &[("CUDA_VISIBLE_DEVICES", "1,GPU-3f2a")],
    );
    let pid = process.pid();
    let record = read_record(&dir, pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    assert_eq!(
        record,
        VramRecord {
            pid,
            start_time_ticks: stat_start_time(&stat),
            gpu: "GPU-3f2a".into(),
            cuda_visible_devices: Some("1,GPU-3f2a".into()),
            device_id: 1,
            used_memory_bytes: 1536 * MIB,
        }
    );
    assert!(record.start_time_ticks.is_some());
    // Only the record itself: no temporary file left beside it.
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1);
    let status = process.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(!record_path(&dir, pid).exists(), "removed on exit");

    // The directory can come from the environment (set once by a supervisor for every child);
    // without CUDA_VISIBLE_DEVICES the device is --device-id itself.
    let process = support::MockProcess::start_with_env(
        BIN,
        &[
            "--grpc",
            "--hostname",
            "127.0.0.1",
            "-p",
            "0",
            "--simulated-vram-mb",
            "100",
        ],
        &[("MULTIVERSE_SIMULATED_GPU_DIR", &dir_arg)],
    );
    let record = read_record(&dir, process.pid());
    assert_eq!(
        (
            record.gpu.as_str(),
            record.cuda_visible_devices,
            record.used_memory_bytes
        ),
        ("0", None, 100 * MIB)
    );
    drop(process);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs mock-tei expecting it to exit by itself; its status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("MULTIVERSE_SIMULATED_GPU_DIR")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mock-tei {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
}

#[test]
fn simulated_vram_refuses_a_missing_directory_or_an_invisible_device() {
    let (status, stderr) = run_to_exit(&["-p", "0", "--simulated-vram-mb", "10"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--simulated-gpu-dir"), "{stderr}");

    let dir = scratch_dir("bad-device");
    let (status, stderr) = run_to_exit(
        &[
            "--hostname",
            "127.0.0.1",
            "-p",
            "0",
            "--simulated-vram-mb",
            "10",
            "--device-id",
            "2",
        ],
        &[
            ("CUDA_VISIBLE_DEVICES", "0"),
            ("MULTIVERSE_SIMULATED_GPU_DIR", &dir.display().to_string()),
        ],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--device-id 2 is not among CUDA_VISIBLE_DEVICES=\"0\""),
        "{stderr}"
    );
    assert!(!dir.join("0.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_documents_the_knobs() {
    let output = Command::new(BIN).arg("--help").output().expect("--help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--simulate-batching",
        "--serve-prometheus",
        "--ballast-mb",
        "--ballast-grow-mb-per-sec",
        "--ballast-max-mb",
        "--simulated-vram-mb",
        "--simulated-gpu-dir",
        "MULTIVERSE_SIMULATED_GPU_DIR",
        "PROMETHEUS <ip>:<port>",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
