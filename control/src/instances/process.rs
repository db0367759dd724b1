//! TEI processes: spawned in their own process group with a parent-death signal, stopped with
//! SIGTERM to the group, a grace period, then SIGKILL, and always reaped.
//!
//! Each running process's group id is kept in `<run_dir>/<name>.pid`. If the control plane is
//! killed outright, its children get SIGKILL from the kernel (parent-death signal); anything
//! they started themselves is caught on the next start, which kills the recorded groups before
//! starting what the desired state says should run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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
    if let Some(devices) = &launch.cuda_visible_devices {
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

/// Signals the process group.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL; always reaps.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<ExitInfo> {
    let Some(pid) = child.id() else {
        // Already reaped.
        return None;
    };
    signal_group(pid, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            tracing::warn!(pid, ?grace, "did not stop after SIGTERM: SIGKILL");
            signal_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Whatever the process left in its group goes too.
    signal_group(pid, Signal::SIGKILL);
    status.map(ExitInfo::from_status)
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
    use super::*;

    #[tokio::test]
    async fn stop_escalates_to_sigkill_and_reaps() {
        let launch = Launch {
            program: "sh".into(),
            // Ignores SIGTERM: only SIGKILL ends it.
            args: vec![
                "-c".into(),
                "trap '' TERM; echo ready; while :; do sleep 0.1; done".into(),
            ],
            cuda_visible_devices: None,
        };
        let mut child = spawn(&launch).expect("spawn sh");
        // Only once the trap is set does SIGTERM go unanswered.
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .expect("read");
        assert_eq!(line.trim(), "ready");
        let started = std::time::Instant::now();
        let exit = stop(&mut child, Duration::from_millis(300)).await;
        assert_eq!(exit.and_then(|e| e.signal), Some(9));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn sigterm_is_enough_for_a_polite_process() {
        let launch = Launch {
            program: "sleep".into(),
            args: vec!["30".into()],
            cuda_visible_devices: Some("0".into()),
        };
        let mut child = spawn(&launch).expect("spawn sleep");
        let exit = stop(&mut child, Duration::from_secs(5)).await;
        assert_eq!(exit.and_then(|e| e.signal), Some(15));
    }
}
