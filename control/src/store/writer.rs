//! The state writer thread: applies the changes it receives to its copy of the records and
//! saves the file — after each change, or (batched persistence) at most once per interval.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Change, Records, StateError, StateFile};

/// Called by the writer with the outcome of a change and the records in force afterwards.
pub(super) type Reply = Box<dyn FnOnce(Result<(), StateError>, &Records) + Send>;

/// What the writer is sent.
pub(super) enum Job {
    Change {
        change: Change,
        reply: Reply,
    },
    /// Save what is pending now (batched persistence); answered with the outcome.
    Flush(oneshot::Sender<Result<(), StateError>>),
}

/// The writer thread, until every handle is gone (then, batched, it saves what is pending).
pub(super) fn run(
    file: Option<StateFile>,
    records: Records,
    jobs: Receiver<Job>,
    save_interval: Duration,
) {
    match file {
        Some(file) if !save_interval.is_zero() => batched(&file, records, &jobs, save_interval),
        file => every_change(file.as_ref(), records, &jobs),
    }
}

/// Saves after each change; a change whose save fails is not applied.
fn every_change(file: Option<&StateFile>, mut records: Records, jobs: &Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Change { change, reply } => {
                let mut next = records.clone();
                next.apply(change);
                let result = match file {
                    Some(f) if next != records => f.save(&next.to_state()),
                    _ => Ok(()),
                };
                if result.is_ok() {
                    records = next;
                }
                reply(result, &records);
            }
            Job::Flush(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// The records as applied, and the window of changes not saved yet.
struct Batch<'a> {
    file: &'a StateFile,
    records: Records,
    /// What the file holds (as far as this writer knows).
    saved: Records,
    /// When the oldest unsaved change arrived (`None`: nothing to save).
    dirty_since: Option<Instant>,
}

impl Batch<'_> {
    /// Saves the pending changes, if any; on failure they stay pending and the window starts
    /// again (retried an interval later).
    fn save(&mut self) -> Result<(), StateError> {
        if self.dirty_since.is_none() {
            return Ok(());
        }
        if self.records == self.saved {
            self.dirty_since = None;
            return Ok(());
        }
        match self.file.save(&self.records.to_state()) {
            Ok(()) => {
                self.saved = self.records.clone();
                self.dirty_since = None;
                Ok(())
            }
            Err(e) => {
                self.dirty_since = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn save_logged(&mut self, when: &str) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "{when}: cannot save the state (retried)");
        }
    }
}

/// Batched persistence: changes are answered once applied; the file is saved when the window
/// opened by the first unsaved change is `interval` old, on [`Job::Flush`], at once for
/// snapshot-version reservations, and when every handle is gone.
fn batched(file: &StateFile, records: Records, jobs: &Receiver<Job>, interval: Duration) {
    let mut b = Batch {
        file,
        saved: records.clone(),
        records,
        dirty_since: None,
    };
    loop {
        let job = match b.dirty_since {
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => {
                jobs.recv_timeout((since + interval).saturating_duration_since(Instant::now()))
            }
        };
        match job {
            Ok(Job::Change { change, reply }) => {
                let sync = matches!(change, Change::RaiseVersionFloor(_));
                b.records.apply(change);
                if b.records != b.saved && b.dirty_since.is_none() {
                    b.dirty_since = Some(Instant::now());
                }
                if sync {
                    let result = b.save();
                    reply(result, &b.records);
                } else {
                    reply(Ok(()), &b.records);
                }
            }
            Ok(Job::Flush(done)) => {
                let _ = done.send(b.save());
            }
            Err(RecvTimeoutError::Timeout) => b.save_logged("batched save"),
            Err(RecvTimeoutError::Disconnected) => {
                b.save_logged("last save");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{BackendRecord, Store};
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mv-writer-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ids(d: &std::path::Path) -> Vec<String> {
        StateFile::new(d)
            .load()
            .expect("load")
            .backends
            .into_iter()
            .map(|b| b.id)
            .collect()
    }

    #[tokio::test]
    async fn batched_changes_are_saved_together_after_the_interval_or_on_flush() {
        let d = dir("batched");
        let interval = Duration::from_millis(400);
        let (store, _) = Store::open_batched(StateFile::new(&d), interval).expect("open");
        let sent = Instant::now();
        for id in ["a", "b"] {
            store
                .put_backend(BackendRecord::example(id))
                .done()
                .await
                .expect("acknowledged");
        }
        // Answered before the save: the file does not have them yet (unless this thread was
        // descheduled for the whole interval).
        if sent.elapsed() < interval {
            assert!(ids(&d).is_empty(), "not saved before the interval");
        }
        let saved = loop {
            let now = ids(&d);
            if !now.is_empty() {
                break now;
            }
            assert!(sent.elapsed() < Duration::from_secs(10), "saved in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(sent.elapsed() >= interval, "not before the interval");
        assert_eq!(saved, ["bk-a", "bk-b"], "both in one save");

        // A flush saves at once; a reservation of versions too.
        let _ = store.put_backend(BackendRecord::example("c")).done().await;
        store.flush().await.expect("flushed");
        assert_eq!(ids(&d), ["bk-a", "bk-b", "bk-c"]);
        let _ = store.remove_backend("bk-c").done().await;
        store
            .raise_version_floor(500)
            .done()
            .await
            .expect("reserved");
        let state = StateFile::new(&d).load().expect("load");
        assert_eq!(state.version_floor, 500, "reservations are saved at once");
        assert_eq!(state.backends.len(), 2, "with what was pending");

        // The last handle gone: what is pending is saved.
        let _ = store.remove_backend("bk-a").done().await;
        drop(store);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ids(&d) != ["bk-b"] {
            assert!(Instant::now() < deadline, "saved when the writer ends");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_failed_batched_save_is_retried() {
        let d = dir("retry");
        let (store, _) =
            Store::open_batched(StateFile::new(&d), Duration::from_millis(50)).expect("open");
        // The data directory is a regular file: saves fail until it is removed.
        std::fs::write(&d, "not a directory").expect("file");
        let _ = store.put_backend(BackendRecord::example("a")).done().await;
        assert!(
            store.flush().await.is_err(),
            "the flush reports the failure"
        );
        std::fs::remove_file(&d).expect("rm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.join("state.toml").exists() {
            assert!(Instant::now() < deadline, "retried after the failure");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ids(&d), ["bk-a"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
