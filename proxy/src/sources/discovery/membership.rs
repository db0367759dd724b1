//! Which addresses of a `dns+` name have a discovery stream, as a pure state machine over the
//! resolutions the driver reports (no I/O, no timers here).
//!
//! - An address that appears gets a stream ([`Change::Add`]).
//! - An address that leaves the answer is retired ([`Change::Retire`]): its stream is closed
//!   and its plane's routes are withdrawn once `withdraw_after_ms` has passed — unless it comes
//!   back first ([`Change::Revive`]), when the same stream (and session) opens again.
//! - A failed resolution changes nothing (the driver does not report it): a DNS outage must not
//!   empty the table. A name that resolves to nothing is a failure too.
//! - Once a retired stream's task ended (its routes withdrawn), the driver reports it
//!   ([`Membership::ended`]) and the address is forgotten; if it returns it is new.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// What the driver must do after a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Start a stream to this address.
    Add(SocketAddr),
    /// Close this address's stream; withdraw its plane after the grace.
    Retire(SocketAddr),
    /// A retired address is back: open its stream again.
    Revive(SocketAddr),
}

/// The addresses with a stream, and whether each is still in the name's answer.
#[derive(Debug, Default, Clone)]
pub struct Membership {
    members: BTreeMap<SocketAddr, bool>,
}

impl Membership {
    /// A successful resolution to `addrs`: the changes, in address order.
    pub fn resolved(&mut self, addrs: &BTreeSet<SocketAddr>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (addr, listed) in self.members.iter_mut() {
            match (addrs.contains(addr), *listed) {
                (false, true) => changes.push(Change::Retire(*addr)),
                (true, false) => changes.push(Change::Revive(*addr)),
                _ => {}
            }
            *listed = addrs.contains(addr);
        }
        for addr in addrs {
            if !self.members.contains_key(addr) {
                self.members.insert(*addr, true);
                changes.push(Change::Add(*addr));
            }
        }
        changes.sort_by_key(|c| match c {
            Change::Add(a) | Change::Retire(a) | Change::Revive(a) => *a,
        });
        changes
    }

    /// The stream of `addr` ended (a retired one, its routes withdrawn): forget the address.
    pub fn ended(&mut self, addr: SocketAddr) {
        self.members.remove(&addr);
    }

    /// The addresses in the last answer.
    pub fn listed(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.members
            .iter()
            .filter(|(_, listed)| **listed)
            .map(|(a, _)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 9001))
    }

    fn set(lasts: &[u8]) -> BTreeSet<SocketAddr> {
        lasts.iter().map(|l| a(*l)).collect()
    }

    #[test]
    fn new_addresses_get_streams_and_gone_ones_are_retired_then_revived() {
        let mut m = Membership::default();
        assert_eq!(
            m.resolved(&set(&[2, 3, 4])),
            [Change::Add(a(2)), Change::Add(a(3)), Change::Add(a(4))]
        );
        assert_eq!(
            m.resolved(&set(&[2, 3, 4])),
            [],
            "the same answer changes nothing"
        );
        // A host leaves and another joins in one answer.
        assert_eq!(
            m.resolved(&set(&[2, 4, 5])),
            [Change::Retire(a(3)), Change::Add(a(5))]
        );
        assert_eq!(m.listed().collect::<Vec<_>>(), [a(2), a(4), a(5)]);
        assert_eq!(m.resolved(&set(&[2, 4, 5])), [], "retired once");
        // Back before its grace ran out: the same stream opens again.
        assert_eq!(m.resolved(&set(&[2, 3, 4, 5])), [Change::Revive(a(3))]);
    }

    #[test]
    fn an_address_whose_stream_ended_is_new_when_it_returns() {
        let mut m = Membership::default();
        m.resolved(&set(&[2, 3]));
        assert_eq!(m.resolved(&set(&[2])), [Change::Retire(a(3))]);
        m.ended(a(3));
        assert_eq!(m.resolved(&set(&[2])), []);
        assert_eq!(m.resolved(&set(&[2, 3])), [Change::Add(a(3))]);
    }
}
