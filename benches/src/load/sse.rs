//! Timing server-sent events as they arrive: when each event (a block ended by a blank line)
//! was complete, from which a stream's time to first event and its inter-event gaps follow.
//!
//! Feed it the body frames in arrival order ([`SseTimer::feed`]); an event that ends in a later
//! frame than it started is timed when its last byte arrives. Events delivered together in one
//! frame get the same time (a gap of 0: the sender or a proxy coalesced them).

use std::time::{Duration, Instant};

/// Arrival times of the events of one stream.
#[derive(Debug, Default, Clone)]
pub struct SseTimer {
    /// When each event was complete, in order.
    pub events: Vec<Instant>,
    /// The last byte seen (an event delimiter `\n\n` may straddle two frames).
    last: Option<u8>,
}

impl SseTimer {
    /// A timer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the events completed by `data`, which arrived at `now`.
    pub fn feed(&mut self, data: &[u8], now: Instant) {
        let mut previous = self.last;
        for &byte in data {
            if byte == b'\n' && previous == Some(b'\n') {
                self.events.push(now);
                // "\n\n\n" is one delimiter and an empty line, not two events.
                previous = None;
                continue;
            }
            if byte != b'\r' {
                previous = Some(byte);
            }
        }
        self.last = previous;
    }

    /// The first event's arrival.
    pub fn first(&self) -> Option<Instant> {
        self.events.first().copied()
    }

    /// The gaps between consecutive events.
    pub fn gaps(&self) -> Vec<Duration> {
        self.events
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .collect()
    }
}

/// Whether an SSE body ends with OpenAI's `data: [DONE]` event.
pub fn ends_with_done(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.trim_end()
        .rsplit("\n\n")
        .next()
        .is_some_and(|last| last.trim() == "data: [DONE]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_frames() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut timer = SseTimer::new();
        timer.feed(b"data: a\n\nda", t(1));
        timer.feed(b"ta: b\n", t(5));
        timer.feed(b"\ndata: c\n\ndata: [DONE]\n\n", t(9));
        assert_eq!(timer.events, vec![t(1), t(9), t(9), t(9)]);
        assert_eq!(timer.first(), Some(t(1)));
        assert_eq!(
            timer.gaps(),
            vec![Duration::from_millis(8), Duration::ZERO, Duration::ZERO]
        );
    }

    #[test]
    fn crlf_and_extra_blank_lines() {
        let now = Instant::now();
        let mut timer = SseTimer::new();
        timer.feed(b"data: a\r\n\r\n\ndata: b\n\n", now);
        assert_eq!(timer.events.len(), 2);
    }

    #[test]
    fn done_detection() {
        assert!(ends_with_done(b"data: {}\n\ndata: [DONE]\n\n"));
        assert!(!ends_with_done(b"data: {}\n\n"));
        assert!(!ends_with_done(b""));
    }
}
