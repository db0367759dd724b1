//! Per-instance cgroups (cgroup v2): where `[instances] cgroup_root` (default: the control
//! plane's own cgroup, from `/proc/self/cgroup`, under `/sys/fs/cgroup`) is a writable cgroup v2
//! directory, each instance gets `<root>/mv-<name>/` with `cpu.max` from `max_cpu_percent`
//! (percent of one CPU: 50 → `50000 100000`, 200 → two CPUs) and `memory.max` from
//! `max_memory_mb`; its process (the process group's leader, whose children inherit the cgroup)
//! is written to `cgroup.procs` right after it is spawned, and the directory is removed when
//! the instance is deleted. Where it is not (cgroup v1 only, no delegation, not root) the
//! limits are not enforced by the kernel: a create says so in its warnings and the instance's
//! `cgroup` view says why (`max_memory_mb` is still enforced by the RSS watcher).
//!
//! Only file writes here, no cgroup library: the unit tests run them against a temporary
//! directory standing in for the cgroup root; the real cgroupfs path (the kernel's own rules:
//! controllers enabled in the parent's `cgroup.subtree_control`, the "no internal processes"
//! rule, delegation) was not exercised on this project's cgroup-v1-only test host.
//!
//! Needs: write access to the root cgroup directory and its `cgroup.subtree_control` (root, or a
//! systemd unit with `Delegate=yes`). A root that holds processes itself (e.g. the control
//! plane's own cgroup outside a delegated unit) cannot enable controllers for its children
//! (EBUSY): point `cgroup_root` at an empty delegated cgroup then.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::Limits;

/// The cgroup v2 mount point.
pub const MOUNT: &str = "/sys/fs/cgroup";
/// `cpu.max`'s period, in µs (the kernel's default).
pub const PERIOD_US: u64 = 100_000;

/// Whether per-instance cgroups can be made here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// A writable cgroup v2 directory.
    Writable(PathBuf),
    /// Why not.
    Unavailable(String),
}

/// The cgroup v2 path of this process from `/proc/self/cgroup`'s `0::<path>` line, under
/// `mount`; `None` on a cgroup v1 only host (no such line).
pub fn own_cgroup(proc_self_cgroup: &str, mount: &Path) -> Option<PathBuf> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim();
    Some(mount.join(path.trim_start_matches('/')))
}

/// Whether `root` is a writable cgroup v2 directory (it has `cgroup.controllers`).
pub fn check_root(root: &Path) -> Result<(), String> {
    if !root.join("cgroup.controllers").is_file() {
        return Err(format!(
            "{} is not a cgroup v2 directory (no cgroup.controllers; this host may have cgroup v1 only)",
            root.display()
        ));
    }
    nix::unistd::access(root, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        format!(
            "{} is not writable ({e}; needs root or a delegated cgroup)",
            root.display()
        )
    })
}

/// Finds the root: `configured`, or this process's own cgroup.
pub fn detect(configured: Option<&Path>) -> Cgroups {
    let root = match configured {
        Some(r) => r.to_path_buf(),
        None => match std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| own_cgroup(&s, Path::new(MOUNT)))
        {
            Some(r) => r,
            None => {
                return Cgroups::Unavailable(
                    "no cgroup v2 hierarchy (this host has cgroup v1 only)".into(),
                )
            }
        },
    };
    match check_root(&root) {
        Ok(()) => Cgroups::Writable(root),
        Err(reason) => Cgroups::Unavailable(reason),
    }
}

/// `cpu.max` for `percent` of one CPU.
pub fn cpu_max(percent: Option<u32>) -> String {
    match percent {
        Some(p) => format!("{} {PERIOD_US}", u64::from(p) * PERIOD_US / 100),
        None => format!("max {PERIOD_US}"),
    }
}

/// `memory.max` for `mb` MiB.
pub fn memory_max(mb: Option<u64>) -> String {
    mb.map_or("max".into(), |mb| {
        mb.saturating_mul(1024 * 1024).to_string()
    })
}

/// The directory of instance `name` under `root`.
pub fn dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("mv-{name}"))
}

/// Whether `limits` ask for anything a cgroup enforces.
pub fn wanted(limits: Option<&Limits>) -> bool {
    limits.is_some_and(|l| l.max_cpu_percent.is_some() || l.max_memory_mb.is_some())
}

/// Makes (or updates) the cgroup of instance `name`: enables the `cpu` and `memory`
/// controllers for the root's children, creates the directory and writes its limits. Blocking
/// file I/O. Returns the directory.
pub fn prepare(root: &Path, name: &str, limits: &Limits) -> Result<PathBuf, String> {
    let write = |path: PathBuf, value: &str| {
        std::fs::write(&path, value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
    };
    write(root.join("cgroup.subtree_control"), "+cpu +memory")?;
    let dir = dir(root, name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    write(dir.join("cpu.max"), &cpu_max(limits.max_cpu_percent))?;
    write(dir.join("memory.max"), &memory_max(limits.max_memory_mb))?;
    Ok(dir)
}

/// Moves `pid` (and so the children it starts later) into the cgroup at `dir`.
pub fn add(dir: &Path, pid: u32) -> Result<(), String> {
    let path = dir.join("cgroup.procs");
    std::fs::write(&path, pid.to_string())
        .map_err(|e| format!("writing {pid} to {}: {e}", path.display()))
}

/// Removes the cgroup at `dir` (its processes have exited: the kernel refuses a busy one).
/// Gone already is fine.
pub fn remove(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// How an instance's limits are enforced, as `GET /instances/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupView {
    /// Whether its own cgroup enforces `cpu.max` / `memory.max`.
    pub enforced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<String>,
    /// Why not enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Cgroups {
    /// The view of an instance with `limits` (`None` when they ask for nothing a cgroup does).
    pub fn view(&self, name: &str, limits: Option<&Limits>) -> Option<CgroupView> {
        let l = limits.filter(|l| wanted(Some(l)))?;
        Some(match self {
            Cgroups::Writable(root) => CgroupView {
                enforced: true,
                path: Some(dir(root, name).display().to_string()),
                cpu_max: Some(cpu_max(l.max_cpu_percent)),
                memory_max: Some(memory_max(l.max_memory_mb)),
                reason: None,
            },
            Cgroups::Unavailable(reason) => CgroupView {
                enforced: false,
                path: None,
                cpu_max: None,
                memory_max: None,
                reason: Some(reason.clone()),
            },
        })
    }

    /// The warning of a create whose `max_cpu_percent` no cgroup will enforce.
    pub fn warning(&self, limits: Option<&Limits>) -> Option<String> {
        match (self, limits.and_then(|l| l.max_cpu_percent)) {
            (Cgroups::Unavailable(reason), Some(p)) => Some(format!(
                "max_cpu_percent = {p} is not enforced: {reason} (max_memory_mb, if set, is still enforced by the RSS watcher)"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu: Option<u32>, mem: Option<u64>) -> Limits {
        Limits {
            max_cpu_percent: cpu,
            max_memory_mb: mem,
            ..Limits::default()
        }
    }

    /// A temporary directory standing in for a cgroup v2 root.
    fn fake_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("mv-cgroup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids")
            .expect("controllers");
        root
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            own_cgroup("0::/system.slice/multiverse.service\n", mount),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/multiverse.service"
            ))
        );
        assert_eq!(
            own_cgroup("0::/\n", mount),
            Some(PathBuf::from("/sys/fs/cgroup/"))
        );
        // cgroup v1 only: numbered hierarchies, no 0:: line.
        assert_eq!(own_cgroup("12:cpu,cpuacct:/x\n11:memory:/x\n", mount), None);
    }

    #[test]
    fn limits_become_cpu_max_and_memory_max() {
        assert_eq!(cpu_max(Some(50)), "50000 100000");
        assert_eq!(cpu_max(Some(250)), "250000 100000");
        assert_eq!(cpu_max(None), "max 100000");
        assert_eq!(memory_max(Some(512)), "536870912");
        assert_eq!(memory_max(None), "max");
    }

    #[test]
    fn prepare_add_and_remove_write_the_files() {
        let root = fake_root("files");
        check_root(&root).expect("a v2 stand-in");
        let dir = prepare(&root, "emb-1", &limits(Some(150), Some(2048))).expect("prepare");
        assert_eq!(dir, root.join("mv-emb-1"));
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(root.join("cgroup.subtree_control")), "+cpu +memory");
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(dir.join("memory.max")), (2048u64 << 20).to_string());
        add(&dir, 4242).expect("add");
        assert_eq!(read(dir.join("cgroup.procs")), "4242");
        // Again (a restart): the directory exists, the limits are rewritten.
        prepare(&root, "emb-1", &limits(None, Some(1024))).expect("again");
        assert_eq!(read(dir.join("cpu.max")), "max 100000");
        // The kernel drops a cgroup's interface files with it; a plain directory keeps them,
        // so they are removed here as rmdir(2) on cgroupfs would.
        assert!(
            remove(&dir).is_err(),
            "a directory with files is refused, as a busy cgroup is"
        );
        for f in ["cpu.max", "memory.max", "cgroup.procs"] {
            std::fs::remove_file(dir.join(f)).expect("rm");
        }
        remove(&dir).expect("remove");
        assert!(!dir.exists());
        remove(&dir).expect("gone already is fine");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_root_that_is_not_cgroup_v2_is_unavailable_with_the_reason() {
        let root = std::env::temp_dir().join(format!("mv-cgroup-v1-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("dir");
        let c = detect(Some(&root));
        let Cgroups::Unavailable(reason) = &c else {
            panic!("{c:?}")
        };
        assert!(reason.contains("not a cgroup v2 directory"), "{reason}");
        let view = c.view("x", Some(&limits(Some(50), None))).expect("a view");
        assert!(!view.enforced && view.reason.is_some());
        assert!(c
            .warning(Some(&limits(Some(50), None)))
            .is_some_and(|w| w.contains("max_cpu_percent = 50 is not enforced")));
        assert_eq!(c.warning(Some(&limits(None, Some(100)))), None);
        assert_eq!(c.view("x", Some(&limits(None, None))), None);
        let ok = Cgroups::Writable(PathBuf::from("/sys/fs/cgroup/mv"));
        let v = ok.view("emb", Some(&limits(Some(50), None))).expect("view");
        assert_eq!(
            (
                v.enforced,
                v.path.as_deref(),
                v.cpu_max.as_deref(),
                v.memory_max.as_deref()
            ),
            (
                true,
                Some("/sys/fs/cgroup/mv/mv-emb"),
                Some("50000 100000"),
                Some("max")
            )
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
