//! HTTP/1.1 on a raw socket, for the tests of hostile clients and abuse limits: what came back
//! before the proxy closed the connection ([`Reply`]), and one whole response read off a kept
//! connection. Every wait is bounded by [`CAP`].

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest any single wait for the proxy may take before a test calls it a hang.
pub const CAP: Duration = Duration::from_secs(5);

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The proxy closed the connection (EOF or reset) within [`CAP`].
    pub closed: bool,
    /// From the start given to [`read_to_close`] to the close (or to the cap).
    pub elapsed: Duration,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }

    /// The JSON body of the first response.
    pub fn json(&self) -> Value {
        let text = self.text();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    }
}

/// The status code of the response `bytes` start with, if a status line is there.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Reads from `stream` until the proxy closes it or [`CAP`] (from `started`) passes.
pub async fn read_to_close(stream: &mut TcpStream, started: Instant) -> Reply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = CAP.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Reply {
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

/// Reads one whole response with a Content-Length body; returns its status.
pub async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + CAP;
    loop {
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("a response within the cap")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("a Content-Length");
        if body.len() >= length {
            return status_of(&bytes).expect("a status line");
        }
    }
}
