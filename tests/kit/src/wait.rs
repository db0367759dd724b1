//! Readiness waits: the one [`READY_TIMEOUT`] every child gets, polling an HTTP readiness
//! endpoint ([`try_wait_ok`]) or a listener ([`try_wait_accepting`]) while watching the child,
//! and polling any condition ([`eventually`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::process::Proc;

/// How long any child gets to become ready (print `LISTENING`, answer its readiness endpoint).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Time between two polls.
const POLL: Duration = Duration::from_millis(20);
/// Time one readiness request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls `GET url` until it answers 200 (a readiness endpoint). Fails at once, with the end of
/// its log, if `proc` exits, and after `timeout` with the last answer.
pub async fn try_wait_ok(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    proc: &Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.ensure_running()?;
        let last = match client.get(url).timeout(REQUEST_TIMEOUT).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                format!("{status}: {}", snippet(&body))
            }
            Err(e) => format!("{e}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} not ready within {timeout:?} (GET {url}: {last}){}",
                proc.name,
                proc.log_excerpt()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `addr` until it accepts a TCP connection (closed again at once). Fails at once, with
/// the end of its log, if `proc` exits, and after `timeout`.
pub async fn try_wait_accepting(
    addr: SocketAddr,
    timeout: Duration,
    proc: &Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.ensure_running()?;
        let last = match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 1 s".into(),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} does not accept connections on {addr} within {timeout:?} ({last}){}",
                proc.name,
                proc.log_excerpt()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`try_wait_ok`]; panics if it fails.
pub async fn wait_ok(client: &reqwest::Client, url: &str, timeout: Duration, what: &Proc) {
    if let Err(e) = try_wait_ok(client, url, timeout, what).await {
        panic!("{e:#}");
    }
}

/// Polls until `check` returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The start of a response body, for error messages.
fn snippet(body: &str) -> String {
    let end = body.char_indices().nth(200).map_or(body.len(), |(i, _)| i);
    body[..end].trim().to_string()
}
