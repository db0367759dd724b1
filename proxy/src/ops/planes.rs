//! The control planes as the route sources see them, for `/config_dump`: each configured
//! source (a URL, or a `dns+` name with the addresses it resolved to) and each discovery stream
//! (its address, whether it is up, which plane answered, the version ACKed). Written by the
//! sources when something changes, read by the admin listener; never on the request path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Every source's status, by its configured URL.
#[derive(Debug, Default)]
pub struct PlanesStatus {
    sources: Mutex<BTreeMap<String, SourceStatus>>,
}

/// One configured control-plane URL.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceStatus {
    /// `dns` (a name resolved to many planes) or `static` (one plane).
    pub kind: &'static str,
    /// For `dns`: what resolves the name (`system`, `hosts_file:<path>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// For `dns`: the addresses of the last successful resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// For `dns`: when the name was last resolved (Unix ms) and the last error since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve_error: Option<String>,
    /// The discovery streams, by URL.
    pub streams: BTreeMap<String, StreamStatus>,
}

/// One discovery stream.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StreamStatus {
    pub connected: bool,
    /// The plane's id once it answered.
    pub plane: Option<String>,
    /// The version last ACKed on this stream.
    pub acked_version: String,
    /// False once its address left the name's resolution (the stream is closed; its routes
    /// are withdrawn after `withdraw_after_ms`).
    pub in_dns: bool,
}

impl PlanesStatus {
    /// Changes the status of `source`, creating it as `kind`.
    pub fn source(&self, source: &str, kind: &'static str, f: impl FnOnce(&mut SourceStatus)) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let s = sources
            .entry(source.to_string())
            .or_insert_with(|| SourceStatus {
                kind,
                ..Default::default()
            });
        f(s);
    }

    /// Changes (creating) the status of stream `url` of `source`.
    pub fn stream(&self, source: &str, url: &str, f: impl FnOnce(&mut StreamStatus)) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sources.get_mut(source) {
            f(s.streams
                .entry(url.to_string())
                .or_insert_with(|| StreamStatus {
                    in_dns: s.kind == "dns",
                    ..Default::default()
                }));
        }
    }

    /// Forgets stream `url` of `source` (its task ended).
    pub fn remove_stream(&self, source: &str, url: &str) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sources.get_mut(source) {
            s.streams.remove(url);
        }
    }

    /// A copy of every source's status, by URL.
    pub fn snapshot(&self) -> BTreeMap<String, SourceStatus> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_belong_to_their_source_and_show_in_the_snapshot() {
        let p = PlanesStatus::default();
        p.source("dns+http://cp.test:9001", "dns", |s| {
            s.addresses = Some(vec!["10.0.0.1:9001".into()]);
        });
        p.stream("dns+http://cp.test:9001", "http://10.0.0.1:9001", |s| {
            s.connected = true;
            s.plane = Some("cp-a".into());
        });
        // A stream of an unknown source is not invented.
        p.stream("http://nope:1", "http://nope:1", |s| s.connected = true);
        let snap = p.snapshot();
        assert_eq!(snap.len(), 1);
        let stream = &snap["dns+http://cp.test:9001"].streams["http://10.0.0.1:9001"];
        assert!(stream.connected && stream.in_dns);
        assert_eq!(stream.plane.as_deref(), Some("cp-a"));
        p.remove_stream("dns+http://cp.test:9001", "http://10.0.0.1:9001");
        assert!(p.snapshot()["dns+http://cp.test:9001"].streams.is_empty());
    }
}
