//! The per-client-address request limit (`[limits] per_ip_rpm`, off by default): a fixed table
//! of GCRA cells ([`multiverse_common::rate`]) indexed by the client's address, lock-free and
//! allocation-free. IPv4 addresses are limited one by one, IPv6 ones per /64 (what one host or
//! home network is normally given, so rotating addresses inside it gains nothing).
//!
//! An address takes a slot among a few probed ones; a slot whose cell is full again (its
//! address idle for a minute) is as good as empty and may be taken over. When every probed slot
//! belongs to an address active within the last minute (far more active addresses than
//! `per_ip_tracked`), the newcomer is not limited: failing open keeps strangers from being
//! refused for someone else's traffic.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use multiverse_common::rate::{Cell, Decision};

/// Slots probed per address.
const PROBES: usize = 4;

struct Slot {
    /// The address's tag (0: never used).
    tag: AtomicU64,
    cell: Cell,
}

/// Per-address cells.
pub struct ClientLimit {
    rpm: u64,
    slots: Box<[Slot]>,
    mask: usize,
}

impl ClientLimit {
    /// `rpm` requests a minute per address, tracking about `tracked` addresses at once.
    pub fn new(rpm: u32, tracked: usize) -> Self {
        let n = tracked.max(PROBES).next_power_of_two();
        let slots = (0..n)
            .map(|_| Slot {
                tag: AtomicU64::new(0),
                cell: Cell::default(),
            })
            .collect();
        ClientLimit {
            rpm: u64::from(rpm),
            slots,
            mask: n - 1,
        }
    }

    /// The limit.
    pub fn rpm(&self) -> u64 {
        self.rpm
    }

    /// One request from `ip` at `now` (nanoseconds, monotonic). `None`: not tracked (the
    /// table is full of active addresses), admitted.
    pub fn take(&self, ip: IpAddr, now: u64) -> Option<Decision> {
        let tag = tag(ip);
        let start = (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        for _ in 0..2 {
            let mut free = None;
            for i in 0..PROBES {
                let slot = &self.slots[(start + i) & self.mask];
                let t = slot.tag.load(Ordering::Acquire);
                if t == tag {
                    return Some(slot.cell.take(self.rpm, 1, now));
                }
                if free.is_none() && (t == 0 || slot.cell.idle(now)) {
                    free = Some((slot, t));
                }
            }
            let (slot, old) = free?;
            if slot
                .tag
                .compare_exchange(old, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(slot.cell.take(self.rpm, 1, now));
            }
            // Another address took the slot meanwhile: look again.
        }
        None
    }
}

/// A non-zero tag for an address (IPv6: its /64).
fn tag(ip: IpAddr) -> u64 {
    let (family, bits) = match ip {
        IpAddr::V4(v4) => (0x4u64, u64::from(u32::from(v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (0x4, u64::from(u32::from(v4))),
            None => (0x6, (u128::from(v6) >> 64) as u64),
        },
    };
    // splitmix64 finaliser: distinct inputs, well-spread outputs.
    let mut z = bits ^ (family << 60) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn each_address_has_its_own_budget_and_ipv6_counts_per_64() {
        let l = ClientLimit::new(3, 64);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.take(a, S).expect("tracked").allowed);
        }
        let refused = l.take(a, S).expect("tracked");
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, 20 * S);
        assert!(l.take(b, S).expect("tracked").allowed, "b is not a");
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let v6c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.take(v6a, S).expect("tracked").allowed);
        }
        assert!(!l.take(v6b, S).expect("tracked").allowed, "same /64");
        assert!(l.take(v6c, S).expect("tracked").allowed, "another /64");
        // The mapped form of a v4 address is that address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(!l.take(mapped, S).expect("tracked").allowed);
    }

    #[test]
    fn idle_slots_are_reused_and_a_full_table_fails_open() {
        let l = ClientLimit::new(1, 4);
        let ips: Vec<IpAddr> = (1..=64u8).map(|i| IpAddr::from([192, 168, 0, i])).collect();
        let tracked = ips.iter().filter(|ip| l.take(**ip, S).is_some()).count();
        assert_eq!(tracked, 4, "four slots");
        // A minute later every slot is idle again: new addresses get them.
        let later = S + 61 * S;
        let fresh: IpAddr = "172.16.0.1".parse().expect("ip");
        let d = l.take(fresh, later).expect("an idle slot is taken over");
        assert!(d.allowed);
        assert!(!l.take(fresh, later).expect("tracked").allowed);
    }
}
