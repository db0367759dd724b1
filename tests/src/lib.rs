//! Harness for the workspace-level integration tests: the test kit (`multiverse-testkit`), which
//! starts the real binaries (`multiverse-control`, `multiverse-proxy`, `mock-openai`,
//! `mock-tei`) as processes on 127.0.0.1, waits for their readiness signals and kills them when
//! dropped, re-exported under the names the tests use, plus helpers for checking what the mocks
//! answered.
//!
//! The binaries are taken from the target directory of the running test, so run
//! `cargo build --workspace --bins` before `cargo test` (the README's test command does).

pub use multiverse_testkit::*;

pub mod certs;
pub mod raw_http;

/// The checkout under test (the workspace root), found at run time: a target directory shared
/// between clones may run a test binary compiled in another one.
pub fn repo_root() -> std::path::PathBuf {
    multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// FNV-1a 64 of `bytes`, formatted as the mocks report it.
pub fn fnv1a64_hex(bytes: &[u8]) -> String {
    multiverse_mocks::deterministic::hex16(multiverse_mocks::fnv1a64(bytes))
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|d| d.trim().to_string())
        })
        .collect()
}
