//! The inference step of `mock-tei`'s model requests, and its simulation of TEI's batching
//! queue (`--simulate-batching`).
//!
//! TEI queues every input and infers batches of at most `--max-batch-tokens` tokens (and
//! `--max-batch-requests` inputs); a request beyond `--max-concurrent-requests` is refused at
//! once with 429 `overloaded`. The mock models that as continuous batching: a request holds its
//! inputs' share of both capacities (FIFO semaphores) for `--latency-ms`; while it waits for
//! them its inputs count in `te_queue_size`. When it starts, the inputs and tokens now being
//! inferred (its own included) are recorded as `te_batch_next_size` / `te_batch_next_tokens`.
//!
//! Without the flag nothing waits: every request is its own batch, inferred at once (its
//! `--latency-ms` is spent on admission, as the mock always did).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, so the queue is unit-tested on paused time.
use tokio::time::Instant;

use super::common;
use super::tei_args::TeiArgs;
use super::tei_metrics::TeiMetrics;
use super::tei_model::TeiError;

/// What one model request asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Inputs (texts, pairs) in the request.
    pub inputs: u32,
    /// Tokens over all inputs.
    pub tokens: u32,
}

/// Where a request's time went, when batching is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Waiting for batch capacity.
    pub queue: Duration,
    /// Being inferred (`--latency-ms`).
    pub inference: Duration,
}

/// Batch capacity shared by the requests of one server.
#[derive(Debug)]
pub struct Batching {
    simulate: bool,
    latency: Duration,
    /// `--max-concurrent-requests` permits (only with `--simulate-batching`).
    concurrency: Arc<Semaphore>,
    tokens: Semaphore,
    max_tokens: u32,
    inputs: Option<(Semaphore, u32)>,
    running_inputs: AtomicU64,
    running_tokens: AtomicU64,
}

fn permits(n: usize) -> u32 {
    u32::try_from(n.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX)
}

/// Decrements a gauge, or counters, when dropped (a client going away mid-wait included).
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl Batching {
    /// The capacity `args` describe.
    pub fn new(args: &TeiArgs) -> Self {
        let max_tokens = permits(args.max_batch_tokens);
        Self {
            simulate: args.simulate_batching,
            latency: Duration::from_millis(args.latency_ms),
            concurrency: Arc::new(Semaphore::new(
                permits(args.max_concurrent_requests) as usize
            )),
            tokens: Semaphore::new(max_tokens as usize),
            max_tokens,
            inputs: args.max_batch_requests.map(|n| {
                let n = permits(n);
                (Semaphore::new(n as usize), n)
            }),
            running_inputs: AtomicU64::new(0),
            running_tokens: AtomicU64::new(0),
        }
    }

    /// Whether `--simulate-batching` is on (admission then leaves `--latency-ms` to
    /// [`Batching::infer`]).
    pub fn simulated(&self) -> bool {
        self.simulate
    }

    /// TEI's `--max-concurrent-requests` check: permits for `load`'s inputs, held until the
    /// answer is ready, or TEI's overloaded error. Always granted without simulation.
    pub fn permit(&self, load: Option<Load>) -> Result<Option<OwnedSemaphorePermit>, TeiError> {
        match load {
            Some(load) if self.simulate => self
                .concurrency
                .clone()
                .try_acquire_many_owned(load.inputs.max(1))
                .map(Some)
                .map_err(|_| TeiError::overloaded()),
            _ => Ok(None),
        }
    }

    /// Infers one request: with simulation, waits for capacity then `--latency-ms` and returns
    /// where the time went; without, records the request as its own batch. Requests that are
    /// no model call (tokenize, decode: `load` is `None`) only get the latency.
    pub async fn infer(
        &self,
        load: Option<Load>,
        metrics: &TeiMetrics,
    ) -> Result<Option<Timing>, TeiError> {
        let Some(load) = load else {
            if self.simulate {
                common::delay_ms(self.latency.as_millis() as u64).await;
            }
            return Ok(None);
        };
        if !self.simulate {
            metrics.batch_next_size.observe(f64::from(load.inputs));
            metrics.batch_next_tokens.observe(f64::from(load.tokens));
            return Ok(None);
        }
        let queued_at = Instant::now();
        let inputs = i64::from(load.inputs);
        metrics.queue_size.add(inputs);
        let queued = Undo(|| metrics.queue_size.sub(inputs));
        let closed = |_| TeiError::unhealthy("shutting down");
        let _input_permits = match &self.inputs {
            Some((semaphore, max)) => Some(
                semaphore
                    .acquire_many(load.inputs.clamp(1, *max))
                    .await
                    .map_err(closed)?,
            ),
            None => None,
        };
        let _token_permits = self
            .tokens
            .acquire_many(load.tokens.clamp(1, self.max_tokens))
            .await
            .map_err(closed)?;
        drop(queued);
        let queue = queued_at.elapsed();

        let (n, t) = (u64::from(load.inputs), u64::from(load.tokens));
        let batch_inputs = self.running_inputs.fetch_add(n, Ordering::SeqCst) + n;
        let batch_tokens = self.running_tokens.fetch_add(t, Ordering::SeqCst) + t;
        let _running = Undo(|| {
            self.running_inputs.fetch_sub(n, Ordering::SeqCst);
            self.running_tokens.fetch_sub(t, Ordering::SeqCst);
        });
        metrics.batch_next_size.observe(batch_inputs as f64);
        metrics.batch_next_tokens.observe(batch_tokens as f64);
        let started = Instant::now();
        tokio::time::sleep(self.latency).await;
        Ok(Some(Timing {
            queue,
            inference: started.elapsed(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn batching(extra: &[&str]) -> Arc<Batching> {
        let mut argv = vec!["mock-tei", "--simulate-batching"];
        argv.extend_from_slice(extra);
        Arc::new(Batching::new(&TeiArgs::parse_from(argv)))
    }

    fn load(inputs: u32, tokens: u32) -> Option<Load> {
        Some(Load { inputs, tokens })
    }

    /// Lets spawned tasks run until they block (paused time advances only when all are idle).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_capacity_wait_in_the_queue() {
        let b = batching(&["--max-batch-requests", "2", "--latency-ms", "100"]);
        let metrics = Arc::new(TeiMetrics::new());
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (b, m) = (b.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                b.infer(load(1, 4), &m).await.expect("inferred")
            }));
        }
        settle().await;
        // Two run, three wait.
        assert_eq!(metrics.queue_size.get(), 3);
        let timings: Vec<Timing> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|t| t.expect("task").expect("simulated"))
            .collect();
        assert_eq!(metrics.queue_size.get(), 0);
        let waited: Vec<u128> = timings.iter().map(|t| t.queue.as_millis()).collect();
        assert_eq!(waited, vec![0, 0, 100, 100, 200]);
        assert!(timings
            .iter()
            .all(|t| t.inference == Duration::from_millis(100)));
        // Every start saw at most two inputs running (itself included), and two did run at once.
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        let bucket = |le: &str| -> u64 {
            let prefix = format!("te_batch_next_size_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
        };
        assert_eq!(bucket("2"), 5);
        assert!(bucket("1") < 5, "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn token_capacity_is_shared_and_a_large_request_still_runs() {
        let b = batching(&["--max-batch-tokens", "10", "--latency-ms", "50"]);
        let metrics = TeiMetrics::new();
        // More tokens than the whole capacity: runs alone instead of waiting forever.
        let t = b
            .infer(load(3, 50), &metrics)
            .await
            .expect("ok")
            .expect("timing");
        assert_eq!(t.queue, Duration::ZERO);
        let (first, second) = tokio::join!(b.infer(load(1, 6), &metrics), async {
            settle().await;
            b.infer(load(1, 6), &metrics).await
        });
        let (first, second) = (first.expect("ok"), second.expect("ok"));
        assert_eq!(first.map(|t| t.queue), Some(Duration::ZERO));
        assert_eq!(second.map(|t| t.queue), Some(Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrent_requests_refuses_with_overloaded() {
        let b = batching(&["--max-concurrent-requests", "3"]);
        let held = b.permit(load(2, 2)).expect("two of three");
        assert!(held.is_some());
        let refused = b.permit(load(2, 2)).expect_err("over the limit");
        assert_eq!(refused.error_type(), "overloaded");
        assert_eq!(refused.status().as_u16(), 429);
        assert!(b.permit(load(1, 1)).is_ok());
        drop(held);
        assert!(b.permit(load(2, 2)).is_ok());
        // Tokenize and decode are not model calls: never refused.
        assert!(b.permit(None).expect("granted").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn without_simulation_nothing_waits_or_is_refused() {
        let b = Batching::new(&TeiArgs::parse_from([
            "mock-tei",
            "--max-concurrent-requests",
            "1",
            "--max-batch-requests",
            "1",
            "--latency-ms",
            "100",
        ]));
        let metrics = TeiMetrics::new();
        assert!(b.permit(load(5, 5)).expect("no limit").is_none());
        let started = tokio::time::Instant::now();
        let (a, c) = tokio::join!(b.infer(load(1, 3), &metrics), b.infer(load(2, 4), &metrics));
        assert_eq!((a.expect("ok"), c.expect("ok")), (None, None));
        // The latency is admission's, not inference's.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(metrics.batch_next_size.get_sample_sum(), 3.0);
        assert_eq!(metrics.batch_next_tokens.get_sample_sum(), 7.0);
        assert_eq!(metrics.queue_size.get(), 0);
    }
}
