//! A model's admission queue: requests that found every endpoint at its `max_concurrent` wait
//! here, high priority before low, first come first served within each, until a finishing
//! request frees a slot ([`AdmitQueue::wake_one`]). Kept across table versions by model name.
//!
//! The uncontended path never touches the lock: whether anyone waits is one atomic load
//! ([`AdmitQueue::is_empty`]). The `Mutex` around the two deques is taken only by requests that
//! wait (join, leave) and by finishing requests while someone waits; it holds no I/O and no
//! await. A full queue sheds its newest low-priority waiter for a high-priority newcomer; a low
//! newcomer to a full queue is refused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

/// A request's priority (`x-priority: high | low`; anything else, or none, is high).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    Low,
}

impl Priority {
    /// From a header value: `low` (any case) is low, everything else high.
    pub fn from_header(v: Option<&[u8]>) -> Priority {
        match v {
            Some(v) if v.eq_ignore_ascii_case(b"low") => Priority::Low,
            _ => Priority::High,
        }
    }
}

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A slot was freed: try to take it.
    Slot,
    /// Pushed out of a full queue by a higher-priority request.
    Shed,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Wake>,
}

#[derive(Default)]
struct Waiters {
    high: VecDeque<Waiter>,
    low: VecDeque<Waiter>,
    next_id: u64,
}

/// The queue of one model.
#[derive(Default)]
pub struct AdmitQueue {
    /// Waiters in both deques (read without the lock).
    waiting: AtomicUsize,
    inner: Mutex<Waiters>,
}

impl std::fmt::Debug for AdmitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitQueue")
            .field("waiting", &self.len())
            .finish()
    }
}

/// A place in the queue.
pub struct Ticket {
    pub id: u64,
    pub priority: Priority,
    pub rx: oneshot::Receiver<Wake>,
}

/// Why a request could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl AdmitQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nobody waits (one atomic load).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Joins at the back of `priority`'s line (at the front with `front`: a woken waiter that
    /// lost its slot keeps its place) when fewer than `max` wait; a full queue sheds its newest
    /// low waiter for a high newcomer (told [`Wake::Shed`]).
    pub fn join(&self, priority: Priority, max: usize, front: bool) -> Result<Ticket, Full> {
        let mut w = self.lock();
        if w.high.len() + w.low.len() >= max {
            let shed = match priority {
                Priority::High => w.low.pop_back(),
                Priority::Low => None,
            };
            match shed {
                Some(victim) => {
                    let _ = victim.tx.send(Wake::Shed);
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                }
                None => return Err(Full),
            }
        }
        w.next_id += 1;
        let id = w.next_id;
        let (tx, rx) = oneshot::channel();
        let line = match priority {
            Priority::High => &mut w.high,
            Priority::Low => &mut w.low,
        };
        if front {
            line.push_front(Waiter { id, tx });
        } else {
            line.push_back(Waiter { id, tx });
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket { id, priority, rx })
    }

    /// Leaves the queue (timed out, gone, or admitted another way); false if `id` was already
    /// taken out (woken or shed: its message is in the ticket).
    pub fn leave(&self, id: u64, priority: Priority) -> bool {
        let mut w = self.lock();
        let line = match priority {
            Priority::High => &mut w.high,
            Priority::Low => &mut w.low,
        };
        match line.iter().position(|x| x.id == id) {
            Some(at) => {
                line.remove(at);
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// A slot was freed: tells the first waiter (high before low) to take it. Waiters whose
    /// request is gone are skipped.
    pub fn wake_one(&self) {
        let mut w = self.lock();
        loop {
            let Some(next) = w.high.pop_front().or_else(|| w.low.pop_front()) else {
                return;
            };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if next.tx.send(Wake::Slot).is_ok() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_before_low_fifo_within_each_and_low_shed_for_high() {
        let q = AdmitQueue::default();
        assert!(q.is_empty());
        let mut low1 = q.join(Priority::Low, 3, false).expect("room");
        let mut high1 = q.join(Priority::High, 3, false).expect("room");
        let mut low2 = q.join(Priority::Low, 3, false).expect("room");
        assert_eq!(q.len(), 3);
        assert_eq!(q.join(Priority::Low, 3, false).err(), Some(Full), "full");
        let mut high2 = q.join(Priority::High, 3, false).expect("sheds low2");
        assert_eq!(low2.rx.try_recv(), Ok(Wake::Shed));
        q.wake_one();
        assert_eq!(high1.rx.try_recv(), Ok(Wake::Slot));
        q.wake_one();
        assert_eq!(high2.rx.try_recv(), Ok(Wake::Slot));
        assert!(low1.rx.try_recv().is_err(), "still waiting");
        assert!(q.leave(low1.id, Priority::Low));
        assert!(!q.leave(low1.id, Priority::Low), "once");
        assert!(q.is_empty());
        q.wake_one();
    }

    #[test]
    fn a_gone_waiter_is_skipped_and_front_keeps_a_place() {
        let q = AdmitQueue::default();
        let gone = q.join(Priority::High, 4, false).expect("room");
        let mut second = q.join(Priority::High, 4, false).expect("room");
        let mut first = q.join(Priority::High, 4, true).expect("room");
        drop(gone.rx);
        q.wake_one();
        assert_eq!(first.rx.try_recv(), Ok(Wake::Slot), "front");
        q.wake_one();
        assert_eq!(second.rx.try_recv(), Ok(Wake::Slot), "the gone one skipped");
        assert!(q.is_empty());
        assert_eq!(Priority::from_header(Some(b"LOW")), Priority::Low);
        assert_eq!(Priority::from_header(Some(b"urgent")), Priority::High);
        assert_eq!(Priority::from_header(None), Priority::High);
    }
}
