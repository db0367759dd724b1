//! Helpers shared by the mock-server integration tests: an HTTP client and a guard for mock
//! processes started from the built binaries (killed by pid if a test fails midway).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
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
    /// The address from its `LISTENING` line.
    pub addr: SocketAddr,
}

impl MockProcess {
    /// Starts `bin` with `args` and waits for its `LISTENING <addr>` line.
    pub fn start(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("API_KEY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read LISTENING line");
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Self {
            child: Some(child),
            addr,
        }
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

impl Drop for MockProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
