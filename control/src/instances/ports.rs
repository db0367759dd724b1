//! Ports for new instances: the one asked for, or the first free one of `[instances]
//! port_range`, plus one for TEI's prometheus endpoint. A port is reserved under the manager's
//! lock (so concurrent creates never get the same one) and checked for being free on the host
//! outside it.

use std::collections::BTreeSet;
use std::net::TcpListener;

use super::manager::Manager;
use super::InstanceError;

impl Manager {
    pub(super) fn release_ports(&self, ports: &[u16]) {
        let mut inner = self.lock();
        for p in ports {
            inner.ports.remove(p);
        }
    }

    /// Reserves the instance port (`wanted`, or the first free one in the range) and a
    /// prometheus port. Choosing and reserving are one step under the lock, so concurrent
    /// creates never pick the same port; whether a port is free on the host is checked outside.
    pub(super) async fn reserve_ports(
        &self,
        wanted: Option<u16>,
    ) -> Result<(u16, u16), InstanceError> {
        let (lo, hi) = self.settings.port_range;
        let mut busy = BTreeSet::new();
        let mut chosen: Vec<u16> = Vec::with_capacity(2);
        while chosen.len() < 2 {
            let candidate = {
                let mut inner = self.lock();
                let taken = inner.taken_ports();
                let pick = match (chosen.is_empty(), wanted) {
                    (true, Some(p)) => {
                        if taken.contains(&p) {
                            return Err(InstanceError::PortConflict(p));
                        }
                        Some(p)
                    }
                    _ => (lo..=hi).find(|p| !taken.contains(p) && !busy.contains(p)),
                };
                let Some(p) = pick else {
                    drop(inner);
                    self.release_ports(&chosen);
                    return Err(InstanceError::NoFreePort { lo, hi });
                };
                inner.ports.insert(p);
                p
            };
            let host = self.supervision.hostname.clone();
            let free = tokio::task::spawn_blocking(move || port_free(&host, candidate))
                .await
                .unwrap_or(false);
            if free {
                chosen.push(candidate);
                continue;
            }
            self.release_ports(&[candidate]);
            if chosen.is_empty() && wanted.is_some() {
                return Err(InstanceError::PortInUse(candidate));
            }
            busy.insert(candidate);
        }
        Ok((chosen[0], chosen[1]))
    }
}

/// Whether `port` can be bound on `host` right now.
fn port_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}
