//! Engine-reported load of one endpoint (the control plane scrapes the engine's own metrics and
//! pushes them in `LoadUpdate`s), kept in atomics in the endpoint's shared state so table swaps
//! keep it, and how balancing combines it with the proxy's own in-flight count.
//!
//! Cost, in requests: `in_flight + waiting + ⌊running / 2⌋ + 4 × kv_cache_usage`. The proxy's
//! own in-flight count is exact and immediate; the engine's queue (`waiting`) counts fully, its
//! running batch half, rounded down (it also holds this proxy's in-flight requests, already
//! counted, and a running request frees its slot sooner than a queued one; a lone running
//! request, most likely this proxy's own as of the scrape, counts 0), and a full KV cache
//! weighs as 4 queued requests (the engine is about to queue or preempt). Kept in quarter
//! requests, so the cache term survives integer arithmetic.
//!
//! Staleness: a load whose age (at the plane's scrape) exceeds 3 × the plane's scrape interval
//! (the interval travels with each update) counts as 0, so an endpoint whose metrics stopped
//! answering, or whose plane stopped scraping, is balanced on in-flight counts alone again.
//!
//! Hot path: one relaxed atomic load per candidate (cost and expiry packed in one `u64`) and one
//! monotonic clock read per pick ([`pick_now`]; none until a load was ever received, so never
//! in standalone mode); no lock, no allocation.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::LazyLock;

use multiverse_common::clock::Instant;
use multiverse_proto::discovery::v1 as pb;

/// Bits of the packed word that hold the expiry (ms of [`now_ms`], ~34 years).
const EXPIRY_BITS: u32 = 40;
const EXPIRY_MASK: u64 = (1 << EXPIRY_BITS) - 1;
/// Largest engine cost kept, in quarter requests (24 bits).
const MAX_COST: u64 = (1 << (64 - EXPIRY_BITS)) - 1;
/// A load is stale once older than this many scrape intervals.
pub const STALE_INTERVALS: u64 = 3;
/// The interval assumed when an update does not say.
const DEFAULT_INTERVAL_MS: u64 = 1000;

/// The engines the control plane names (index stored in [`EngineLoad`]).
const ENGINES: [&str; 6] = ["", "vllm", "llamacpp", "tei", "sglang", "other"];

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Whether any engine load was ever stored in this process (standalone proxies never get one).
static ANY: AtomicBool = AtomicBool::new(false);

/// The `now` for [`EngineLoad::cost`] in a pick: [`now_ms`] once some load has been received;
/// before that (always, in standalone mode) no clock is read and every cost is 0.
#[inline]
pub fn pick_now() -> u64 {
    if ANY.load(Ordering::Relaxed) {
        now_ms()
    } else {
        u64::MAX
    }
}

/// Milliseconds of the process's load clock (tokio's, so paused time applies), never 0.
#[inline]
pub fn now_ms() -> u64 {
    let ms = Instant::now()
        .saturating_duration_since(*ORIGIN)
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// The engine cost of `waiting`, `running` and `kv_cache_usage`, in quarter requests.
pub fn engine_cost(waiting: u32, running: u32, kv_cache_usage: f32) -> u64 {
    let kv = (f64::from(kv_cache_usage).clamp(0.0, 1.0) * 16.0) as u64;
    (4 * u64::from(waiting) + 4 * (u64::from(running) / 2) + kv).min(MAX_COST)
}

/// One endpoint's latest engine load.
#[derive(Debug, Default)]
pub struct EngineLoad {
    /// `cost << 40 | fresh_until_ms` (0 before the first report: stale).
    packed: AtomicU64,
    // What /config_dump shows (written with `packed`, never read by balancing).
    waiting: AtomicU32,
    running: AtomicU32,
    kv_bits: AtomicU32,
    engine: AtomicU8,
    /// When the plane read it, in [`now_ms`].
    read_ms: AtomicU64,
}

impl EngineLoad {
    /// Stores `load`, received at `now` (ms of [`now_ms`]) in an update of `interval_ms`.
    pub fn set(&self, load: &pb::EndpointLoad, interval_ms: u32, now: u64) {
        let interval = match u64::from(interval_ms) {
            0 => DEFAULT_INTERVAL_MS,
            i => i,
        };
        let (age, limit) = (u64::from(load.age_ms), STALE_INTERVALS * interval);
        // 0: already stale on arrival (every `now` is above it).
        let until = match limit.checked_sub(age) {
            Some(left) => now.saturating_add(left).min(EXPIRY_MASK),
            None => 0,
        };
        let read = now.saturating_sub(age).max(1);
        let cost = engine_cost(load.waiting, load.running, load.kv_cache_usage);
        self.waiting.store(load.waiting, Ordering::Relaxed);
        self.running.store(load.running, Ordering::Relaxed);
        self.kv_bits
            .store(load.kv_cache_usage.to_bits(), Ordering::Relaxed);
        let engine = ENGINES[1..]
            .iter()
            .position(|e| *e == load.engine)
            .map_or(ENGINES.len() - 1, |i| i + 1);
        self.engine.store(engine as u8, Ordering::Relaxed);
        self.read_ms.store(read, Ordering::Relaxed);
        self.packed
            .store(cost << EXPIRY_BITS | until, Ordering::Relaxed);
        ANY.store(true, Ordering::Relaxed);
    }

    /// The engine cost at `now`, in quarter requests: 0 when never reported or stale.
    #[inline]
    pub fn cost(&self, now: u64) -> u64 {
        let packed = self.packed.load(Ordering::Relaxed);
        if packed & EXPIRY_MASK < now {
            0
        } else {
            packed >> EXPIRY_BITS
        }
    }

    /// What `/config_dump` shows: `null` when never reported.
    pub fn view(&self, now: u64) -> serde_json::Value {
        if self.read_ms.load(Ordering::Relaxed) == 0 {
            return serde_json::Value::Null;
        }
        let packed = self.packed.load(Ordering::Relaxed);
        let engine = ENGINES
            .get(usize::from(self.engine.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or("other");
        serde_json::json!({
            "engine": engine,
            "waiting": self.waiting.load(Ordering::Relaxed),
            "running": self.running.load(Ordering::Relaxed),
            "kv_cache_usage": f32::from_bits(self.kv_bits.load(Ordering::Relaxed)),
            "age_ms": now.saturating_sub(self.read_ms.load(Ordering::Relaxed)),
            "stale": packed & EXPIRY_MASK < now,
            "cost": self.cost(now) as f64 / 4.0,
        })
    }
}

/// Serializes an endpoint's state as its engine load (`engine_load` in `/config_dump`).
pub fn serialize_state<S: serde::Serializer>(
    state: &std::sync::Arc<crate::routing::endpoint::EndpointState>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&state.engine.view(now_ms()), s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn update(waiting: u32, running: u32, kv: f32, age_ms: u32) -> pb::EndpointLoad {
        pb::EndpointLoad {
            endpoint_id: "a".into(),
            waiting,
            running,
            kv_cache_usage: kv,
            age_ms,
            engine: "vllm".into(),
        }
    }

    #[test]
    fn cost_counts_queue_fully_running_half_and_a_full_cache_as_four() {
        assert_eq!(engine_cost(50, 0, 0.0), 200, "50 requests");
        assert_eq!(engine_cost(0, 3, 0.0), 4, "⌊3 / 2⌋ requests");
        assert_eq!(engine_cost(0, 1, 0.0), 0, "a lone running request");
        assert_eq!(
            engine_cost(1, 0, 0.25),
            8,
            "1 queued + a quarter-full cache"
        );
        assert_eq!(engine_cost(0, 0, 1.0), 16, "4 requests");
        assert_eq!(engine_cost(u32::MAX, u32::MAX, 9.0), MAX_COST);
    }

    #[test]
    fn without_a_report_every_cost_is_zero_whatever_the_clock() {
        let l = EngineLoad::default();
        assert_eq!(l.cost(u64::MAX), 0);
        assert_eq!(l.cost(pick_now()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_older_than_three_intervals_is_ignored() {
        let l = EngineLoad::default();
        assert_eq!(l.cost(now_ms()), 0, "never reported");
        assert!(l.view(now_ms()).is_null());
        // Read 200 ms before it arrived, interval 1 s: fresh for 2.8 s more.
        l.set(&update(50, 0, 0.0, 200), 1000, now_ms());
        assert_eq!(l.cost(now_ms()), 200);
        tokio::time::advance(Duration::from_millis(2_799)).await;
        assert_eq!(l.cost(now_ms()), 200, "2.999 s old: still fresh");
        assert_eq!(l.view(now_ms())["stale"], false);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(l.cost(now_ms()), 0, "3.001 s old: stale");
        let v = l.view(now_ms());
        assert_eq!(
            (v["stale"].clone(), v["waiting"].clone()),
            (true.into(), 50.into())
        );
        assert_eq!(v["engine"], "vllm");
        // A fresh update counts again; the interval it carries decides.
        l.set(&update(2, 4, 0.5, 0), 100, now_ms());
        assert_eq!(l.cost(now_ms()), 8 + 8 + 8);
        tokio::time::advance(Duration::from_millis(301)).await;
        assert_eq!(l.cost(now_ms()), 0, "3 intervals of 100 ms");
        // An update that is already too old on arrival never counts.
        l.set(&update(9, 0, 0.0, 5_000), 1000, now_ms());
        assert_eq!(l.cost(now_ms()), 0);
    }
}
