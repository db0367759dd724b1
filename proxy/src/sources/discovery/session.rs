//! The bookkeeping of one control plane's discovery stream, apart from its I/O: which plane it
//! is, which version the proxy last ACKed from it and which it runs, and the exact request to
//! send for a hello, an ACK or a NACK.
//!
//! - The plane's id is learned from its responses (`control_plane_id`); until then its URL
//!   stands in.
//! - The hello names the node and carries the version last ACKed from this plane — kept across
//!   reconnects and even after the plane's routes were withdrawn — so a restarted control plane
//!   can number its next snapshot above it (versions only grow).
//! - An ACK echoes the snapshot's version and nonce; a NACK echoes the nonce with the version
//!   still running for this plane ("" when none is) and the reason.

use multiverse_proto::discovery::v1 as pb;

/// One plane's stream state (survives reconnects).
#[derive(Debug, Clone)]
pub struct PlaneSession {
    /// The plane's id once a response named it; its URL before.
    plane: String,
    /// The version last ACKed from this plane ("" before any).
    acked: String,
    /// The version of this plane's routes in the table ("" when none are).
    running: String,
}

/// A snapshot to validate, and how to answer it.
#[derive(Debug)]
pub struct Pushed {
    /// The plane it comes from (the key its routes are stored under).
    pub plane: String,
    pub version: String,
    pub nonce: String,
    pub snapshot: Option<pb::RouteSnapshot>,
    /// A plane whose routes this stream had in the table before another plane answered behind
    /// the same address: those routes are no longer this stream's to keep.
    pub replaced: Option<String>,
}

impl PlaneSession {
    /// A plane known only by its URL.
    pub fn new(url: &str) -> Self {
        PlaneSession {
            plane: url.to_string(),
            acked: String::new(),
            running: String::new(),
        }
    }

    /// The plane's id (its URL until a response named it).
    pub fn plane(&self) -> &str {
        &self.plane
    }

    /// The version last ACKed from this plane.
    pub fn acked(&self) -> &str {
        &self.acked
    }

    /// The first request of every stream.
    pub fn hello(&self, node_id: &str) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: Some(pb::Node {
                id: node_id.to_string(),
                build_version: env!("CARGO_PKG_VERSION").to_string(),
                labels: Default::default(),
            }),
            version_info: self.acked.clone(),
            response_nonce: String::new(),
            error_detail: None,
            usage: None,
        }
    }

    /// Takes in a response: learns the plane's id from it (a different plane behind the same
    /// URL starts with no versions).
    pub fn received(&mut self, resp: pb::DiscoveryResponse) -> Pushed {
        let mut replaced = None;
        if !resp.control_plane_id.is_empty() && resp.control_plane_id != self.plane {
            let old = std::mem::replace(&mut self.plane, resp.control_plane_id);
            if !self.running.is_empty() {
                replaced = Some(old);
            }
            self.acked.clear();
            self.running.clear();
        }
        Pushed {
            replaced,
            plane: self.plane.clone(),
            version: resp.version_info,
            nonce: resp.nonce,
            snapshot: resp.snapshot,
        }
    }

    /// The snapshot was applied: ACK it.
    pub fn ack(&mut self, version: String, nonce: String) -> pb::DiscoveryRequest {
        self.acked.clone_from(&version);
        self.running.clone_from(&version);
        pb::DiscoveryRequest {
            node: None,
            version_info: version,
            response_nonce: nonce,
            error_detail: None,
            usage: None,
        }
    }

    /// The snapshot was rejected: NACK it, naming the version still running.
    pub fn nack(&self, nonce: String, reason: String) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: None,
            version_info: self.running.clone(),
            response_nonce: nonce,
            error_detail: Some(pb::ErrorDetail { message: reason }),
            usage: None,
        }
    }

    /// The plane's routes were withdrawn from the table (it was unreachable too long).
    pub fn withdrawn(&mut self) {
        self.running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(plane: &str, version: &str, nonce: &str) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            snapshot: Some(pb::RouteSnapshot::default()),
            control_plane_id: plane.into(),
            leases: None,
            load: None,
        }
    }

    #[test]
    fn the_first_hello_names_the_node_and_holds_no_version() {
        let s = PlaneSession::new("http://cp:9001");
        let hello = s.hello("proxy-1");
        let node = hello.node.expect("node");
        assert_eq!(node.id, "proxy-1");
        assert!(!node.build_version.is_empty());
        assert_eq!(
            (hello.version_info.as_str(), hello.response_nonce.as_str()),
            ("", "")
        );
        assert!(hello.error_detail.is_none());
        assert_eq!(s.plane(), "http://cp:9001", "the URL stands in for the id");
    }

    #[test]
    fn acks_echo_version_and_nonce_and_learn_the_plane() {
        let mut s = PlaneSession::new("http://cp:9001");
        let pushed = s.received(response("cp-a", "7", "n1"));
        assert_eq!(pushed.plane, "cp-a");
        assert_eq!(s.plane(), "cp-a");
        let ack = s.ack(pushed.version, pushed.nonce);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("7", "n1")
        );
        assert!(ack.node.is_none() && ack.error_detail.is_none());
        // A response without an id keeps the one learned.
        assert_eq!(s.received(response("", "8", "n2")).plane, "cp-a");
        assert_eq!(s.acked(), "7");
        // Another plane behind the URL: its versions are not this one's, and cp-a's routes,
        // which this stream put in the table, are to be dropped.
        let p = s.received(response("cp-b", "1", "n3"));
        assert_eq!(p.plane, "cp-b");
        assert_eq!(p.replaced.as_deref(), Some("cp-a"));
        assert_eq!(s.acked(), "");
        assert_eq!(s.hello("p").version_info, "");
    }

    #[test]
    fn a_nack_names_the_running_version_its_nonce_and_the_reason() {
        let mut s = PlaneSession::new("u");
        let nack = s.nack("n0".into(), "bad".into());
        assert_eq!(nack.version_info, "", "nothing runs before the first ACK");
        let p = s.received(response("cp", "4", "n1"));
        s.ack(p.version, p.nonce);
        let p = s.received(response("cp", "5", "n2"));
        let nack = s.nack(p.nonce, "address `x` is invalid".into());
        assert_eq!(
            (nack.version_info.as_str(), nack.response_nonce.as_str()),
            ("4", "n2")
        );
        assert_eq!(
            nack.error_detail.map(|d| d.message).as_deref(),
            Some("address `x` is invalid")
        );
        assert_eq!(s.acked(), "4", "a NACK changes nothing");
    }

    #[test]
    fn the_hello_after_a_reconnect_carries_the_last_acked_version_even_when_withdrawn() {
        let mut s = PlaneSession::new("u");
        for (v, n) in [("3", "a"), ("4", "b")] {
            let p = s.received(response("cp", v, n));
            s.ack(p.version, p.nonce);
        }
        assert_eq!(s.hello("p").version_info, "4");
        s.withdrawn();
        assert_eq!(
            s.hello("p").version_info,
            "4",
            "versions must keep growing after a restart"
        );
        assert_eq!(
            s.nack("n".into(), "r".into()).version_info,
            "",
            "but nothing of this plane runs any more"
        );
    }
}
