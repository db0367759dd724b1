//! Where the workspace binaries a test or benchmark starts are found: next to the running
//! executable (`target/<profile>/`, also for a test in `target/<profile>/deps/`), in a directory
//! given on a command line, or one by one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};

/// `mock-openai` (tests/mocks).
pub const MOCK_OPENAI: &str = "mock-openai";
/// `mock-tei` (tests/mocks).
pub const MOCK_TEI: &str = "mock-tei";
/// The data plane.
pub const PROXY: &str = "multiverse-proxy";
/// The control plane.
pub const CONTROL: &str = "multiverse-control";

/// The binaries a run uses, looked up when asked for (so a missing one is named when needed).
#[derive(Debug, Clone, Default)]
pub struct Binaries {
    /// Where to look; `None`: next to the running executable.
    dir: Option<PathBuf>,
    /// Binaries given one by one, by name.
    chosen: BTreeMap<String, PathBuf>,
}

impl Binaries {
    /// The binaries next to the running executable (the same target directory).
    pub fn beside_exe() -> Self {
        Self::default()
    }

    /// The binaries in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            chosen: BTreeMap::new(),
        }
    }

    /// Uses `path` for the binary `name`.
    pub fn with(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.chosen.insert(name.to_string(), path.into());
        self
    }

    /// The path of binary `name`; fails, naming the build command, if it is not there.
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = match (self.chosen.get(name), &self.dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join(name),
            (None, None) => return try_bin(name),
        };
        if !path.is_file() {
            bail!("{} not found", path.display());
        }
        Ok(path)
    }

    /// Fails unless every one of `names` is there (to fail before starting anything).
    pub fn check(&self, names: &[&str]) -> anyhow::Result<()> {
        for name in names {
            self.path(name)?;
        }
        Ok(())
    }
}

/// A workspace binary next to the running executable; fails, naming the build command, if it
/// is not there.
pub fn try_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace binaries first \
             (`cargo build --workspace --bins`, with --release for a release run)",
            path.display()
        );
    }
    Ok(path)
}

/// [`try_bin`]; panics with the fix if the binary was not built.
pub fn bin(name: &str) -> PathBuf {
    try_bin(name).unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn missing_binaries_are_named() {
        let err = try_bin("no-such-binary").unwrap_err().to_string();
        assert!(
            err.contains("no-such-binary") && err.contains("cargo build --workspace --bins"),
            "{err}"
        );
        let dir = std::env::temp_dir();
        let err = Binaries::in_dir(&dir).path("no-such-binary").unwrap_err();
        assert!(err.to_string().contains("no-such-binary"), "{err}");
        let sh = Binaries::in_dir(&dir)
            .with("sh", "/bin/sh")
            .path("sh")
            .unwrap();
        assert_eq!(sh, Path::new("/bin/sh"));
        assert!(Binaries::beside_exe().check(&["no-such-binary"]).is_err());
    }
}
