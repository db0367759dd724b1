//! Resident memory and CPU time of a process, from `/proc/<pid>/status` and
//! `/proc/<pid>/stat` (Linux).

use std::time::Duration;

/// `VmRSS` of `pid` in KiB, or `None` (no such process, or not Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmRSS:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `VmRSS` of `pid` and of its direct children (e.g. nginx's master and workers), in KiB.
pub fn rss_with_children_kib(pid: u32) -> Option<u64> {
    let own = rss_kib(pid)?;
    Some(own + children(pid).into_iter().filter_map(rss_kib).sum::<u64>())
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads) `pid` has used so far, or `None`. Resolution: 10 ms.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// utime + stime, in ticks, from a `/proc/<pid>/stat` line (the command name may hold spaces
/// and parentheses, so fields are counted after its last closing parenthesis).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // The line's fields 14 (utime) and 15 (stime); `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of `pid` and of its direct children (e.g. nginx's master and workers).
pub fn cpu_time_with_children(pid: u32) -> Option<Duration> {
    let own = cpu_time(pid)?;
    Some(
        own + children(pid)
            .into_iter()
            .filter_map(cpu_time)
            .sum::<Duration>(),
    )
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(text), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(mib(2048), 2.0);
    }

    #[test]
    fn parses_stat() {
        let line = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(line), Some(325));
        assert_eq!(parse_cpu_ticks("nonsense"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_rss_and_cpu() {
        let kib = rss_kib(std::process::id()).expect("our own VmRSS");
        assert!(kib > 100);
        assert!(rss_with_children_kib(std::process::id()).unwrap() >= kib);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_time(std::process::id()).is_some_and(|t| t > Duration::ZERO));
        assert!(cpu_time_with_children(std::process::id()).is_some());
    }
}
