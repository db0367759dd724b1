//! Concurrent-connection limits, total and per client address, as the proxy's client listeners
//! and the operator API enforce them: lock-free and allocation-free per connection.
//!
//! [`ConnLimit::admit`] is asked once per accepted connection and returns a [`Permit`] that
//! gives the connection's places back when it is dropped (when the connection's task ends), or
//! [`Shed`] saying which limit it is over. The total is one atomic counter. Addresses share a
//! fixed table of slots, each one `AtomicU64` holding a 48-bit tag of the address and a 16-bit
//! count of its connections; a slot whose count is 0 is free and may be taken by any address.
//! IPv4 addresses are counted one by one, IPv6 ones per /64 (what one host or home network is
//! normally given, so rotating addresses inside it gains nothing).
//!
//! The table has at least twice as many slots as the total limit allows connections, so it
//! cannot fill up with connected addresses; should the few probed slots of an address all be
//! held by others nonetheless, that address is not limited (fail open: a stranger is never
//! refused for someone else's connections), but the total still applies.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots probed per address.
const PROBES: usize = 8;
/// The count's bits in a slot (the tag has the rest).
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Which limit a refused connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `max_connections`: the listener's total.
    Total,
    /// `max_connections_per_ip`: its client address's.
    PerIp,
}

impl Shed {
    /// A stable name for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Shed::Total => "max_connections",
            Shed::PerIp => "max_connections_per_ip",
        }
    }
}

/// The limits and their counters (shared by every accept loop of a listener).
#[derive(Debug)]
pub struct ConnLimit {
    max_total: usize,
    /// 0: no per-address limit.
    max_per_ip: u64,
    open: AtomicUsize,
    slots: Box<[AtomicU64]>,
    mask: usize,
}

/// One admitted connection's places; given back on drop.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConnLimit>,
    /// The address's slot, when it is counted there.
    slot: Option<usize>,
}

impl ConnLimit {
    /// At most `max_total` connections at once, and `max_per_ip` from one address (0: no
    /// per-address limit; capped at 65535).
    pub fn new(max_total: usize, max_per_ip: u32) -> Arc<Self> {
        let max_per_ip = u64::from(max_per_ip).min(COUNT_MASK);
        let n = if max_per_ip == 0 {
            0
        } else {
            max_total
                .saturating_mul(2)
                .clamp(PROBES, 1 << 22)
                .next_power_of_two()
        };
        Arc::new(ConnLimit {
            max_total: max_total.max(1),
            max_per_ip,
            open: AtomicUsize::new(0),
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n.saturating_sub(1),
        })
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A new connection from `ip` (`None`: an address that is not IP, e.g. a Unix socket; only
    /// the total applies).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, Shed> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::Total);
        }
        let slot = match ip.filter(|_| self.max_per_ip > 0) {
            Some(ip) => match self.take_slot(ip) {
                Ok(slot) => slot,
                Err(shed) => {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err(shed);
                }
            },
            None => None,
        };
        Ok(Permit {
            limit: self.clone(),
            slot,
        })
    }

    /// Counts one more connection of `ip` in its slot: `Ok(None)` when no probed slot is its
    /// or free (not counted, admitted), `Err` when the address is at its limit.
    fn take_slot(&self, ip: IpAddr) -> Result<Option<usize>, Shed> {
        let tag = tag(ip);
        let start = (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize;
        // The address's own slot first (it may sit behind a free one), else the first free one.
        loop {
            let mut free = None;
            let mut raced = false;
            for i in 0..PROBES {
                let index = (start + i) & self.mask;
                let slot = &self.slots[index];
                let word = slot.load(Ordering::Acquire);
                let count = word & COUNT_MASK;
                if count > 0 && word >> COUNT_BITS == tag {
                    if count >= self.max_per_ip {
                        return Err(Shed::PerIp);
                    }
                    if slot
                        .compare_exchange(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok(Some(index));
                    }
                    raced = true;
                    break;
                }
                if count == 0 && free.is_none() {
                    free = Some((index, word));
                }
            }
            if raced {
                continue;
            }
            let Some((index, word)) = free else {
                return Ok(None);
            };
            if self.slots[index]
                .compare_exchange(
                    word,
                    (tag << COUNT_BITS) | 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Ok(Some(index));
            }
            // Taken meanwhile (by this address or another): look again.
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            // The count is at least 1 (this permit's): the tag's bits are untouched.
            self.limit.slots[index].fetch_sub(1, Ordering::AcqRel);
        }
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A 48-bit tag of the address (its /64 for IPv6), never 0.
fn tag(ip: IpAddr) -> u64 {
    let raw = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)) | (1 << 40),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)) | (1 << 40),
            None => (u128::from(v6) >> 64) as u64,
        },
    };
    // A multiplicative hash folded to 48 bits (the IPv4 ones are exact below 2^41).
    let hashed = if raw < (1 << 41) {
        raw
    } else {
        let h = raw.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        (h ^ (h >> 29)) & ((1 << (64 - COUNT_BITS)) - 1)
    };
    hashed.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn per_address_limit_and_release() {
        let limit = ConnLimit::new(100, 2);
        let a1 = limit.admit(v4(1)).expect("first");
        let _a2 = limit.admit(v4(1)).expect("second");
        assert_eq!(limit.admit(v4(1)).unwrap_err(), Shed::PerIp);
        // Another address is unaffected.
        let _b = limit.admit(v4(2)).expect("other address");
        assert_eq!(limit.open(), 3);
        drop(a1);
        assert_eq!(limit.open(), 2);
        let _a3 = limit.admit(v4(1)).expect("a place was given back");
        assert_eq!(limit.admit(v4(1)).unwrap_err(), Shed::PerIp);
    }

    #[test]
    fn total_limit_applies_to_every_address() {
        let limit = ConnLimit::new(3, 0);
        let held: Vec<_> = (1..=3)
            .map(|i| limit.admit(v4(i)).expect("under"))
            .collect();
        assert_eq!(limit.admit(v4(9)).unwrap_err(), Shed::Total);
        assert_eq!(limit.admit(None).unwrap_err(), Shed::Total);
        drop(held);
        assert_eq!(limit.open(), 0);
        limit.admit(v4(9)).expect("free again");
    }

    #[test]
    fn a_refused_connection_takes_no_place() {
        let limit = ConnLimit::new(10, 1);
        let _a = limit.admit(v4(1)).expect("first");
        for _ in 0..100 {
            assert_eq!(limit.admit(v4(1)).unwrap_err(), Shed::PerIp);
        }
        assert_eq!(limit.open(), 1);
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let limit = ConnLimit::new(10, 1);
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("v6");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("v6");
        let _a = limit.admit(Some(a.into())).expect("first of the /64");
        assert_eq!(limit.admit(Some(b.into())).unwrap_err(), Shed::PerIp);
        limit.admit(Some(c.into())).expect("another /64");
    }

    #[test]
    fn many_addresses_released_leave_the_table_empty() {
        let limit = ConnLimit::new(1000, 4);
        let held: Vec<_> = (0..1000u32)
            .map(|i| {
                let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
                limit
                    .admit(Some(ip))
                    .expect("room for every connected address")
            })
            .collect();
        assert_eq!(limit.open(), 1000);
        drop(held);
        assert_eq!(limit.open(), 0);
        assert!(limit
            .slots
            .iter()
            .all(|s| s.load(Ordering::Relaxed) & COUNT_MASK == 0));
    }

    #[test]
    fn concurrent_admits_never_exceed_the_limits() {
        let limit = ConnLimit::new(1000, 5);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limit = limit.clone();
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        for _ in 0..100 {
                            if let Ok(p) = limit.admit(v4(7)) {
                                kept.push(p);
                            }
                        }
                        let n = kept.len();
                        // Held until every thread is done admitting.
                        std::mem::forget(kept);
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(admitted, 5);
    }
}
