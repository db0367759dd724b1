//! The one stack launcher: the mock backends ([`mocks`]), `multiverse-control` ([`control`])
//! and `multiverse-proxy` ([`proxy`]), started as processes on 127.0.0.1 from the binaries of
//! the target directory, their config files written from the binaries' own config types, each
//! waited for by its readiness signal. The integration tests and the benchmarks start their
//! stacks through it.
//!
//! A [`Launch`] says where the binaries are, where configs and logs go, and the children's
//! environment. As everywhere in the kit, `try_*` functions return errors (tools) and the
//! others panic with the child's log (tests, which pass a directory and take the defaults).

pub mod control;
pub mod mocks;
pub mod proxy;

use std::path::{Path, PathBuf};

use crate::binaries::Binaries;
use crate::process::{test_env, Proc};

/// Where a stack's children come from and where their files go.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binaries.
    pub bins: Binaries,
    /// Config files, state and child logs.
    pub dir: PathBuf,
    /// The children's environment (added to this process's).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A launch for a tool: plain info-level child logs (`RUST_LOG=info`, `NO_COLOR=1`).
    pub fn new(bins: Binaries, dir: &Path) -> Self {
        Self {
            bins,
            dir: dir.to_path_buf(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
        }
    }

    /// A test's launch: binaries next to the test executable, the tests' environment
    /// ([`test_env`]), files in `dir`.
    pub fn for_tests(dir: &Path) -> Self {
        Self {
            bins: Binaries::beside_exe(),
            dir: dir.to_path_buf(),
            env: test_env(),
        }
    }

    /// Spawns binary `bin` as `name` with `args` (see [`Proc::try_spawn`]).
    pub fn spawn(
        &self,
        name: &str,
        bin: &str,
        args: &[String],
        pipe_stdout: bool,
    ) -> anyhow::Result<Proc> {
        let path = self.bins.path(bin)?;
        Proc::try_spawn(name, &path, args, &self.env, &self.dir, pipe_stdout)
    }

    /// `<dir>/<file>`.
    pub fn file(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
