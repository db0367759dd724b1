//! Following one instance's log: a tail of the history, then every new line as it is written,
//! with nothing lost or repeated at the boundary.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::history::py_slice;
use super::{LogError, LogSink, NOTE_PREFIX};

/// What [`LogSink::follow`] takes under the lock: the subscription and where the file ended.
struct FollowStart {
    rx: Option<broadcast::Receiver<String>>,
    generation: u64,
    len: u64,
}

impl LogSink {
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

    /// Like [`follow`](Self::follow), but the history is read first, so that a history that
    /// cannot be read is an error (for an HTTP status) rather than a line of the stream.
    pub async fn tail(
        self: &Arc<Self>,
        start: Option<i64>,
    ) -> Result<impl futures::Stream<Item = String> + Send + 'static, LogError> {
        let from = self.follow_start();
        let (history, rx) = Arc::clone(self).follow_history(start, from).await;
        let history = history.map_err(|e| self.read_error(e))?;
        Ok(futures::stream::iter(history).chain(live(rx)))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_util::{lines, TempDir};
    use super::super::Stream;
    use super::*;

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
}
