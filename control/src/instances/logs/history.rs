//! Reading one instance's log back: the whole retained history as one list of lines, sliced
//! like Python's `lines[start:end]`, consistent with rotations running meanwhile.

use std::fs;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{LogError, LogSink, LogSlice};

impl LogSink {
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
    pub(super) fn history(
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

    /// [`read_slice`](Self::read_slice) on a blocking thread.
    pub async fn slice(
        self: &Arc<Self>,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<LogSlice, LogError> {
        let sink = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || sink.read_slice(start, end)).await;
        joined
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|source| self.read_error(source))
    }

    pub(super) fn read_error(&self, source: io::Error) -> LogError {
        LogError {
            instance: self.instance().to_string(),
            source,
        }
    }
}

/// The file contents of a history and where each line is in them.
pub(super) struct History {
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

    pub(super) fn len(&self) -> usize {
        self.lines.len()
    }

    fn drop_last(&mut self, n: usize) {
        self.lines.truncate(self.lines.len().saturating_sub(n));
    }

    pub(super) fn strings(&self, range: Range<usize>) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::super::test_util::{lines, TempDir};
    use super::super::Stream;
    use super::*;

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
}
