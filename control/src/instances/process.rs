//! TEI processes: spawned in their own process group with a parent-death signal, and signalled
//! as a group (the supervisor stops them with SIGTERM, a grace period, then SIGKILL, and always
//! reaps them).
//!
//! Each running process's group id is kept in `<run_dir>/<name>.pid`. If the control plane is
//! killed outright, its children get SIGKILL from the kernel (parent-death signal); anything
//! they started themselves is caught on the next start, which kills the recorded groups before
//! starting what the desired state says should run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::spec::Launch;

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".into(),
        }
    }
}

/// Starts the process: own process group, SIGKILL when the control plane dies, stdout and
/// stderr piped (for the log), stdin closed.
#[allow(unsafe_code)]
pub fn spawn(launch: &Launch) -> std::io::Result<Child> {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    // Supplementary groups are dropped too when the control plane runs as root (std does it).
    if let Some(gid) = launch.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = launch.uid {
        cmd.uid(uid);
    }
    if let Some(devices) = &launch.cuda_visible_devices {
        // CUDA's default order is "fastest first"; NVML's (and so `gpu_id`'s) is PCI bus order.
        cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        cmd.env("CUDA_VISIBLE_DEVICES", devices);
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe. The parent-death signal is sent when the thread that forked
    // exits; this is called from the runtime's long-lived worker threads.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

/// The processes of each group in `pgids`, from `/proc/<pid>/stat` (field 5, `pgrp`): TEI's
/// own process and whatever it started (a Python backend holding the GPU memory, say). One scan
/// of `/proc`; blocking I/O, for a blocking thread. A group with no process maps to nothing.
pub fn group_members(pgids: &[u32]) -> HashMap<u32, Vec<u32>> {
    let mut members: HashMap<u32, Vec<u32>> = HashMap::new();
    if pgids.is_empty() {
        return members;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return members;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(pgrp) = stat_pgrp(&stat) {
            if pgids.contains(&pgrp) {
                members.entry(pgrp).or_default().push(pid);
            }
        }
    }
    for pids in members.values_mut() {
        pids.sort_unstable();
    }
    members
}

/// The resident memory (VmRSS) of `pids`, summed, in bytes (pages shared between them are
/// counted once per process, as `ps` does); a process that is gone counts 0. Blocking I/O.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kb * 1024)
        })
        .fold(0, u64::saturating_add)
}

/// Field 5 (`pgrp`) of a `/proc/<pid>/stat` line (the command name, field 2, may hold spaces
/// and parentheses: fields are counted after its last `)`).
fn stat_pgrp(stat: &str) -> Option<u32> {
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// `[instances] user` and `group` (names or numeric ids) as ids; a user without a group runs
/// with the user's primary group. Reads the user and group databases: call at startup only.
pub fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), String> {
    use nix::unistd::{Group, User};
    let user = match user {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(uid) => (
                uid,
                User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw()),
            ),
            Err(_) => {
                let found = User::from_name(u)
                    .map_err(|e| format!("cannot look up user `{u}`: {e}"))?
                    .ok_or_else(|| format!("no user named `{u}`"))?;
                (found.uid.as_raw(), Some(found.gid.as_raw()))
            }
        }),
    };
    let gid = match group {
        None => user.and_then(|(_, primary)| primary),
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .map_err(|e| format!("cannot look up group `{g}`: {e}"))?
                .ok_or_else(|| format!("no group named `{g}`"))?
                .gid
                .as_raw(),
        }),
    };
    if (user.is_some() || gid.is_some()) && !nix::unistd::geteuid().is_root() {
        tracing::warn!("[instances] user/group are set but the control plane is not root: starting instances will fail unless it has CAP_SETUID and CAP_SETGID");
    }
    Ok((user.map(|(uid, _)| uid), gid))
}

/// Signals the process group.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Where pid files live.
#[derive(Debug, Clone)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.pid"))
    }

    /// The UDS path TEI uses internally for this instance.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.sock"))
    }

    pub fn record(&self, name: &str, pgid: u32) {
        if let Err(e) = std::fs::write(self.pid_file(name), pgid.to_string()) {
            tracing::warn!(instance = name, error = %e, "cannot write the pid file");
        }
    }

    pub fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.pid_file(name));
    }

    /// Kills the process groups recorded by an earlier run (left behind if it was killed).
    pub fn kill_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return 0;
        };
        let mut killed = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pid") {
                continue;
            }
            if let Some(pgid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|p| *p > 1)
            {
                if killpg(Pid::from_raw(pgid as i32), None).is_ok() {
                    tracing::warn!(pgid, file = %path.display(), "killing a process group left by an earlier run");
                    signal_group(pgid, Signal::SIGKILL);
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn pgrp_is_read_after_the_command_name() {
        assert_eq!(stat_pgrp("42 (a) b) c) S 1 77 77 0 -1"), Some(77));
        assert_eq!(stat_pgrp("garbage"), None);
    }

    #[test]
    fn group_members_lists_a_group_and_its_children() {
        // `sh` in its own group, with a child `sleep` in the same group.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let pgid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let members = loop {
            let m = group_members(&[pgid]);
            if m.get(&pgid).is_some_and(|p| p.len() >= 3) {
                break m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "three processes: {m:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait();
        let pids = &members[&pgid];
        assert!(pids.contains(&pgid), "{pids:?}");
        assert!(
            !pids.contains(&std::process::id()),
            "not this process's group"
        );
        assert!(group_members(&[]).is_empty());
    }

    #[test]
    fn identities_by_name_and_id() {
        assert_eq!(resolve_identity(None, None), Ok((None, None)));
        assert_eq!(resolve_identity(Some("root"), None), Ok((Some(0), Some(0))));
        assert_eq!(
            resolve_identity(Some("0"), Some("0")),
            Ok((Some(0), Some(0)))
        );
        assert_eq!(resolve_identity(None, Some("root")), Ok((None, Some(0))));
        let e = resolve_identity(Some("no-such-user-mv"), None).unwrap_err();
        assert!(e.contains("no user named `no-such-user-mv`"), "{e}");
        assert!(resolve_identity(None, Some("no-such-group-mv")).is_err());
    }

    #[test]
    fn rss_of_this_process() {
        let mine = rss_bytes(&[std::process::id()]);
        assert!(mine > 1024 * 1024, "{mine}");
        assert_eq!(rss_bytes(&[u32::MAX - 1]), 0, "gone counts 0");
    }
}
