//! Syscalls per request from `strace -c -f`, attached to a running target for one family's
//! requests only (attached after the warm-up, detached with SIGINT, which makes strace write
//! its summary), and context switches from /proc (counted without strace: its stops would add
//! some).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use multiverse_testkit::{Proc, READY_TIMEOUT};

/// strace attached to every thread of a process.
pub struct Attached {
    proc: Proc,
    summary: PathBuf,
}

impl Attached {
    /// Attaches to `pid` (all its threads) and returns once strace says every thread is
    /// attached, so no syscall of the requests that follow is
    /// missed.
    pub fn attach(pid: u32, name: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::attach_with(pid, name, dir, &["-c"])
    }

    /// Attaches with strace options `options` instead of `-c` (e.g. `-tt` for a log of every
    /// call, kept as `<dir>/<name>.strace`: see [`Attached::finish_log`]).
    pub fn attach_with(pid: u32, name: &str, dir: &Path, options: &[&str]) -> anyhow::Result<Self> {
        let summary = dir.join(format!("{name}.strace"));
        let threads = threads(pid)?;
        let mut args: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        args.extend([
            "-f".into(),
            "-o".into(),
            summary.display().to_string(),
            "-p".into(),
            pid.to_string(),
        ]);
        let proc = Proc::try_spawn(
            &format!("{name}-strace"),
            Path::new("strace"),
            &args,
            &[],
            dir,
            false,
        )?;
        let started = Instant::now();
        loop {
            proc.ensure_running()?;
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            // "Process N attached with T threads", or one "Process N attached" per thread.
            if log.contains(" attached with ") || log.matches(" attached").count() >= threads {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("strace did not attach to {threads} threads of {pid}: {log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { proc, summary })
    }

    /// Detaches and returns the calls per syscall (started with [`Attached::attach`]).
    pub fn finish(self) -> anyhow::Result<BTreeMap<String, u64>> {
        let summary = self.detach()?;
        let text = std::fs::read_to_string(&summary)
            .with_context(|| format!("cannot read {}", summary.display()))?;
        let _ = std::fs::remove_file(&summary);
        Ok(parse_summary(&text))
    }

    /// Detaches and returns the file strace wrote (started with [`Attached::attach_with`]).
    pub fn finish_log(self) -> anyhow::Result<PathBuf> {
        self.detach()
    }

    fn detach(mut self) -> anyhow::Result<PathBuf> {
        self.proc.signal(nix::sys::signal::Signal::SIGINT);
        // `None` with the process reaped (pid 0): it ended by a signal, which is fine too.
        if self.proc.wait_exit(READY_TIMEOUT).is_none() && self.proc.pid() != 0 {
            bail!("strace did not exit after SIGINT");
        }
        Ok(self.summary)
    }
}

/// The calls column of `strace -c` output, by syscall (the `total` row left out).
pub fn parse_summary(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if !(5..=6).contains(&cols.len()) || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let (Ok(n), Some(name)) = (cols[3].parse::<u64>(), cols.last()) else {
            continue;
        };
        if *name != "total" {
            *calls.entry(name.to_string()).or_insert(0) += n;
        }
    }
    calls
}

/// The number of threads of `pid`.
pub fn threads(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?
        .count())
}

/// Voluntary and involuntary context switches of every thread of `pid`, summed.
pub fn context_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?
    {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        let (v, n) = parse_switches(&status);
        total.0 += v;
        total.1 += n;
    }
    Ok(total)
}

fn parse_switches(status: &str) -> (u64, u64) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.000400           2       200           epoll_wait
 30.00    0.000300           1       300        10 recvfrom
 30.00    0.000300           1       200           sendto
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           1       700        10 total
";
        let calls = parse_summary(text);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls["recvfrom"], 300);
        assert_eq!(calls.values().sum::<u64>(), 700);
    }

    #[test]
    fn switches_from_status() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(status), (12, 3));
        let me = context_switches(std::process::id()).unwrap();
        assert!(me.0 + me.1 > 0);
        assert!(threads(std::process::id()).unwrap() >= 1);
    }
}
