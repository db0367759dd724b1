//! Child processes a benchmark starts (mock backends, the proxy), and the small helpers around
//! them: finding the workspace binaries, free loopback ports, a scratch directory.
//!
//! No orphans: a [`ChildProcess`] is killed (SIGKILL) and reaped when dropped — also while a
//! panic unwinds — and on Linux it gets `PR_SET_PDEATHSIG` so the kernel kills it if the
//! benchmark dies without unwinding (SIGINT, SIGKILL). The kernel ties that signal to the
//! *thread* that spawned the child, so spawn children from the main thread (or another thread
//! that outlives them), not from a tokio worker.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// A child process that is killed and reaped on drop. Its stderr goes to a log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Started in its own process group (see [`ChildProcess::spawn_group`]), which is killed
    /// as a whole.
    group: bool,
}

/// Process groups started by [`ChildProcess::spawn_group`] and not killed yet, for
/// [`kill_process_groups`].
static GROUPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<u32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILLs every process group started by [`ChildProcess::spawn_group`] that is still
/// registered. For a signal handler that is about to `exit`: drops do not run then, and the
/// parent-death signal reaches only the group leader, not the processes it forked.
pub fn kill_process_groups() {
    for pgid in groups().drain(..) {
        kill_group(pgid);
    }
}

fn kill_group(pgid: u32) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Ok(pgid) = i32::try_from(pgid) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

impl ChildProcess {
    /// Starts `bin` with `args` and `env`; stderr goes to `<log_dir>/<name>.log`, stdout is
    /// piped when `pipe_stdout` (for [`ChildProcess::wait_listening`]) and discarded otherwise.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_inner(name, bin, args, env, log_dir, pipe_stdout, false)
    }

    /// Like [`ChildProcess::spawn`], for a program that forks workers of its own (nginx): the
    /// child leads a new process group, and killing it (on drop, by [`ChildProcess::kill`] or
    /// by [`kill_process_groups`]) SIGKILLs the whole group, so no worker outlives it.
    pub fn spawn_group(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_inner(name, bin, args, env, log_dir, false, true)
    }

    fn spawn_inner(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
        pipe_stdout: bool,
        group: bool,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
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
            .stderr(stderr);
        for (key, value) in env {
            cmd.env(key, value);
        }
        #[cfg(unix)]
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
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
            group,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `timeout` for a `LISTENING <addr>` line on stdout (the mocks' readiness
    /// signal). Stdout keeps being drained afterwards so the child never blocks on it.
    pub fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let stdout = self
            .child
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
        let addr = rx.recv_timeout(timeout).map_err(|_| {
            anyhow!(
                "{} did not print LISTENING within {timeout:?}{}",
                self.name,
                self.log_excerpt()
            )
        })?;
        addr.parse()
            .with_context(|| format!("{} printed a bad address {addr:?}", self.name))
    }

    /// The exit status if the process has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        if self.group {
            // The leader is gone; whatever it forked must not outlive it.
            let pgid = child.id();
            groups().retain(|&g| g != pgid);
            kill_group(pgid);
        }
        self.child = None;
        Some(status)
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            Some(status) => bail!("{} exited ({status}){}", self.name, self.log_excerpt()),
            None => Ok(()),
        }
    }

    /// Kills (SIGKILL) and reaps the process now (with its whole group when started by
    /// [`ChildProcess::spawn_group`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                groups().retain(|&g| g != child.id());
                kill_group(child.id());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The log file (the child's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn tail_log(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// "; last log lines:\n..." for error messages (empty if the log is empty).
    pub fn log_excerpt(&self) -> String {
        let tail = self.tail_log(20);
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; last lines of {}:\n{tail}", self.log.display())
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A workspace binary next to the running executable: `target/<profile>/<name>` for a binary
/// in `target/<profile>/` and for a test in `target/<profile>/deps/`. Fails, naming the build
/// command, if it is not there.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace binaries first \
             (`cargo build --workspace --bins`, with --release for a release run)",
            path.display()
        );
    }
    Ok(path)
}

/// A free port on 127.0.0.1 (bound, then released; the kernel does not hand it out again at
/// once, but another process could take it — good enough for loopback benchmarks).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/multiverse-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "multiverse-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_is_killed_on_drop() {
        let dir = ScratchDir::new("process-test").unwrap();
        let mut child = ChildProcess::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo LISTENING 127.0.0.1:1234; exec sleep 60".into(),
            ],
            &[],
            dir.path(),
            true,
        )
        .unwrap();
        let addr = child.wait_listening(Duration::from_secs(10)).unwrap();
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
        let mut leader = ChildProcess::spawn_group(
            "forker",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
            ],
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
        let mut child = ChildProcess::spawn(
            "failer",
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom >&2; exit 3".into()],
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
    }
}
