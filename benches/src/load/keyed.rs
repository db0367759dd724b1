//! The keys-mode routes of `bench --only keys` and `request-cost --targets proxy-keys`: the
//! open routes plus an `[auth]` table in `keys` mode of [`KEYS`] keys, one of them
//! [`BENCH_KEY`] with an rpm limit high enough never to refuse, so a request carrying it runs
//! the whole key path (hash, lookup, limit cell, `x-ratelimit-*` headers).

use multiverse_common::keys::{hash_secret, to_hex};
use multiverse_proxy::sources::standalone::{AuthEntry, KeyEntry, RoutesFile};

use super::scenario::BENCH_KEY;

/// Keys in the keyed table.
pub const KEYS: usize = 1000;

/// The bench key's requests per minute: limited (the GCRA cell and the headers run) but never
/// reached.
pub const BENCH_KEY_RPM: u32 = 1_000_000_000;

/// `open` with the keys-mode `[auth]` table.
pub fn keyed_routes(open: &RoutesFile) -> RoutesFile {
    let mut file = open.clone();
    let mut keys: Vec<KeyEntry> = (1..KEYS)
        .map(|i| KeyEntry {
            id: format!("other-{i}"),
            sha256: to_hex(&hash_secret(format!("mv-other-{i}").as_bytes())),
            ..Default::default()
        })
        .collect();
    keys.push(KeyEntry {
        id: "bench".into(),
        sha256: to_hex(&hash_secret(BENCH_KEY.as_bytes())),
        rpm: BENCH_KEY_RPM,
        ..Default::default()
    });
    file.auth = Some(AuthEntry {
        mode: "keys".into(),
        keys,
    });
    file
}
