//! This machine's memory, from `/proc/meminfo` (for `GET /metrics/json`).

use serde::Serialize;

/// Memory of the host, in MiB: `MemTotal`, and used = `MemTotal - MemAvailable` (what `free`
/// reports as used, page cache excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub total_memory_mb: u64,
    pub used_memory_mb: u64,
}

/// Reads `/proc/meminfo`; `None` where there is none (not Linux) or it cannot be parsed.
pub fn memory() -> Option<Memory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Parses the text of `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Some(Memory {
        total_memory_mb: total / 1024,
        used_memory_mb: total.saturating_sub(available) / 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       32768000 kB\nMemFree:         1000 kB\n\
                    MemAvailable:   24576000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Memory {
                total_memory_mb: 32000,
                used_memory_mb: 8000
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        let here = memory().expect("Linux has /proc/meminfo");
        assert!(here.total_memory_mb > 0 && here.used_memory_mb <= here.total_memory_mb);
    }
}
