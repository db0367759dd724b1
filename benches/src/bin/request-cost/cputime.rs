//! CPU time of a running target from /proc, per request of a native (not callgrind) run: what
//! turns callgrind's instructions per request into time on this machine. The total is each
//! thread's `schedstat` run time (nanoseconds, exact); the user part is that total times the
//! process's share of user ticks in `stat` (`utime / (utime + stime)`: the kernel samples the
//! split at its tick, so it is statistical and wants a few thousand requests).

use anyhow::Context;

/// CPU used by a process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Run time of all its threads, ns.
    pub on_cpu_ns: u64,
    /// `utime` and `stime` of `/proc/<pid>/stat`, clock ticks.
    pub user_ticks: u64,
    pub system_ticks: u64,
}

impl CpuTime {
    /// Reads `pid`'s counters.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let mut on_cpu_ns = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("process {pid} is gone"))?
        {
            let text = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
            on_cpu_ns += first_number(&text);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let (user_ticks, system_ticks) = user_system(&stat);
        Ok(Self {
            on_cpu_ns,
            user_ticks,
            system_ticks,
        })
    }

    /// (user, total) CPU µs between `before` and `self`, per one of `n` requests.
    pub fn per_request_since(&self, before: &Self, n: u64) -> (f64, f64) {
        let total = self.on_cpu_ns.saturating_sub(before.on_cpu_ns) as f64 / 1000.0;
        let user = self.user_ticks.saturating_sub(before.user_ticks) as f64;
        let system = self.system_ticks.saturating_sub(before.system_ticks) as f64;
        let share = if user + system > 0.0 {
            user / (user + system)
        } else {
            0.0
        };
        let n = n.max(1) as f64;
        (total * share / n, total / n)
    }
}

fn first_number(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `utime` and `stime` (fields 14 and 15; the name in field 2 may hold spaces, so fields are
/// counted after its closing parenthesis).
fn user_system(stat: &str) -> (u64, u64) {
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let user = next();
    (user, next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_name() {
        let stat = "42 (multi verse) S 1 42 42 0 -1 4194560 100 0 0 0 731 205 0 0 20 0 3";
        assert_eq!(user_system(stat), (731, 205));
        assert_eq!(first_number("123456 789 10\n"), 123456);
        let me = CpuTime::of(std::process::id()).expect("own /proc");
        assert!(me.on_cpu_ns > 0);
    }

    #[test]
    fn per_request_splits_by_the_tick_share() {
        let before = CpuTime::default();
        let after = CpuTime {
            on_cpu_ns: 4_000_000,
            user_ticks: 3,
            system_ticks: 1,
        };
        assert_eq!(after.per_request_since(&before, 100), (30.0, 40.0));
    }
}
