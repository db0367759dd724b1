//! Writing one instance's log: [`LogSink`] appends lines, rotates by size and broadcasts every
//! line to followers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::{Stream, FOLLOW_BUFFER, NOTE_PREFIX};

/// The part of a [`LogSink`] behind its mutex.
pub(super) struct Inner {
    /// The current file, opened for appending; `None` after a failed (re)open, retried on the
    /// next line.
    pub(super) file: Option<File>,
    /// Bytes in the current file.
    pub(super) len: u64,
    /// Rotations so far: a reader that saw the same generation before and after reading the
    /// files read a consistent history.
    pub(super) generation: u64,
    /// New lines for followers; `None` once closed.
    pub(super) tx: Option<broadcast::Sender<String>>,
    /// Lines written per [`Stream`].
    pub(super) lines: [u64; 2],
    /// A write failure was logged and nothing has succeeded since (log it once, not per line).
    pub(super) write_failing: bool,
    /// Same for rotation.
    pub(super) rotate_failing: bool,
    /// The files were removed ([`LogSink::remove_files`]): nothing is written any more.
    pub(super) removed: bool,
}

/// One instance's log file (and its rotated predecessors), plus a broadcast of new lines.
pub struct LogSink {
    pub(super) instance: String,
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) keep: usize,
    pub(super) inner: Mutex<Inner>,
}

impl LogSink {
    /// Opens (creating if needed) `<dir>/<instance>.log` for appending; existing lines are kept
    /// and are part of the history. `max_bytes` is the size a file may reach before rotation
    /// (0: never rotate); `keep` is the number of files kept, the current one included (at
    /// least 1; with 1 the file is simply emptied when full). Rotated files beyond `keep` left by
    /// an earlier configuration are deleted.
    pub fn open(
        dir: &Path,
        instance: &str,
        max_bytes: u64,
        keep: usize,
    ) -> io::Result<Arc<LogSink>> {
        if instance.is_empty()
            || instance == "."
            || instance == ".."
            || instance.contains(['/', '\\', '\0'])
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid instance name for a log file: {instance:?}"),
            ));
        }
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{instance}.log"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            // A line cut short (the control plane died mid-write) must not glue onto the next.
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                len += 1;
            }
        }
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        let sink = LogSink {
            instance: instance.to_string(),
            dir: dir.to_path_buf(),
            path,
            max_bytes,
            keep: keep.max(1),
            inner: Mutex::new(Inner {
                file: Some(file),
                len,
                generation: 0,
                tx: Some(tx),
                lines: [0, 0],
                write_failing: false,
                rotate_failing: false,
                removed: false,
            }),
        };
        sink.remove_stale_rotations();
        Ok(Arc::new(sink))
    }

    /// The instance this log belongs to.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The current file, `<dir>/<instance>.log`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All files of the retained history, oldest first (some may not exist yet).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..self.keep).rev().map(|i| self.rotated(i)).collect();
        files.push(self.path.clone());
        files
    }

    fn rotated(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log.{i}", self.instance))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line as the process printed it. A trailing newline is optional (one is
    /// added); a string with several lines is written as several lines. Never fails: a write
    /// error is logged (once until writing works again) and the line still reaches followers.
    pub fn write_line(&self, stream: Stream, line: &str) {
        let mut inner = self.lock();
        let body = line.strip_suffix('\n').unwrap_or(line);
        for part in body.split('\n') {
            inner.lines[stream.index()] += 1;
            self.append(&mut inner, part);
        }
    }

    /// Appends a line of the supervisor's own (e.g. `started pid 123`), prefixed with
    /// [`NOTE_PREFIX`] unless it already is.
    pub fn note(&self, line: &str) {
        let mut inner = self.lock();
        let body = line.strip_suffix('\n').unwrap_or(line);
        for part in body.split('\n') {
            if part.starts_with(NOTE_PREFIX) {
                self.append(&mut inner, part);
            } else {
                self.append(&mut inner, &format!("{NOTE_PREFIX}{part}"));
            }
        }
    }

    /// Lines written so far through [`write_line`](Self::write_line) from `stream` (by this
    /// sink, not counting lines already in the file when it was opened).
    pub fn lines_from(&self, stream: Stream) -> u64 {
        self.lock().lines[stream.index()]
    }

    /// Ends every follower (after the lines already sent) and stops broadcasting; lines written
    /// afterwards still go to the file. Called when the instance is deleted.
    pub fn close(&self) {
        self.lock().tx = None;
    }

    /// Closes the sink (as [`close`](Self::close)) and deletes every file of its history
    /// (rotated ones beyond `keep` too); lines written afterwards are dropped, so no file is
    /// created again. Returns how many files were removed. Called when an instance is deleted
    /// without `keep_logs`; synchronous file I/O, so async callers run it on a blocking thread.
    pub fn remove_files(&self) -> io::Result<usize> {
        let mut inner = self.lock();
        inner.tx = None;
        inner.file = None;
        inner.removed = true;
        drop(inner);
        let mut removed = 0;
        let prefix = format!("{}.log.", self.instance);
        let mut paths = vec![self.path.clone()];
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name();
            let rotated = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if rotated {
                paths.push(entry.path());
            }
        }
        for path in paths {
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().tx.is_none()
    }

    /// New lines from now on (`None` once closed).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<String>> {
        self.lock().tx.as_ref().map(|tx| tx.subscribe())
    }

    /// One line (without newline) into the file, rotating first if it would overflow.
    fn append(&self, inner: &mut Inner, line: &str) {
        if inner.removed {
            return;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if self.max_bytes > 0 && inner.len > 0 && inner.len + buf.len() as u64 > self.max_bytes {
            self.rotate(inner);
        }
        if inner.file.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|f| Ok((f.metadata()?.len(), f)))
            {
                Ok((len, f)) => {
                    inner.len = len;
                    inner.file = Some(f);
                }
                Err(e) => self.write_failed(inner, &e),
            }
        }
        if let Some(file) = inner.file.as_mut() {
            match file.write_all(&buf) {
                Ok(()) => {
                    inner.len += buf.len() as u64;
                    inner.write_failing = false;
                }
                Err(e) => {
                    // The length is unknown after a partial write: reopen (and stat) next time.
                    inner.file = None;
                    self.write_failed(inner, &e);
                }
            }
        }
        if let Some(tx) = &inner.tx {
            let _ = tx.send(line.to_string());
        }
    }

    fn write_failed(&self, inner: &mut Inner, e: &io::Error) {
        if !std::mem::replace(&mut inner.write_failing, true) {
            tracing::warn!(
                instance = %self.instance,
                path = %self.path.display(),
                error = %e,
                "cannot write the instance log"
            );
        }
    }

    /// `.log.{keep-1}` deleted, `.log.i` → `.log.{i+1}`, `.log` → `.log.1`, a new `.log`.
    fn rotate(&self, inner: &mut Inner) {
        inner.file = None;
        let result = if self.keep <= 1 {
            File::create(&self.path).map(drop)
        } else {
            (|| {
                ignore_not_found(fs::remove_file(self.rotated(self.keep - 1)))?;
                for i in (1..self.keep - 1).rev() {
                    ignore_not_found(fs::rename(self.rotated(i), self.rotated(i + 1)))?;
                }
                ignore_not_found(fs::rename(&self.path, self.rotated(1)))
            })()
        };
        inner.generation += 1;
        inner.len = 0;
        match result {
            Ok(()) => inner.rotate_failing = false,
            Err(e) => {
                if !std::mem::replace(&mut inner.rotate_failing, true) {
                    tracing::warn!(
                        instance = %self.instance,
                        path = %self.path.display(),
                        error = %e,
                        "cannot rotate the instance log"
                    );
                }
            }
        }
        // The next append reopens `<instance>.log` (new, or the old one if renaming failed).
    }

    /// Deletes `<instance>.log.N` for N ≥ keep (left by a larger `keep` earlier).
    fn remove_stale_rotations(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}.log.", self.instance);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if n >= self.keep {
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an old rotated log");
                }
            }
        }
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{lines, TempDir};
    use super::*;

    #[test]
    fn remove_files_deletes_the_history_and_writes_no_more() {
        let dir = TempDir::new("remove");
        let sink = LogSink::open(&dir.0, "tei-a", 20, 3).unwrap();
        let other = LogSink::open(&dir.0, "tei-ab", 0, 3).unwrap();
        other.write_line(Stream::Stdout, "kept");
        for i in 0..6 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        fs::write(dir.0.join("tei-a.log.7"), "left by a larger keep\n").unwrap();
        assert_eq!(sink.remove_files().unwrap(), 4, "current, .1, .2 and .7");
        assert!(sink.is_closed());
        sink.write_line(Stream::Stdout, "after");
        sink.note("after");
        let mut left: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["tei-ab.log"],
            "only the other instance's log is left"
        );
        assert_eq!(sink.remove_files().unwrap(), 0, "nothing left to remove");
    }

    #[test]
    fn newlines_notes_and_counts() {
        let dir = TempDir::new("notes");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        sink.write_line(Stream::Stdout, "with newline\n");
        sink.write_line(Stream::Stderr, "two\nlines");
        sink.write_line(Stream::Stdout, "");
        sink.note("started pid 123");
        sink.note("[multiverse] already prefixed");
        assert_eq!(
            sink.read(None, None).unwrap(),
            vec![
                "with newline",
                "two",
                "lines",
                "",
                "[multiverse] started pid 123",
                "[multiverse] already prefixed",
            ]
        );
        assert_eq!(sink.lines_from(Stream::Stdout), 2);
        assert_eq!(sink.lines_from(Stream::Stderr), 2);
    }

    #[test]
    fn reopening_keeps_history_and_ends_a_cut_line() {
        let dir = TempDir::new("reopen");
        fs::write(dir.0.join("tei-a.log"), "old 1\nold 2 cut short").unwrap();
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        sink.write_line(Stream::Stdout, "new");
        assert_eq!(
            sink.read(None, None).unwrap(),
            vec!["old 1", "old 2 cut short", "new"]
        );
    }

    #[test]
    fn rejects_path_like_instance_names() {
        let dir = TempDir::new("names");
        for bad in ["", ".", "..", "a/b", "../x", "a\\b"] {
            let e = LogSink::open(&dir.0, bad, 0, 3).err().expect(bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn rotates_and_reads_across_files_in_order() {
        let dir = TempDir::new("rotate");
        let max = 100;
        let sink = LogSink::open(&dir.0, "tei-a", max, 3).unwrap();
        for i in 0..200 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let log = |s: &str| dir.0.join(format!("tei-a.log{s}"));
        assert!(log("").exists() && log(".1").exists() && log(".2").exists());
        assert!(!log(".3").exists(), "at most keep=3 files");
        let files = fs::read_dir(&dir.0).unwrap().count();
        assert_eq!(files, 3);
        for s in ["", ".1", ".2"] {
            assert!(fs::metadata(log(s)).unwrap().len() <= max, "{s}");
        }
        let all = sink.read(None, None).unwrap();
        assert!(all.len() > 10 && all.len() < 200, "{}", all.len());
        assert_eq!(all, lines(200 - all.len()..200), "contiguous, oldest first");
        assert_eq!(sink.read(Some(-2), None).unwrap(), lines(198..200));
        assert_eq!(sink.files().len(), 3);
    }

    #[test]
    fn keep_one_empties_the_file_and_stale_rotations_go() {
        let dir = TempDir::new("keep1");
        fs::write(dir.0.join("tei-a.log.1"), "stale\n").unwrap();
        fs::write(dir.0.join("tei-a.log.7"), "stale\n").unwrap();
        fs::write(dir.0.join("tei-ab.log.1"), "other instance\n").unwrap();
        let sink = LogSink::open(&dir.0, "tei-a", 30, 1).unwrap();
        assert!(!dir.0.join("tei-a.log.1").exists());
        assert!(!dir.0.join("tei-a.log.7").exists());
        assert!(dir.0.join("tei-ab.log.1").exists());
        for i in 0..10 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let all = sink.read(None, None).unwrap();
        assert_eq!(all, lines(10 - all.len()..10));
        assert!(fs::metadata(sink.path()).unwrap().len() <= 30);
    }
}
