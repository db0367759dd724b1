//! Copying a child's stdout or stderr into its log, line by line.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{LogSink, Stream, MAX_LINE_BYTES};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::super::test_util::TempDir;
    use super::*;

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
}
