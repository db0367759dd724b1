//! Helpers shared by the mock-server integration tests: an HTTP client and a guard for mock
//! processes started from the built binaries (killed by pid if a test fails midway).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A reqwest client with a short overall timeout.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A mock started as a separate process; killed (by its pid) when dropped.
pub struct MockProcess {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    /// The address from its `LISTENING` line.
    pub addr: SocketAddr,
}

impl MockProcess {
    /// Starts `bin` with `args` and waits for its `LISTENING <addr>` line.
    pub fn start(bin: &str, args: &[&str]) -> Self {
        Self::start_with_env(bin, args, &[])
    }

    /// [`MockProcess::start`] with extra environment variables (the variables mock-tei reads
    /// for its knobs are removed first, so the caller's environment does not leak in).
    pub fn start_with_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("API_KEY")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env_remove("MULTIVERSE_SIMULATED_GPU_DIR")
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let line = read_line(&mut stdout);
        let addr = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Self {
            child: Some(child),
            stdout,
            addr,
        }
    }

    /// The next line on its stdout (after `LISTENING`), trimmed.
    pub fn next_line(&mut self) -> String {
        read_line(&mut self.stdout)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `limit` for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mock did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read a stdout line");
    line.trim().to_string()
}

/// The `VmRSS` of `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
pub fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
