//! The limits watcher: every `[instances] limits_interval_ms`, each instance with `[limits]`
//! and a live process is measured — the VmRSS of its process group from `/proc`, its group's
//! VRAM from NVML's per-process memory — and what exceeds a limit is sent to its supervisor
//! as a [`Breach`], where the state machine decides (event, then restart or warning).
//!
//! Cost: one `/proc` scan plus one `status` read per process of a limited instance, and one
//! NVML reading when any instance has `max_vram_mb`, per interval; nothing when no instance
//! has limits.

use std::sync::Weak;
use std::time::Duration;

use super::manager::Manager;
use super::process;
use super::supervisor::machine::Breach;
use super::supervisor::Command;
use crate::store::Limits;

const MIB: u64 = 1024 * 1024;

/// What one instance's measurements break, given its limits (pure).
pub fn breaches(pid: u32, limits: &Limits, rss_bytes: u64, vram_bytes: Option<u64>) -> Vec<Breach> {
    let mut out = Vec::new();
    if let Some(max) = limits.max_memory_mb {
        if rss_bytes > max.saturating_mul(MIB) {
            out.push(Breach {
                pid,
                limit: "max_memory_mb",
                used_mb: rss_bytes / MIB,
                max_mb: max,
                restart: true,
            });
        }
    }
    if let (Some(max), Some(vram)) = (limits.max_vram_mb, vram_bytes) {
        if vram > max.saturating_mul(MIB) {
            out.push(Breach {
                pid,
                limit: "max_vram_mb",
                used_mb: vram / MIB,
                max_mb: max,
                restart: limits.enforce,
            });
        }
    }
    out
}

/// Runs until the manager is gone.
pub async fn watch(manager: Weak<Manager>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = manager.upgrade() else {
            return;
        };
        let limited = m.limited();
        if limited.is_empty() {
            continue;
        }
        let usage = if limited.iter().any(|l| l.limits.max_vram_mb.is_some()) {
            Some(m.gpu_usage().await)
        } else {
            None
        };
        let pgids: Vec<u32> = limited.iter().map(|l| l.pid).collect();
        let measured = tokio::task::spawn_blocking(move || {
            let groups = process::group_members(&pgids);
            pgids
                .iter()
                .map(|p| process::rss_bytes(groups.get(p).map_or(&[][..], Vec::as_slice)))
                .collect::<Vec<u64>>()
        })
        .await
        .unwrap_or_default();
        for (l, rss) in limited.into_iter().zip(measured) {
            let vram = usage.as_ref().and_then(|u| u.of(l.gpu_id, Some(l.pid)).0);
            for b in breaches(l.pid, &l.limits, rss, vram) {
                let _ = l.tx.send(Command::Limit(b)).await;
            }
        }
    }
}

/// An instance with limits and a live process.
pub struct Limited {
    pub pid: u32,
    pub gpu_id: Option<u32>,
    pub limits: Limits,
    pub tx: tokio::sync::mpsc::Sender<Command>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaches_by_limit() {
        let limits = Limits {
            max_memory_mb: Some(100),
            max_vram_mb: Some(500),
            enforce: false,
            max_cpu_percent: None,
            max_requests_per_sec: None,
        };
        assert!(
            breaches(7, &limits, 100 * MIB, Some(500 * MIB)).is_empty(),
            "at the limit"
        );
        let b = breaches(7, &limits, 150 * MIB, Some(600 * MIB));
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].limit, b[0].used_mb, b[0].max_mb, b[0].restart),
            ("max_memory_mb", 150, 100, true)
        );
        assert_eq!((b[1].limit, b[1].restart), ("max_vram_mb", false));
        let enforced = Limits {
            enforce: true,
            ..limits.clone()
        };
        assert!(breaches(7, &enforced, 0, Some(600 * MIB))[0].restart);
        assert!(
            breaches(7, &limits, 0, None).is_empty(),
            "VRAM unknown: nothing"
        );
    }
}
