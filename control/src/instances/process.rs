//! TEI processes: spawned in their own process group with a parent-death signal, and signalled
//! as a group (the supervisor stops them with SIGTERM, a grace period, then SIGKILL, and always
//! reaps them).
//!
//! Each running process's group id is kept in `<run_dir>/<name>.pid`. If the control plane is
//! killed outright, its children get SIGKILL from the kernel (parent-death signal); anything
//! they started themselves is caught on the next start, which kills the recorded groups before
//! starting what the desired state says should run.

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
