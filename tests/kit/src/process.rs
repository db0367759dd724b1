//! Child processes of a test or a benchmark ([`Proc`]): spawned with a parent-death signal,
//! killed and reaped when dropped, stderr in a log file, and the readiness line
//! (`LISTENING <addr>` on stdout) of the mocks.
//!
//! No orphans: a [`Proc`] is killed (SIGKILL) and reaped when dropped — also while a panic
//! unwinds — and on Linux it gets `PR_SET_PDEATHSIG` so the kernel kills it if its parent dies
//! without unwinding (SIGINT, SIGKILL). The kernel ties that signal to the *thread* that spawned
//! the child, so spawn from a thread that outlives the child (a test's own thread, a tool's main
//! thread), not from a tokio worker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::wait::READY_TIMEOUT;

/// Log lines [`Proc::tail_log`] returns.
const TAIL_LINES: usize = 30;
/// Log lines [`Proc::log_excerpt`] adds to an error.
const EXCERPT_LINES: usize = 20;

/// A child process that is killed and reaped on drop. Its stderr goes to [`Proc::log`].
///
/// Methods come in two flavours: `try_*` return errors (for tools such as the benchmarks,
/// which report and exit cleanly), the others panic with the child's log (for tests).
#[derive(Debug)]
pub struct Proc {
    /// The name given at spawn (log file `<dir>/<name>.log`).
    pub name: String,
    /// The child's stderr.
    pub log: PathBuf,
    /// `None` once reaped. Behind a lock so a shared reference can notice an exit.
    child: Mutex<Option<Child>>,
    /// Started in its own process group (see [`Proc::try_spawn_group`]), killed as a whole.
    group: bool,
}

/// Process groups started by [`Proc::try_spawn_group`] and not killed yet.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn groups() -> MutexGuard<'static, Vec<u32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILLs every process group started by [`Proc::try_spawn_group`] that is still running. For
/// a signal handler about to `exit`: drops do not run then, and the parent-death signal reaches
/// only the group leader, not the processes it forked.
pub fn kill_process_groups() {
    for pgid in groups().drain(..) {
        kill_group(pgid);
    }
}

fn kill_group(pgid: u32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// The environment tests give their children: `RUST_LOG` from `MULTIVERSE_TEST_LOG` (default
/// `info`).
pub fn test_env() -> Vec<(String, String)> {
    let level = std::env::var("MULTIVERSE_TEST_LOG").unwrap_or_else(|_| "info".into());
    vec![("RUST_LOG".into(), level)]
}

impl Proc {
    /// Starts `bin` with `args` and `env`; stderr goes to `<dir>/<name>.log`, stdout is piped
    /// when `pipe_stdout` (for [`Proc::try_wait_listening`]) and discarded otherwise.
    pub fn try_spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Proc> {
        Self::start(name, bin, args, env, dir, pipe_stdout, false)
    }

    /// Like [`Proc::try_spawn`], for a program that forks workers of its own (nginx): the child
    /// leads a new process group, and killing it (on drop, by [`Proc::kill`] or by
    /// [`kill_process_groups`]) SIGKILLs the whole group, so no worker outlives it.
    pub fn try_spawn_group(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> anyhow::Result<Proc> {
        Self::start(name, bin, args, env, dir, false, true)
    }

    /// [`Proc::try_spawn`] with the tests' environment ([`test_env`]); panics if it cannot.
    pub fn spawn(name: &str, bin: &Path, args: &[String], dir: &Path, pipe_stdout: bool) -> Proc {
        Self::try_spawn(name, bin, args, &test_env(), dir, pipe_stdout)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn start(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        pipe_stdout: bool,
        group: bool,
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(stderr)
            .envs(env.iter().map(|(k, v)| (k, v)));
        if group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and nothing else runs between fork and exec.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", bin.display()))?;
        if group {
            groups().push(child.id());
        }
        Ok(Proc {
            name: name.to_string(),
            log,
            child: Mutex::new(Some(child)),
            group,
        })
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child().as_ref().map_or(0, Child::id)
    }

    /// Waits up to [`READY_TIMEOUT`] for a `LISTENING <addr>` line on stdout (the mocks'
    /// readiness signal). Stdout keeps being drained afterwards so the child never blocks on it.
    pub fn try_wait_listening(&mut self) -> anyhow::Result<SocketAddr> {
        let stdout = self
            .child()
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("{}: stdout was not piped", self.name))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(addr) = line.trim().strip_prefix("LISTENING ") {
                    let _ = tx.send(addr.to_string());
                    break;
                }
                line.clear();
            }
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let addr = rx.recv_timeout(READY_TIMEOUT).map_err(|_| {
            anyhow!(
                "{} did not print LISTENING within {READY_TIMEOUT:?}{}",
                self.name,
                self.log_excerpt()
            )
        })?;
        addr.parse()
            .with_context(|| format!("{} printed a bad address {addr:?}", self.name))
    }

    /// [`Proc::try_wait_listening`]; panics if it fails.
    pub fn wait_listening(&mut self) -> SocketAddr {
        self.try_wait_listening()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The exit status if the process has exited (it is then reaped; later calls say `None`).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut guard = self.child();
        let child = guard.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        if self.group {
            // The leader is gone; whatever it forked must not outlive it.
            let pgid = child.id();
            groups().retain(|&g| g != pgid);
            kill_group(pgid);
        }
        *guard = None;
        Some(status)
    }

    /// Fails, with the end of the log, if the process has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        match self.exited() {
            Some(status) => bail!("{} exited ({status}){}", self.name, self.log_excerpt()),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit code (`None`
    /// if it is still running, was killed by a signal, or was already reaped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `sig` (e.g. SIGTERM, SIGHUP) without reaping.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let Ok(pid) = i32::try_from(self.pid()) else {
            return;
        };
        if pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Kills (SIGKILL) and reaps the process now (with its whole group when started by
    /// [`Proc::try_spawn_group`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child().take() {
            if self.group {
                groups().retain(|&g| g != child.id());
                kill_group(child.id());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the log, for failure messages.
    pub fn tail_log(&self) -> String {
        tail(&self.log, TAIL_LINES)
    }

    /// "; last lines of <log>:\n..." for error messages (empty if the log is empty).
    pub fn log_excerpt(&self) -> String {
        let tail = tail(&self.log, EXCERPT_LINES);
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; last lines of {}:\n{tail}", self.log.display())
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirs::ScratchDir;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[test]
    fn child_is_killed_on_drop() {
        let dir = ScratchDir::new("process-test").unwrap();
        let mut child = Proc::try_spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &sh("echo LISTENING 127.0.0.1:1234; exec sleep 60"),
            &[],
            dir.path(),
            true,
        )
        .unwrap();
        let addr = child.try_wait_listening().unwrap();
        assert_eq!(addr, "127.0.0.1:1234".parse().unwrap());
        let pid = child.pid();
        assert!(child.ensure_running().is_ok());
        drop(child);
        // Reaped: the pid no longer names our child.
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("sleep"));
        assert!(!alive, "child {pid} survived its guard");
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn group_is_killed_with_its_forks() {
        let dir = ScratchDir::new("process-test").unwrap();
        let pidfile = dir.path().join("fork.pid");
        let mut leader = Proc::try_spawn_group(
            "forker",
            Path::new("/bin/sh"),
            &sh(&format!("sleep 60 & echo $! > {}; wait", pidfile.display())),
            &[],
            dir.path(),
        )
        .unwrap();
        let mut fork = None;
        for _ in 0..500 {
            fork = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if fork.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let fork = fork.expect("the forked sleep's pid");
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        };
        assert!(alive(fork));
        leader.kill();
        let mut gone = false;
        for _ in 0..500 {
            if !alive(fork) {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "the leader's fork {fork} survived the group kill");
    }

    #[test]
    fn exit_is_noticed_with_log() {
        let dir = ScratchDir::new("process-test").unwrap();
        let mut child = Proc::try_spawn(
            "failer",
            Path::new("/bin/sh"),
            &sh("echo boom >&2; exit 3"),
            &[],
            dir.path(),
            false,
        )
        .unwrap();
        let mut result = Ok(());
        for _ in 0..200 {
            result = child.ensure_running();
            if result.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = result.expect_err("the child exited").to_string();
        assert!(
            err.contains("failer exited") && err.contains("boom"),
            "{err}"
        );
        assert_eq!(child.wait_exit(Duration::from_millis(10)), None, "reaped");
    }

    #[test]
    fn exit_code_and_env_reach_the_caller() {
        let dir = ScratchDir::new("process-test").unwrap();
        let mut child = Proc::try_spawn(
            "env",
            Path::new("/bin/sh"),
            &sh("echo \"level=$RUST_LOG\" >&2; exit 7"),
            &[("RUST_LOG".into(), "debug".into())],
            dir.path(),
            false,
        )
        .unwrap();
        assert_eq!(child.wait_exit(Duration::from_secs(10)), Some(7));
        assert_eq!(child.tail_log(), "level=debug");
    }
}
