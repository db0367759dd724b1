//! Inference API keys in the routing table: who may send requests, to which models, within
//! which limits. A key is found by the SHA-256 of the presented secret in one hash-map lookup
//! (the secret itself is never held: snapshots and routes files carry hashes only). Runtime
//! state ([`KeyState`], the limits' counters) is kept by key id across table versions, like an
//! endpoint's.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::HeaderValue;
use multiverse_common::keys::KeyHash;
use serde::Serialize;

use crate::routing::limits::KeyState;

/// One key as the proxy enforces it (shown in `/config_dump` without its hash).
#[derive(Debug, Serialize)]
pub struct ApiKey {
    pub id: String,
    /// Models it may use; empty: every model.
    pub models: Vec<String>,
    /// Requests per minute (0: none).
    pub rpm: u32,
    /// Tokens per minute (0: none).
    pub tpm: u32,
    pub max_concurrent: u32,
    /// Milliseconds since the Unix epoch from which it is refused (0: never).
    pub expires_at_unix_ms: u64,
    /// Shown as this proxy's `lease` of the limits (null until the owning plane sent one).
    #[serde(rename = "lease", serialize_with = "lease")]
    pub state: Arc<KeyState>,
    /// `rpm` and `tpm` as `x-ratelimit-limit-*` values, made once with the table rather than
    /// per response.
    #[serde(skip)]
    pub rpm_value: HeaderValue,
    #[serde(skip)]
    pub tpm_value: HeaderValue,
}

fn lease<S: serde::Serializer>(state: &Arc<KeyState>, s: S) -> Result<S::Ok, S::Error> {
    state.lease_view().serialize(s)
}

impl ApiKey {
    /// A key with `state` (its limits' values made now).
    pub fn new(spec: &KeySpec, state: Arc<KeyState>) -> Self {
        ApiKey {
            id: spec.id.clone(),
            models: spec.models.clone(),
            rpm: spec.rpm,
            tpm: spec.tpm,
            max_concurrent: spec.max_concurrent,
            expires_at_unix_ms: spec.expires_at_unix_ms,
            state,
            rpm_value: HeaderValue::from(spec.rpm),
            tpm_value: HeaderValue::from(spec.tpm),
        }
    }

    /// Whether it may use `model`.
    #[inline]
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Whether it has expired at `unix_ms`.
    #[inline]
    pub fn expired(&self, unix_ms: u64) -> bool {
        self.expires_at_unix_ms != 0 && unix_ms >= self.expires_at_unix_ms
    }
}

/// A key from a snapshot, before it gets runtime state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub id: String,
    pub hash: KeyHash,
    pub models: Vec<String>,
    pub rpm: u32,
    pub tpm: u32,
    pub max_concurrent: u32,
    pub expires_at_unix_ms: u64,
}

/// One plane's validated key settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaneAuth {
    pub require_keys: bool,
    pub keys: Vec<KeySpec>,
}

/// SHA-256 output is uniform: its first eight bytes are a perfect hash already, so the map
/// does not hash it again.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its 32 bytes (no length prefix for arrays).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

type ByHash = HashMap<KeyHash, Arc<ApiKey>, BuildHasherDefault<PrefixHasher>>;

/// Every key the proxy accepts, and whether one is required.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Some control plane (or the routes file) is in `keys` mode.
    pub required: bool,
    by_hash: ByHash,
}

impl KeySet {
    /// The keys of every plane (a plane requiring keys makes them required; the first plane,
    /// by id, wins a hash two planes share). `states` keeps each key's counters by id across
    /// versions; entries of keys that are gone are dropped.
    pub fn merge<'a>(
        planes: impl Iterator<Item = &'a PlaneAuth>,
        states: &mut HashMap<String, Arc<KeyState>>,
    ) -> KeySet {
        let mut set = KeySet::default();
        let mut live = HashMap::new();
        for plane in planes {
            set.required |= plane.require_keys;
            for k in &plane.keys {
                if set.by_hash.contains_key(&k.hash) {
                    continue;
                }
                let state = states.get(&k.id).cloned().unwrap_or_default();
                live.insert(k.id.clone(), state.clone());
                set.by_hash.insert(k.hash, Arc::new(ApiKey::new(k, state)));
            }
        }
        *states = live;
        set
    }

    /// The key whose secret hashes to `hash`.
    #[inline]
    pub fn get(&self, hash: &KeyHash) -> Option<&Arc<ApiKey>> {
        self.by_hash.get(hash)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl Serialize for KeySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let by_id: BTreeMap<&str, &ApiKey> = self
            .by_hash
            .values()
            .map(|k| (k.id.as_str(), k.as_ref()))
            .collect();
        let mut st = s.serialize_struct("KeySet", 2)?;
        st.serialize_field("required", &self.required)?;
        st.serialize_field("keys", &by_id.values().collect::<Vec<_>>())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multiverse_common::keys::hash_secret;

    fn spec(id: &str, secret: &str) -> KeySpec {
        KeySpec {
            id: id.into(),
            hash: hash_secret(secret.as_bytes()),
            models: vec![],
            rpm: 0,
            tpm: 0,
            max_concurrent: 0,
            expires_at_unix_ms: 0,
        }
    }

    #[test]
    fn planes_merge_and_states_survive_versions() {
        let a = PlaneAuth {
            require_keys: false,
            keys: vec![spec("k1", "mv-one")],
        };
        let b = PlaneAuth {
            require_keys: true,
            keys: vec![spec("k2", "mv-two"), spec("dup", "mv-one")],
        };
        let mut states = HashMap::new();
        let set = KeySet::merge([&a, &b].into_iter(), &mut states);
        assert!(set.required, "one plane in keys mode is enough");
        assert_eq!(set.len(), 2);
        let k1 = set.get(&hash_secret(b"mv-one")).expect("k1");
        assert_eq!(k1.id, "k1", "the first plane wins a shared hash");
        assert!(set.get(&hash_secret(b"mv-three")).is_none());
        k1.state
            .in_flight
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let again = KeySet::merge([&a].into_iter(), &mut states);
        let k1 = again.get(&hash_secret(b"mv-one")).expect("k1");
        assert_eq!(
            k1.state
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(states.len(), 1, "k2's state is dropped");
        let dump = serde_json::to_string(&again).expect("json");
        assert!(dump.contains("\"k1\"") && !dump.contains("hash"), "{dump}");
    }

    #[test]
    fn models_and_expiry() {
        let k = ApiKey::new(
            &KeySpec {
                models: vec!["a".into()],
                expires_at_unix_ms: 1000,
                ..spec("k", "mv-k")
            },
            Arc::default(),
        );
        assert!(k.allows("a") && !k.allows("b"));
        assert!(!k.expired(999) && k.expired(1000));
    }
}
