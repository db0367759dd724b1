//! Instructions and allocator calls per request from valgrind's callgrind: the target runs
//! under `valgrind --tool=callgrind` with instrumentation off until the requests start, and
//! `callgrind_control` zeroes the counters before a family's requests and dumps them after, so
//! a dump holds exactly what those requests (and anything else the process did meanwhile)
//! cost. The counts are repeatable: they do not depend on how loaded the machine is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where a run's dumps go, and the command that wraps the target.
#[derive(Debug)]
pub struct Callgrind {
    dir: PathBuf,
}

/// What one dump says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dump {
    /// Instructions executed (all threads).
    pub instructions: u64,
    /// Calls of Rust's allocator entry points that hand out memory (`__rust_alloc`,
    /// `__rust_alloc_zeroed`, `__rust_realloc`).
    pub rust_allocs: u64,
    /// Calls of `__rust_dealloc`.
    pub rust_deallocs: u64,
    /// Calls of libc's `malloc`, `calloc`, `realloc` (C code; Rust's go through the above).
    pub libc_allocs: u64,
    /// Instructions in libc's `memcpy`/`memmove` themselves. Reported apart because callgrind
    /// counts every iteration of a `rep movsb` (how glibc copies blocks of a few KiB and more)
    /// as an instruction, so a large copy weighs far more here than on the CPU.
    pub memcpy_instructions: u64,
}

impl Callgrind {
    /// Dumps into `dir` (kept or removed by the caller).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The wrapper command for a target named `name`: function-level counts only (no
    /// per-line or per-instruction data), which keeps each dump to a few hundred KiB.
    pub fn wrapper(&self, name: &str) -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            "--dump-line=no".into(),
            "--dump-instr=no".into(),
            format!(
                "--callgrind-out-file={}/{name}.callgrind.%p",
                self.dir.display()
            ),
        ]
    }

    /// Switches instrumentation on (startup ran uninstrumented, at near native speed).
    pub fn instrument(&self, pid: u32) -> anyhow::Result<()> {
        control(pid, &["--instr=on"])
    }

    /// Zeroes the counters.
    pub fn zero(&self, pid: u32) -> anyhow::Result<()> {
        control(pid, &["--zero"])
    }

    /// Dumps the counters of target `name` (started with [`Callgrind::wrapper`]) and zeroes
    /// them; reads the dump, renames it `<name>-<label>.callgrind` and returns it and its file.
    pub fn dump(&self, name: &str, pid: u32, label: &str) -> anyhow::Result<(Dump, PathBuf)> {
        let before = self.dumps(name, pid)?;
        control(pid, &["--dump"])?;
        let after = self.dumps(name, pid)?;
        let Some(written) = after.into_iter().find(|f| !before.contains(f)) else {
            bail!("callgrind_control --dump {pid} wrote no new file");
        };
        let file = self.dir.join(format!("{name}-{label}.callgrind"));
        std::fs::rename(&written, &file)
            .with_context(|| format!("cannot rename {}", written.display()))?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        Ok((parse(&text)?, file))
    }

    fn dumps(&self, name: &str, pid: u32) -> anyhow::Result<Vec<PathBuf>> {
        let prefix = format!("{name}.callgrind.{pid}.");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
            {
                files.push(path);
            }
        }
        Ok(files)
    }
}

/// `callgrind_control <args> <pid>` (through vgdb; the target need not be running code).
fn control(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("cannot run callgrind_control (valgrind installed?)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {} {pid} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The allocator entry point a (demangled) function name is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    RustAlloc,
    RustDealloc,
    LibcAlloc,
}

fn entry(name: &str) -> Option<Entry> {
    // Rust's shims are `__rust_alloc` or, since 1.87, `__rustc::__rust_alloc`.
    let last = name.rsplit("::").next().unwrap_or(name);
    match last {
        "__rust_alloc" | "__rust_alloc_zeroed" | "__rust_realloc" => Some(Entry::RustAlloc),
        "__rust_dealloc" => Some(Entry::RustDealloc),
        "malloc" | "calloc" | "realloc" if last == name => Some(Entry::LibcAlloc),
        _ => None,
    }
}

fn is_memcpy(name: &str) -> bool {
    ["__memcpy", "__memmove", "__mempcpy", "memcpy", "memmove"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Reads a callgrind dump: the total of its (first) event, the calls of allocator entry points
/// (`calls=` lines under a `cfn=` naming one; names may be compressed to `(id)`), and the
/// instructions of memcpy itself (cost lines of a `fn=` memcpy that do not follow a `calls=`).
pub fn parse(text: &str) -> anyhow::Result<Dump> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut dump = Dump::default();
    let mut total = None;
    let mut callee: Option<Entry> = None;
    let mut in_memcpy = false;
    let mut after_call = false;
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
            // A cost line: position, then the event's count. After `calls=` it is the call's
            // inclusive cost, otherwise the current function's own.
            if in_memcpy && !after_call {
                let cost = line.split_whitespace().nth(1).unwrap_or("0");
                dump.memcpy_instructions += cost.parse::<u64>().unwrap_or(0);
            }
            after_call = false;
        } else if let Some(rest) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            let first = rest.split_whitespace().next().unwrap_or("0");
            total = Some(first.parse::<u64>().context("bad totals line")?);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            callee = entry(name(rest, &mut names));
        } else if let Some(rest) = line.strip_prefix("fn=") {
            in_memcpy = is_memcpy(name(rest, &mut names));
            callee = None;
        } else if let Some(rest) = line.strip_prefix("calls=") {
            after_call = true;
            let count: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .context("bad calls= line")?;
            match callee {
                Some(Entry::RustAlloc) => dump.rust_allocs += count,
                Some(Entry::RustDealloc) => dump.rust_deallocs += count,
                Some(Entry::LibcAlloc) => dump.libc_allocs += count,
                None => {}
            }
        }
    }
    dump.instructions = total.context("no totals: or summary: line in the dump")?;
    Ok(dump)
}

/// Resolves `(id) name` (defines id) or `(id)` (uses it) or a plain name.
fn name<'a>(spec: &'a str, names: &mut HashMap<&'a str, &'a str>) -> &'a str {
    let spec = spec.trim();
    let Some(rest) = spec.strip_prefix('(') else {
        return spec;
    };
    let Some((id, tail)) = rest.split_once(')') else {
        return spec;
    };
    let tail = tail.trim();
    if tail.is_empty() {
        names.get(id).copied().unwrap_or("")
    } else {
        names.insert(id, tail);
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
version: 1
creator: callgrind-3.19.0
events: Ir
fn=(1) main
0 10
cfn=(2) __rustc::__rust_alloc
calls=3 0
0 60
cfn=(3) __rustc::__rust_dealloc
calls=2 0
0 20
cfn=(2)
calls=4 0
0 80
fn=(4) h2::codec
cfn=(5) malloc
calls=1 0
0 9
cfn=(6) my::malloc
calls=7 0
0 9
fn=(2)
0 5
fn=(7) __memcpy_avx_unaligned_erms
0 300
cfn=(2)
calls=1 0
0 40
0 2
totals: 1234
";

    #[test]
    fn counts_allocator_calls_and_totals() {
        let d = parse(DUMP).unwrap();
        assert_eq!(
            d,
            Dump {
                instructions: 1234,
                rust_allocs: 8,
                rust_deallocs: 2,
                libc_allocs: 1,
                memcpy_instructions: 302,
            }
        );
        assert!(parse("events: Ir\n").is_err());
    }

    #[test]
    fn entry_points() {
        assert_eq!(entry("__rust_realloc"), Some(Entry::RustAlloc));
        assert_eq!(
            entry("__rustc::__rust_alloc_zeroed"),
            Some(Entry::RustAlloc)
        );
        assert_eq!(entry("calloc"), Some(Entry::LibcAlloc));
        assert_eq!(entry("mi_malloc"), None);
        assert_eq!(entry("alloc::raw_vec::finish_grow"), None);
    }
}
