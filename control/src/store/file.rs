//! The state file, `<data_dir>/state.toml`: loading and atomic saving.
//!
//! Writes are atomic: a temporary file in the same directory (mode 0600, since it holds
//! upstream API keys), fsync, rename over the old file, fsync of the directory. A state file
//! that cannot be read or parsed stops the start with an error naming it, and is never
//! overwritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::records::{DesiredState, FORMAT_VERSION};

/// A state file problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt (it was left untouched; fix or move it away): {message}"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state file of a data directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("state.toml"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state; a missing file is an empty state, anything unreadable is an error.
    pub fn load(&self) -> Result<DesiredState, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DesiredState {
                    format: FORMAT_VERSION,
                    ..Default::default()
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let state: DesiredState = toml::from_str(&text).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if state.format != FORMAT_VERSION {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                message: format!(
                    "unsupported format {} (expected {FORMAT_VERSION})",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &DesiredState) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let text =
            toml::to_string_pretty(state).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".state.toml.tmp-{}", std::process::id()));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{BackendRecord, PolicySpec};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mv-state-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn missing_file_is_empty_state_and_round_trips() {
        let f = StateFile::new(&dir("rt"));
        assert!(f.load().expect("missing is fine").backends.is_empty());
        let state = DesiredState {
            format: FORMAT_VERSION,
            version_floor: 100,
            backends: vec![BackendRecord::example("b1")],
            instances: Vec::new(),
            keys: Vec::new(),
            policies: BTreeMap::from([(
                "m1".to_string(),
                PolicySpec {
                    lb: Some("round_robin".into()),
                    first_byte_timeout_ms: Some(500),
                    ..Default::default()
                },
            )]),
        };
        f.save(&state).expect("save");
        assert_eq!(f.load().expect("load"), state);
        let mode = std::fs::metadata(f.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_reported_and_left_alone() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).expect("dir");
        let f = StateFile::new(&d);
        std::fs::write(f.path(), "format = 1\n[[backends]]\nid = \"x\"\nname = ").expect("write");
        let before = std::fs::read(f.path()).expect("read");
        let err = f.load().expect_err("corrupt");
        assert!(err.to_string().contains(&f.path().display().to_string()));
        assert_eq!(std::fs::read(f.path()).expect("read"), before);
    }
}
