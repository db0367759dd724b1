//! The mock backends of a stack: `mock-openai` ([`MockOpenAi`]) and `mock-tei`
//! ([`MockTei`]), each on a port it picks itself and reports in its `LISTENING` line.

use std::net::SocketAddr;
use std::path::Path;

use super::Launch;
use crate::binaries::{MOCK_OPENAI, MOCK_TEI};
use crate::process::Proc;

/// A running mock-openai.
#[derive(Debug)]
pub struct MockOpenAi {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Its process name and its `--name` (the `x-mock-instance` header).
    pub name: String,
}

impl MockOpenAi {
    /// Starts mock-openai named `name` on 127.0.0.1:0 with `extra` arguments, and waits for its
    /// `LISTENING` line.
    pub fn try_start(launch: &Launch, name: &str, extra: &[&str]) -> anyhow::Result<MockOpenAi> {
        Self::try_start_on(launch, name, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// [`MockOpenAi::try_start`] on `listen` (another loopback "host", or a fixed port to
    /// come back on).
    pub fn try_start_on(
        launch: &Launch,
        name: &str,
        listen: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<MockOpenAi> {
        let mut args = vec![
            "--listen".to_string(),
            listen.to_string(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = launch.spawn(name, MOCK_OPENAI, &args, true)?;
        let addr = proc.try_wait_listening()?;
        Ok(MockOpenAi {
            proc,
            addr,
            name: name.to_string(),
        })
    }

    /// [`MockOpenAi::try_start`] for a test writing to `dir`; panics if it fails.
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> MockOpenAi {
        Self::try_start(&Launch::for_tests(dir), name, extra).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`MockOpenAi::try_start_on`] for a test writing to `dir`; panics if it fails.
    pub fn start_on(dir: &Path, name: &str, listen: SocketAddr, extra: &[&str]) -> MockOpenAi {
        Self::try_start_on(&Launch::for_tests(dir), name, listen, extra)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mock's `/mock/stats` JSON; panics if it cannot be read.
    pub async fn stats(&self, client: &reqwest::Client) -> serde_json::Value {
        client
            .get(format!("{}/mock/stats", self.url()))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats json")
    }
}

/// A running mock-tei (HTTP, or gRPC with `--grpc` in `extra`).
#[derive(Debug)]
pub struct MockTei {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Its process name and its `--name`.
    pub name: String,
}

impl MockTei {
    /// Starts mock-tei named `name` on 127.0.0.1:0 with `extra` arguments, and waits for its
    /// `LISTENING` line.
    pub fn try_start(launch: &Launch, name: &str, extra: &[&str]) -> anyhow::Result<MockTei> {
        let mut args = vec![
            "--hostname".to_string(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = launch.spawn(name, MOCK_TEI, &args, true)?;
        let addr = proc.try_wait_listening()?;
        Ok(MockTei {
            proc,
            addr,
            name: name.to_string(),
        })
    }

    /// [`MockTei::try_start`] for a test writing to `dir`; panics if it fails.
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> MockTei {
        Self::try_start(&Launch::for_tests(dir), name, extra).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
