//! Directories for one test's or one run's files (configs, state, child logs): [`temp_dir`]
//! keeps them for inspection after a test, [`ScratchDir`] removes them when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;

static N: AtomicUsize = AtomicUsize::new(0);

fn fresh(prefix: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A fresh directory `<tmp>/multiverse-test-<pid>-<n>-<tag>` for one test's files and child
/// logs (kept afterwards, so a failure can be looked into); panics if it cannot be made.
pub fn temp_dir(tag: &str) -> PathBuf {
    fresh("multiverse-test", tag).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A scratch directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/multiverse-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        Ok(Self {
            path: fresh("multiverse", tag)?,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
