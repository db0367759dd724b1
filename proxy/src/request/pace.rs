//! How an SSE stream paced out: the time to its first chunk (time to first token, from the
//! request's start) and the gaps between its chunks (inter-token gaps), as histograms per
//! model. A backend writes one event per token or so; chunks it coalesced count as one gap, and
//! the first chunk of a chat stream is often the role alone, so both are slight
//! underestimates of the per-token figures.
//!
//! Only what the client gets counts: a chunk the proxy forwards empty (the hidden usage event
//! of a stream it asked usage for, `request::stream_usage`, or the start of an event held back
//! until its `choices` are visible) is no token, no gap and no first token; the bytes count
//! when they go out.
//!
//! Cost: the model's two histograms are looked up once per stream (when its header is
//! forwarded); each forwarded chunk then costs a clock read (vDSO, no syscall) and an
//! observation (atomic adds, no lock, no allocation).

use std::time::Instant;

use prometheus::Histogram;

/// One stream's pacing, observed as its chunks go out.
pub struct Pace {
    first_token: Histogram,
    gap: Histogram,
    last: Option<Instant>,
}

impl Pace {
    /// A stream whose chunks are observed into `first_token` and `gap`.
    pub fn new((first_token, gap): (Histogram, Histogram)) -> Self {
        Self {
            first_token,
            gap,
            last: None,
        }
    }

    /// A chunk of the upstream's body went by now, of which the client gets `forwarded`
    /// (nothing: not observed); the request started at `started`.
    pub fn chunk(&mut self, forwarded: Option<&[u8]>, started: Instant) {
        if forwarded.is_some_and(|b| !b.is_empty()) {
            self.chunk_at(started, Instant::now());
        }
    }

    fn chunk_at(&mut self, started: Instant, now: Instant) {
        match self.last {
            None => self
                .first_token
                .observe(now.saturating_duration_since(started).as_secs_f64()),
            Some(last) => self
                .gap
                .observe(now.saturating_duration_since(last).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use prometheus::HistogramOpts;

    #[test]
    fn the_first_chunk_is_the_first_token_and_the_rest_are_gaps() {
        let h = |n: &str| Histogram::with_opts(HistogramOpts::new(n, n)).expect("histogram");
        let (first, gap) = (h("first"), h("gap"));
        let mut pace = Pace::new((first.clone(), gap.clone()));
        let t0 = Instant::now();
        pace.chunk_at(t0, t0 + Duration::from_millis(250));
        pace.chunk_at(t0, t0 + Duration::from_millis(300));
        pace.chunk_at(t0, t0 + Duration::from_millis(400));
        assert_eq!(first.get_sample_count(), 1);
        assert!((first.get_sample_sum() - 0.25).abs() < 1e-9);
        assert_eq!(gap.get_sample_count(), 2);
        assert!((gap.get_sample_sum() - 0.15).abs() < 1e-9);
    }

    #[test]
    fn a_chunk_the_client_does_not_get_is_not_observed() {
        let h = |n: &str| Histogram::with_opts(HistogramOpts::new(n, n)).expect("histogram");
        let (first, gap) = (h("first"), h("gap"));
        let mut pace = Pace::new((first.clone(), gap.clone()));
        let t0 = Instant::now();
        // Held back or hidden: nothing went out.
        pace.chunk(Some(b""), t0);
        pace.chunk(None, t0);
        assert_eq!(first.get_sample_count() + gap.get_sample_count(), 0);
        pace.chunk(Some(b"data: {}\n\n"), t0);
        pace.chunk(Some(b""), t0);
        pace.chunk(Some(b"data: [DONE]\n\n"), t0);
        assert_eq!(first.get_sample_count(), 1);
        assert_eq!(gap.get_sample_count(), 1);
    }
}
