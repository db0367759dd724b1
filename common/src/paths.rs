//! Where a crate's own files are while its tests run: the checkout being tested, which is not
//! always the one the test binary was compiled in (a target directory shared between clones
//! reuses binaries whose `env!("CARGO_MANIFEST_DIR")` names a clone that may be gone).

use std::path::PathBuf;

/// The crate directory: `CARGO_MANIFEST_DIR` as cargo sets it when it runs the test, else
/// `compiled` (pass `env!("CARGO_MANIFEST_DIR")`).
pub fn manifest_dir(compiled: &'static str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(compiled), PathBuf::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cargo_test_sets_the_crate_directory() {
        let dir = super::manifest_dir("/nonexistent");
        assert!(dir.join("Cargo.toml").is_file(), "{}", dir.display());
        assert!(dir.join("src/paths.rs").is_file());
    }
}
