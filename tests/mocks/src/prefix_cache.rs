//! `mock-openai`'s simulated prefix (KV) cache: per instance an LRU of prompt-prefix keys, so a
//! request whose prefix this instance served recently is a hit (faster time to first token,
//! `--ttft-hit-ms`) and any other a miss (`--ttft-ms`), as with vLLM's / SGLang's automatic
//! prefix caching.
//!
//! The key is the mock's own, computed independently of any proxy: FNV-1a of the first chat
//! message as serde_json writes it back (role and content: the system prompt when there is
//! one), or of a completion's `prompt`. Simple and honest: an engine hits on the shared leading
//! tokens, and in the tests and benches the shared part is the first message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::deterministic::fnv1a64;

/// The LRU and its counters.
#[derive(Debug)]
pub struct PrefixCache {
    capacity: usize,
    /// Most recently used last.
    keys: Mutex<VecDeque<u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// `prefix_cache` in `/mock/stats`.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct PrefixCacheStats {
    /// `--prefix-cache-entries` (0: no cache, every request a miss).
    pub capacity: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
}

/// The cache key of a chat / completion request body, if it has a prefix.
pub fn prefix_key(body: &Value) -> Option<u64> {
    let prefix = match body.get("messages") {
        Some(Value::Array(messages)) => messages.first()?,
        _ => body.get("prompt")?,
    };
    serde_json::to_vec(prefix).ok().map(|b| fnv1a64(&b))
}

impl PrefixCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            keys: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Looks `key` up (a hit moves it to the front), inserting it on a miss; true on a hit.
    pub fn touch(&self, key: u64) -> bool {
        let hit = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            match keys.iter().position(|k| *k == key) {
                Some(i) => {
                    keys.remove(i);
                    keys.push_back(key);
                    true
                }
                None => {
                    if self.capacity > 0 {
                        if keys.len() >= self.capacity {
                            keys.pop_front();
                        }
                        keys.push_back(key);
                    }
                    false
                }
            }
        };
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn stats(&self) -> PrefixCacheStats {
        let entries = self.keys.lock().map_or(0, |k| k.len()) as u64;
        PrefixCacheStats {
            capacity: self.capacity as u64,
            entries,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lru_hits_evicts_the_oldest_and_counts() {
        let c = PrefixCache::new(2);
        assert!(!c.touch(1));
        assert!(!c.touch(2));
        assert!(c.touch(1), "1 is cached");
        assert!(!c.touch(3), "evicts 2, the least recently used");
        assert!(!c.touch(2));
        assert!(c.touch(3));
        assert_eq!(
            c.stats(),
            PrefixCacheStats {
                capacity: 2,
                entries: 2,
                hits: 2,
                misses: 4
            }
        );
        let none = PrefixCache::new(0);
        assert!(!none.touch(1) && !none.touch(1), "no cache: always a miss");
    }

    #[test]
    fn keys_by_the_first_message_or_the_prompt() {
        let a = json!({"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "1"}]});
        let b = json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "2"}], "model": "m"});
        let c = json!({"messages": [{"role": "system", "content": "T"}]});
        assert_eq!(prefix_key(&a), prefix_key(&b));
        assert_ne!(prefix_key(&a), prefix_key(&c));
        assert!(prefix_key(&json!({"prompt": "p"})).is_some());
        assert_eq!(prefix_key(&json!({"messages": []})), None);
        assert_eq!(prefix_key(&json!({"input": "x"})), None);
    }
}
