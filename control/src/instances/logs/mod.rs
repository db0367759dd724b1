//! Per-instance log files: what a TEI process writes on stdout and stderr, kept on disk,
//! rotated by size, read back as slices and followed live (the API serves them as
//! `GET /instances/{name}/logs`).
//!
//! - [`log_dir`] picks the directory: the configured one if it is writable, else a fallback
//!   under the system temporary directory.
//! - [`sink`]: [`LogSink`] is one instance's log, `<dir>/<instance>.log`. Lines are written as
//!   the process printed them (no prefix); the supervisor adds its own lines with
//!   [`LogSink::note`]. When the next line would take the file past `max_bytes`, it is rotated:
//!   `<instance>.log` → `.log.1` → `.log.2` …, `keep` files in all (the current one included),
//!   the oldest deleted. Every line is also broadcast to followers.
//! - [`capture`] copies a child's stdout or stderr into the sink, line by line, until EOF.
//! - [`history`]: [`LogSink::read`] slices the whole retained history (rotated files oldest
//!   first, then the current one) as one list of lines with Python slice semantics
//!   ([`py_slice`]).
//! - [`follow`]: [`LogSink::follow`] and [`LogSink::tail`] stream a tail of the history and
//!   then every new line, without losing or repeating a line at the boundary.
//!
//! Writing is synchronous file I/O under a `std` mutex: a few microseconds per line, not a hot
//! path. Reading the history happens outside the lock (on a blocking thread for
//! [`LogSink::slice`], [`LogSink::tail`] and [`LogSink::follow`]), so a large history never
//! holds up the writers.

pub mod capture;
pub mod follow;
pub mod history;
pub mod sink;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use capture::capture;
pub use history::py_slice;
pub use sink::LogSink;

/// Prefix of the supervisor's own lines ([`LogSink::note`]).
pub const NOTE_PREFIX: &str = "[multiverse] ";

/// Name of the fallback directory under [`std::env::temp_dir`].
pub const FALLBACK_DIR: &str = "multiverse-logs";

/// Longest line [`capture`] buffers; a longer line is written in pieces of this size.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// New lines a follower may fall behind by before it skips some (and is told so).
pub const FOLLOW_BUFFER: usize = 4096;

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the log of instance {instance}: {source}")]
pub struct LogError {
    pub instance: String,
    pub source: io::Error,
}

/// The configured log directory if it can be created and written, else
/// `<temp_dir>/multiverse-logs` (with a warning naming both). Never fails: if even the fallback
/// is not writable, it is returned anyway (with another warning) and opening a sink will say why.
pub fn log_dir(configured: Option<&Path>) -> PathBuf {
    let fallback = std::env::temp_dir().join(FALLBACK_DIR);
    if let Some(dir) = configured {
        match probe_writable(dir) {
            Ok(()) => return dir.to_path_buf(),
            Err(e) => tracing::warn!(
                configured = %dir.display(),
                fallback = %fallback.display(),
                error = %e,
                "log directory {} is not writable ({e}); instance logs go to {}",
                dir.display(),
                fallback.display(),
            ),
        }
    }
    if let Err(e) = probe_writable(&fallback) {
        tracing::warn!(
            fallback = %fallback.display(),
            error = %e,
            "fallback log directory {} is not writable either ({e})",
            fallback.display(),
        );
    }
    fallback
}

/// Creates `dir` (and parents) and a probe file in it, then removes the probe.
fn probe_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".multiverse-write-probe-{}", std::process::id()));
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
    let removed = fs::remove_file(&probe);
    written?;
    removed
}

/// Which output of the process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// A slice of the history, with the slice resolved against its length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogSlice {
    /// Resolved (non-negative, clamped) start index.
    pub start: usize,
    /// Resolved end index (exclusive); `end == start` when the slice is empty.
    pub end: usize,
    /// Lines in the whole retained history.
    pub total: usize,
    pub lines: Vec<String>,
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::fs;
    use std::ops::Range;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "mv-logs-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub fn lines(range: Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::TempDir;
    use super::*;

    #[test]
    fn log_dir_uses_a_writable_directory_or_falls_back() {
        let dir = TempDir::new("dir");
        let configured = dir.0.join("nested/logs");
        assert_eq!(log_dir(Some(&configured)), configured);
        assert!(configured.is_dir());
        assert_eq!(
            fs::read_dir(&configured).unwrap().count(),
            0,
            "probe removed"
        );
        // Under a regular file: cannot be created (even as root).
        let file = dir.0.join("a-file");
        fs::write(&file, "x").unwrap();
        let fallback = std::env::temp_dir().join(FALLBACK_DIR);
        assert_eq!(log_dir(Some(&file.join("logs"))), fallback);
        assert_eq!(log_dir(None), fallback);
    }
}
