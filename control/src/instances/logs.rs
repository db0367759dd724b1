//! Per-instance log files: what a TEI process writes on stdout and stderr, kept on disk,
//! rotated by size, and served by `GET /instances/{name}/logs`.
//!
//! - [`log_dir`] picks the directory: the configured one if it is writable, else a fallback
//!   under the system temporary directory.
//! - [`LogSink`] is one instance's log, `<dir>/<instance>.log`. Lines are written as the
//!   process printed them (no prefix); the supervisor adds its own lines with
//!   [`LogSink::note`]. When the next line would take the file past `max_bytes`, it is rotated:
//!   `<instance>.log` → `.log.1` → `.log.2` …, `keep` files in all (the current one included),
//!   the oldest deleted. Every line is also broadcast to followers.
//! - [`capture`] copies a child's stdout or stderr into the sink, line by line, until EOF.
//! - [`LogSink::read`] slices the whole retained history (rotated files oldest first, then the
//!   current one) as one list of lines with Python slice semantics ([`py_slice`]);
//!   [`LogSink::follow`] streams a tail of it and then every new line, without losing or
//!   repeating a line at the boundary.
//! - [`respond`] answers the HTTP request: JSON for a slice, SSE for `?follow=true`.
//!
//! Writing is synchronous file I/O under a `std` mutex: a few microseconds per line, not a hot
//! path. Reading the history happens outside the lock (on a blocking thread when called from
//! [`respond`] or [`LogSink::follow`]), so a large history never holds up the writers.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::api::{ApiError, ErrorCode};

/// Prefix of the supervisor's own lines ([`LogSink::note`]).
pub const NOTE_PREFIX: &str = "[multiverse] ";

/// Name of the fallback directory under [`std::env::temp_dir`].
pub const FALLBACK_DIR: &str = "multiverse-logs";

/// Longest line [`capture`] buffers; a longer line is written in pieces of this size.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// New lines a follower may fall behind by before it skips some (and is told so).
pub const FOLLOW_BUFFER: usize = 4096;

/// Interval of SSE keep-alive comments while no line arrives.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

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

/// The part of a [`LogSink`] behind its mutex.
struct Inner {
    /// The current file, opened for appending; `None` after a failed (re)open, retried on the
    /// next line.
    file: Option<File>,
    /// Bytes in the current file.
    len: u64,
    /// Rotations so far: a reader that saw the same generation before and after reading the
    /// files read a consistent history.
    generation: u64,
    /// New lines for followers; `None` once closed.
    tx: Option<broadcast::Sender<String>>,
    /// Lines written per [`Stream`].
    lines: [u64; 2],
    /// A write failure was logged and nothing has succeeded since (log it once, not per line).
    write_failing: bool,
    /// Same for rotation.
    rotate_failing: bool,
}

/// One instance's log file (and its rotated predecessors), plus a broadcast of new lines.
pub struct LogSink {
    instance: String,
    dir: PathBuf,
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    inner: Mutex<Inner>,
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

/// What [`LogSink::follow`] takes under the lock: the subscription and where the file ended.
struct FollowStart {
    rx: Option<broadcast::Receiver<String>>,
    generation: u64,
    len: u64,
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
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

    /// Reads the history files, the current one cut at `current_len` bytes.
    fn read_files(&self, current_len: u64) -> io::Result<History> {
        let mut bufs = Vec::with_capacity(self.keep);
        let files = self.files();
        let last = files.len() - 1;
        for (i, path) in files.iter().enumerate() {
            match fs::read(path) {
                Ok(mut buf) => {
                    if i == last {
                        buf.truncate(usize::try_from(current_len).unwrap_or(usize::MAX));
                    }
                    bufs.push(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading {}: {e}", path.display()),
                    ))
                }
            }
        }
        Ok(History::new(bufs))
    }

    /// The history as it was when `(generation, len)` was taken. Read without the lock; if a
    /// rotation ran meanwhile, read again under the lock and drop the lines written since the
    /// subscription `rx` was taken (they are in `rx`), so nothing is lost or repeated.
    fn history(
        &self,
        generation: u64,
        len: u64,
        rx: Option<&broadcast::Receiver<String>>,
    ) -> io::Result<History> {
        let history = self.read_files(len)?;
        let inner = self.lock();
        if inner.generation == generation {
            return Ok(history);
        }
        drop(history);
        let mut history = self.read_files(inner.len)?;
        if let Some(rx) = rx {
            history.drop_last(rx.len());
        }
        Ok(history)
    }

    /// The whole retained history sliced like Python's `lines[start:end]`, with the slice
    /// resolved and the total.
    pub fn read_slice(&self, start: Option<i64>, end: Option<i64>) -> io::Result<LogSlice> {
        let (generation, len) = {
            let inner = self.lock();
            (inner.generation, inner.len)
        };
        let history = self.history(generation, len, None)?;
        let range = py_slice(history.len(), start, end);
        Ok(LogSlice {
            start: range.start,
            end: range.end,
            total: history.len(),
            lines: history.strings(range),
        })
    }

    /// The whole retained history (rotated files oldest first, then the current file) as one
    /// list, sliced like Python's `lines[start:end]`.
    pub fn read(&self, start: Option<i64>, end: Option<i64>) -> io::Result<Vec<String>> {
        self.read_slice(start, end).map(|s| s.lines)
    }

    fn follow_start(&self) -> FollowStart {
        let inner = self.lock();
        FollowStart {
            rx: inner.tx.as_ref().map(|tx| tx.subscribe()),
            generation: inner.generation,
            len: inner.len,
        }
    }

    /// Reads `history[start:]` as of `from` on a blocking thread; gives back the subscription.
    async fn follow_history(
        self: Arc<Self>,
        start: Option<i64>,
        from: FollowStart,
    ) -> (io::Result<Vec<String>>, Option<broadcast::Receiver<String>>) {
        let joined = tokio::task::spawn_blocking(move || {
            let lines = self
                .history(from.generation, from.len, from.rx.as_ref())
                .map(|h| {
                    let range = py_slice(h.len(), start, None);
                    h.strings(range)
                });
            (lines, from.rx)
        })
        .await;
        joined.unwrap_or_else(|e| (Err(io::Error::other(e)), None))
    }

    /// `history[start:]` (e.g. `start = Some(-10)`: the last ten lines), then every new line as
    /// it is written; ends after [`close`](Self::close). The subscription is taken before the
    /// history is read and both are cut at the same point, so no line is lost or repeated at
    /// the boundary. A follower more than [`FOLLOW_BUFFER`] lines behind skips lines and gets
    /// a `[multiverse] … lines skipped` line instead. If the history cannot be read, the stream
    /// starts with a `[multiverse]` line saying why (use [`respond`] for an HTTP error).
    pub fn follow(
        self: &Arc<Self>,
        start: Option<i64>,
    ) -> impl futures::Stream<Item = String> + Send + 'static {
        let sink = Arc::clone(self);
        // Subscribed now: lines written from here on are followed even if the stream is
        // polled later; the history is read (cut at this point) on the first poll.
        let from = self.follow_start();
        futures::stream::once(async move {
            let (history, rx) = sink.follow_history(start, from).await;
            let history = history
                .unwrap_or_else(|e| vec![format!("{NOTE_PREFIX}cannot read the log history: {e}")]);
            futures::stream::iter(history).chain(live(rx))
        })
        .flatten()
    }
}

/// The lines of `rx` (none if `None`), lag reported as a line.
fn live(
    rx: Option<broadcast::Receiver<String>>,
) -> impl futures::Stream<Item = String> + Send + 'static {
    futures::stream::iter(rx.map(BroadcastStream::new))
        .flatten()
        .map(|item| match item {
            Ok(line) => line,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                format!("{NOTE_PREFIX}{n} lines skipped: this reader fell behind")
            }
        })
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The file contents of a history and where each line is in them.
struct History {
    bufs: Vec<Vec<u8>>,
    /// (buffer, byte range without the newline).
    lines: Vec<(usize, Range<usize>)>,
}

impl History {
    fn new(bufs: Vec<Vec<u8>>) -> Self {
        let mut lines = Vec::new();
        for (b, buf) in bufs.iter().enumerate() {
            let mut from = 0;
            for (i, &byte) in buf.iter().enumerate() {
                if byte == b'\n' {
                    lines.push((b, from..i));
                    from = i + 1;
                }
            }
            if from < buf.len() {
                // A last line without newline (a file cut short): still a line.
                lines.push((b, from..buf.len()));
            }
        }
        History { bufs, lines }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn drop_last(&mut self, n: usize) {
        self.lines.truncate(self.lines.len().saturating_sub(n));
    }

    fn strings(&self, range: Range<usize>) -> Vec<String> {
        self.lines[range]
            .iter()
            .map(|(b, r)| String::from_utf8_lossy(&self.bufs[*b][r.clone()]).into_owned())
            .collect()
    }
}

/// Python's `seq[start:end]` (step 1) on a sequence of `len` items, as an index range: negative
/// indices count from the end, out-of-range indices clamp, defaults are `0` and `len`, and
/// `start >= end` is empty (returned as `start..start`).
pub fn py_slice(len: usize, start: Option<i64>, end: Option<i64>) -> Range<usize> {
    let resolve = |i: i64| -> usize {
        if i < 0 {
            let back = usize::try_from(i.unsigned_abs()).unwrap_or(usize::MAX);
            len.saturating_sub(back)
        } else {
            usize::try_from(i).unwrap_or(usize::MAX).min(len)
        }
    };
    let start = start.map_or(0, resolve);
    let end = end.map_or(len, resolve);
    if start >= end {
        start..start
    } else {
        start..end
    }
}

/// Copies `reader` into `sink` line by line until EOF (or a read error, logged), as a task.
/// Invalid UTF-8 is replaced (lossy), a trailing `\r` is dropped, a last line without newline
/// is still written, and a line longer than [`MAX_LINE_BYTES`] is written in pieces (so a child
/// can never make the control plane buffer without bound).
pub fn capture<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    stream: Stream,
    sink: Arc<LogSink>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line: Vec<u8> = Vec::new();
        loop {
            let (consumed, complete) = match reader.fill_buf().await {
                Ok([]) => {
                    if !line.is_empty() {
                        emit(&sink, stream, &line);
                    }
                    break;
                }
                Ok(available) => {
                    let room = MAX_LINE_BYTES - line.len();
                    let window = &available[..available.len().min(room)];
                    match window.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            line.extend_from_slice(&window[..i]);
                            (i + 1, true)
                        }
                        None => {
                            line.extend_from_slice(window);
                            (window.len(), line.len() >= MAX_LINE_BYTES)
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(instance = %sink.instance, ?stream, error = %e, "reading instance output failed");
                    if !line.is_empty() {
                        emit(&sink, stream, &line);
                    }
                    break;
                }
            };
            reader.consume(consumed);
            if complete {
                emit(&sink, stream, &line);
                line.clear();
            }
        }
    })
}

fn emit(sink: &LogSink, stream: Stream, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    sink.write_line(stream, &String::from_utf8_lossy(line));
}

/// `GET /instances/{name}/logs` query: `start`, `end` (Python slice indices; empty means
/// absent) and `follow` (`true`/`false`/`1`/`0`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogQuery {
    #[serde(default, deserialize_with = "opt_i64")]
    pub start: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end: Option<i64>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub follow: Option<bool>,
}

fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    opt_str(d)?
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| serde::de::Error::custom(format!("not an integer: {s:?}")))
        })
        .transpose()
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    opt_str(d)?
        .map(|s| match s.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("not a boolean: {s:?}"))),
        })
        .transpose()
}

/// Answers `GET /instances/{name}/logs`: without `follow`, JSON
/// `{"instance", "start", "end", "total", "lines"}` (start/end resolved); with `follow=true`,
/// SSE (`data: <line>` per line from `history[start:]` on, keep-alive comments every
/// [`KEEPALIVE`], ending when the sink is closed). `end` with `follow=true` is a 400
/// `INVALID_LOG_QUERY`; a history that cannot be read is a 500 `LOG_READ_FAILED`.
pub async fn respond(sink: Arc<LogSink>, q: LogQuery) -> Response {
    let instance = sink.instance().to_string();
    let read_failed = |e: io::Error| {
        ApiError::new(
            ErrorCode::LogReadFailed,
            format!("cannot read the log of instance {instance}: {e}"),
        )
        .into_response()
    };
    if q.follow.unwrap_or(false) {
        if q.end.is_some() {
            return ApiError::new(
                ErrorCode::InvalidLogQuery,
                "end cannot be combined with follow=true",
            )
            .into_response();
        }
        let from = sink.follow_start();
        let (history, rx) = sink.clone().follow_history(q.start, from).await;
        return match history {
            Ok(history) => sse(futures::stream::iter(history).chain(live(rx))),
            Err(e) => read_failed(e),
        };
    }
    let joined = tokio::task::spawn_blocking(move || sink.read_slice(q.start, q.end)).await;
    match joined.unwrap_or_else(|e| Err(io::Error::other(e))) {
        Ok(slice) => Json(json!({
            "instance": instance,
            "start": slice.start,
            "end": slice.end,
            "total": slice.total,
            "lines": slice.lines,
        }))
        .into_response(),
        Err(e) => read_failed(e),
    }
}

/// An SSE response of `lines`, one `data:` event each, with keep-alive comments when idle.
fn sse(lines: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures::stream::unfold(
        (Box::pin(lines), tick),
        |(mut lines, mut tick)| async move {
            let chunk = tokio::select! {
                biased;
                line = lines.next() => {
                    tick.reset();
                    Bytes::from(multiverse_common::sse::data_line(&line?))
                }
                _ = tick.tick() => Bytes::from_static(multiverse_common::sse::KEEP_ALIVE),
            };
            Some((Ok::<_, Infallible>(chunk), (lines, tick)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, multiverse_common::sse::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
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

    fn lines(range: Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }

    #[test]
    fn py_slice_matches_python() {
        // (len, start, end) → expected range, checked against Python's list slicing.
        type Case = (usize, Option<i64>, Option<i64>, Range<usize>);
        let cases: &[Case] = &[
            (5, None, None, 0..5),
            (5, Some(-2), None, 3..5),
            (5, None, Some(-1), 0..4),
            (5, Some(-10), Some(2), 0..2),
            (5, Some(3), Some(1), 3..3),
            (5, Some(7), Some(9), 5..5),
            (5, Some(0), Some(100), 0..5),
            (5, Some(1), Some(3), 1..3),
            (5, Some(2), Some(2), 2..2),
            (5, Some(-1), None, 4..5),
            (5, Some(-5), None, 0..5),
            (5, Some(-6), None, 0..5),
            (5, None, Some(-5), 0..0),
            (5, None, Some(-6), 0..0),
            (5, Some(-3), Some(-1), 2..4),
            (5, Some(-1), Some(-3), 4..4),
            (5, Some(5), None, 5..5),
            (5, Some(4), Some(5), 4..5),
            (5, None, Some(0), 0..0),
            (5, Some(i64::MIN), Some(i64::MAX), 0..5),
            (5, Some(i64::MAX), None, 5..5),
            (5, None, Some(i64::MIN), 0..0),
            (0, None, None, 0..0),
            (0, Some(-1), Some(1), 0..0),
            (0, Some(3), None, 0..0),
            (1, Some(-1), None, 0..1),
        ];
        for (len, start, end, want) in cases {
            let got = py_slice(*len, *start, *end);
            assert_eq!(&got, want, "len {len} [{start:?}:{end:?}]");
            assert!(got.start <= got.end && got.end <= *len);
        }
    }

    #[test]
    fn writes_lines_and_reads_slices() {
        let dir = TempDir::new("slices");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..10 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        assert_eq!(sink.read(None, None).unwrap(), lines(0..10));
        assert_eq!(sink.read(Some(-3), None).unwrap(), lines(7..10));
        assert_eq!(sink.read(None, Some(-8)).unwrap(), lines(0..2));
        assert_eq!(sink.read(Some(2), Some(4)).unwrap(), lines(2..4));
        assert!(sink.read(Some(4), Some(2)).unwrap().is_empty());
        assert!(sink.read(Some(20), None).unwrap().is_empty());
        let slice = sink.read_slice(Some(-3), Some(100)).unwrap();
        assert_eq!((slice.start, slice.end, slice.total), (7, 10, 10));
        let text = fs::read_to_string(dir.0.join("tei-a.log")).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert!(text.starts_with("line 0\nline 1\n"));
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

    #[tokio::test]
    async fn capture_copies_lines_until_eof() {
        let dir = TempDir::new("duplex");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        let (mut tx, rx) = tokio::io::duplex(16);
        let task = capture(rx, Stream::Stdout, sink.clone());
        tx.write_all(b"first\nsecond\r\nbad \xff utf8\n")
            .await
            .unwrap();
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        tx.write_all(&long).await.unwrap();
        tx.write_all(b"\nno newline at the end").await.unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("capture ends at EOF")
            .unwrap();
        let got = sink.read(None, None).unwrap();
        assert_eq!(got.len(), 6, "{:?}", &got[..3]);
        assert_eq!(got[0], "first");
        assert_eq!(got[1], "second");
        assert_eq!(got[2], "bad \u{fffd} utf8");
        assert_eq!(got[3].len(), MAX_LINE_BYTES);
        assert_eq!(got[4], "x".repeat(10));
        assert_eq!(got[5], "no newline at the end");
        assert_eq!(sink.lines_from(Stream::Stdout), 6);
    }

    #[tokio::test]
    async fn capture_a_child_stdout_and_stderr() {
        let dir = TempDir::new("child");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "echo a; echo b >&2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = capture(child.stdout.take().unwrap(), Stream::Stdout, sink.clone());
        let err = capture(child.stderr.take().unwrap(), Stream::Stderr, sink.clone());
        assert!(child.wait().await.unwrap().success());
        tokio::time::timeout(Duration::from_secs(5), async {
            out.await.unwrap();
            err.await.unwrap();
        })
        .await
        .expect("both captures end at EOF");
        let mut got = sink.read(None, None).unwrap();
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        assert_eq!(sink.lines_from(Stream::Stdout), 1);
        assert_eq!(sink.lines_from(Stream::Stderr), 1);
    }

    async fn next(s: &mut (impl futures::Stream<Item = String> + Unpin)) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a line or the end in time")
    }

    #[tokio::test]
    async fn follow_yields_the_tail_then_new_lines_then_ends() {
        let dir = TempDir::new("follow");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..20 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let mut s = Box::pin(sink.follow(Some(-3)));
        // Written before the stream is first polled (the history is read lazily), after the
        // subscription: must appear exactly once.
        sink.write_line(Stream::Stdout, "line 20");
        for want in lines(17..21) {
            assert_eq!(next(&mut s).await.as_deref(), Some(want.as_str()));
        }
        sink.write_line(Stream::Stderr, "line 21");
        sink.note("stopped");
        assert_eq!(next(&mut s).await.as_deref(), Some("line 21"));
        assert_eq!(next(&mut s).await.as_deref(), Some("[multiverse] stopped"));
        sink.close();
        assert!(sink.is_closed());
        assert_eq!(next(&mut s).await, None, "ends when closed");
        // Following a closed sink: the history, then the end.
        let mut s = Box::pin(sink.follow(Some(-1)));
        assert_eq!(next(&mut s).await.as_deref(), Some("[multiverse] stopped"));
        assert_eq!(next(&mut s).await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_loses_and_repeats_nothing_while_writing_and_rotating() {
        let dir = TempDir::new("race");
        // Small files: rotations run while followers read the history.
        let sink = LogSink::open(&dir.0, "tei-a", 400, 1000).unwrap();
        let n = 3000;
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    sink.write_line(Stream::Stdout, &format!("line {i}"));
                    if i % 97 == 0 {
                        std::thread::yield_now();
                    }
                }
                sink.close();
            })
        };
        let mut followers = Vec::new();
        for _ in 0..20 {
            let mut s = Box::pin(sink.follow(None));
            followers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(line) = next(&mut s).await {
                    got.push(line);
                }
                got
            }));
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        writer.join().unwrap();
        for f in followers {
            let got = f.await.unwrap();
            assert_eq!(got, lines(0..n), "every line exactly once, in order");
        }
    }

    async fn body_string(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn query(q: &str) -> LogQuery {
        let uri: axum::http::Uri = format!("/logs?{q}").parse().unwrap();
        axum::extract::Query::<LogQuery>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn query_parsing() {
        let q = query("start=-10&end=5&follow=true");
        assert_eq!((q.start, q.end, q.follow), (Some(-10), Some(5), Some(true)));
        let q = query("start=&end=&follow=");
        assert_eq!((q.start, q.end, q.follow), (None, None, None));
        let q = query("follow=0");
        assert_eq!((q.start, q.end, q.follow), (None, None, Some(false)));
        let uri: axum::http::Uri = "/logs?start=abc".parse().unwrap();
        assert!(axum::extract::Query::<LogQuery>::try_from_uri(&uri).is_err());
    }

    #[tokio::test]
    async fn respond_with_json_slices() {
        let dir = TempDir::new("json");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..5 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let resp = respond(sink.clone(), query("start=-2")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(
            v,
            json!({"instance": "tei-a", "start": 3, "end": 5, "total": 5,
                   "lines": ["line 3", "line 4"]})
        );
        let resp = respond(sink.clone(), query("start=3&end=1")).await;
        let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(v["lines"], json!([]));
        assert_eq!((v["start"].clone(), v["end"].clone()), (json!(3), json!(3)));
    }

    #[tokio::test]
    async fn respond_reports_read_errors_and_bad_follow_queries() {
        let dir = TempDir::new("errors");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        let resp = respond(sink.clone(), query("follow=true&end=3")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(body_string(resp).await.contains("INVALID_LOG_QUERY"));
        // The log replaced by a directory: unreadable.
        fs::remove_file(sink.path()).unwrap();
        fs::create_dir(sink.path()).unwrap();
        for q in ["", "follow=true"] {
            let resp = respond(sink.clone(), query(q)).await;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{q}");
            let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
            assert_eq!(v["code"], "LOG_READ_FAILED");
        }
        assert!(sink.read(None, None).is_err());
    }

    async fn sse_until(body: &mut axum::body::BodyDataStream, read: &mut String, want: &str) {
        while !read.contains(want) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("data in time")
                .expect("stream open")
                .unwrap();
            read.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    #[tokio::test]
    async fn respond_streams_sse_when_following() {
        let dir = TempDir::new("sse");
        let sink = LogSink::open(&dir.0, "tei-a", 0, 3).unwrap();
        for i in 0..5 {
            sink.write_line(Stream::Stdout, &format!("line {i}"));
        }
        let resp = respond(sink.clone(), query("follow=true&start=-2")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body().into_data_stream();
        let mut read = String::new();
        sse_until(&mut body, &mut read, "line 4").await;
        assert_eq!(read, "data: line 3\n\ndata: line 4\n\n");
        sink.write_line(Stream::Stdout, "new\r");
        sink.write_line(Stream::Stdout, "");
        sink.note("bye");
        sse_until(&mut body, &mut read, "bye").await;
        assert_eq!(
            read,
            "data: line 3\n\ndata: line 4\n\ndata: new\n\ndata: \n\ndata: [multiverse] bye\n\n"
        );
        sink.close();
        let end = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap();
        assert!(end.is_none(), "the response ends when the sink is closed");
    }
}
