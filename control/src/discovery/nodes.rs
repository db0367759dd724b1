//! What the control plane knows about each proxy: connected since when, which version it ACKed,
//! its last NACK and why. Shown by `GET /proxies`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use multiverse_common::time::now_rfc3339;
use serde::Serialize;

/// One proxy as seen from here.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub build_version: String,
    pub connected: bool,
    /// RFC 3339 times.
    pub connected_since: Option<String>,
    pub last_seen: String,
    /// Last version the proxy ACKed.
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    #[serde(skip)]
    stream: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub reason: String,
    pub at: String,
}

/// All proxies that ever connected to this process.
#[derive(Default)]
pub struct Nodes {
    inner: Mutex<(u64, BTreeMap<String, NodeStatus>)>,
}

impl Nodes {
    /// A stream opened; returns its id (a later stream of the same node supersedes it).
    pub fn connected(&self, node_id: &str, build_version: &str) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let stream = g.0;
        let now = now_rfc3339();
        let entry =
            g.1.entry(node_id.to_string())
                .or_insert_with(|| NodeStatus {
                    node_id: node_id.to_string(),
                    build_version: String::new(),
                    connected: false,
                    connected_since: None,
                    last_seen: now.clone(),
                    acked_version: None,
                    last_nack: None,
                    stream,
                });
        entry.build_version = build_version.to_string();
        entry.connected = true;
        entry.connected_since = Some(now.clone());
        entry.last_seen = now;
        entry.stream = stream;
        stream
    }

    fn update(&self, node_id: &str, stream: u64, f: impl FnOnce(&mut NodeStatus)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.1.get_mut(node_id) {
            if n.stream == stream {
                n.last_seen = now_rfc3339();
                f(n);
            }
        }
    }

    pub fn acked(&self, node_id: &str, stream: u64, version: &str) {
        self.update(node_id, stream, |n| {
            n.acked_version = Some(version.to_string())
        });
    }

    pub fn nacked(&self, node_id: &str, stream: u64, version: &str, reason: &str) {
        self.update(node_id, stream, |n| {
            n.last_nack = Some(Nack {
                version: version.to_string(),
                reason: reason.to_string(),
                at: now_rfc3339(),
            })
        });
    }

    pub fn disconnected(&self, node_id: &str, stream: u64) {
        self.update(node_id, stream, |n| {
            n.connected = false;
            n.connected_since = None;
        });
    }

    pub fn list(&self) -> Vec<NodeStatus> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_acks_nacks_and_superseded_streams() {
        let n = Nodes::default();
        let s1 = n.connected("p1", "0.1.0");
        n.acked("p1", s1, "3");
        let s2 = n.connected("p1", "0.1.0");
        n.disconnected("p1", s1); // the old stream ending must not mark p1 down
        n.nacked("p1", s2, "4", "bad address");
        let l = n.list();
        assert_eq!(l.len(), 1);
        assert!(l[0].connected);
        assert_eq!(l[0].acked_version.as_deref(), Some("3"));
        assert_eq!(
            l[0].last_nack.as_ref().map(|x| x.reason.as_str()),
            Some("bad address")
        );
        n.disconnected("p1", s2);
        assert!(!n.list()[0].connected);
    }
}
