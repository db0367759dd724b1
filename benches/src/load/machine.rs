//! What every benchmark result is recorded with: the exact command line that produced it and
//! a description of the machine it ran on (a latency number without either cannot be compared
//! or reproduced).

use serde::{Deserialize, Serialize};

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use (what `nproc` prints: affinity and cgroup limits applied).
    pub nproc: usize,
    /// The first `model name` in /proc/cpuinfo ("unknown" if there is none).
    pub cpu_model: String,
    /// The kernel release (/proc/sys/kernel/osrelease), or the OS name elsewhere.
    pub kernel: String,
}

impl Machine {
    /// Describes the machine this process runs on.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            kernel,
        }
    }

    /// One line for humans: `2 CPUs, AMD EPYC 7B13, kernel 6.1.0`.
    pub fn line(&self) -> String {
        format!(
            "{} CPU{}, {}, kernel {}",
            self.nproc,
            if self.nproc == 1 { "" } else { "s" },
            self.cpu_model,
            self.kernel
        )
    }
}

/// The CPU model from /proc/cpuinfo text (`model name`, or `Model`/`cpu model` on some ARM and
/// MIPS kernels).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        let value = value.trim();
        (matches!(key, "model name" | "Model" | "cpu model") && !value.is_empty())
            .then(|| value.to_string())
    })
}

/// This process's command line as a shell would need it typed (arguments quoted as needed).
pub fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell if it contains anything but safe characters.
pub fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// clap value parser: a finite number greater than 0 (rates, durations).
pub fn parse_positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a number greater than 0".into())
    }
}

/// clap value parser: a finite number of at least 0 (warm-up, pauses).
pub fn parse_non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a number of at least 0".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--rate"), "--rate");
        assert_eq!(shell_quote("target/release/x"), "target/release/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn detect_has_cpus() {
        let m = Machine::detect();
        assert!(m.nproc >= 1);
        assert!(!m.cpu_model.is_empty() && !m.line().is_empty());
    }
}
