//! Configuration files: one TOML reader for every config struct, and one error type whose
//! messages name the file and the key (`invalid config file /etc/p.toml: `listen.clients`: ...`).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration problem, naming the file (when there is one) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of the config struct. `key` is the dotted path of the value
    /// that failed (`listen.clients`, `backends[0].url`), or the table holding an unknown key.
    #[error("invalid config file {path}: {}{message}", .key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        key: Option<String>,
        message: String,
    },
    /// A value that parsed but failed validation.
    #[error("invalid config{}: `{key}`: {message}", .path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// A validation error for `key` in the file at `path` (`None`: defaults and flags only).
    pub fn invalid(
        path: Option<&Path>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key the error is about, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// Reads and parses the TOML file at `path` (validation is the caller's next step, after
/// command-line flags are applied).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses TOML `text` that was read from `path` (named in errors).
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let parse_error = |key: Option<String>, message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error(None, e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // "." is the document itself: nothing more specific to name.
        let key = (key != ".").then_some(key);
        parse_error(key, e.into_inner().to_string())
    })
}

/// This machine's host name, for default node and control-plane ids (`None` when unknown).
pub fn hostname() -> Option<String> {
    hostname_from(std::fs::read_to_string("/proc/sys/kernel/hostname"))
}

fn hostname_from(read: std::io::Result<String>) -> Option<String> {
    read.ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        name: String,
        listen: Listen,
        backends: Vec<Backend>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Listen {
        port: u16,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Backend {
        url: String,
    }

    fn parse_sample(text: &str) -> Result<Sample, ConfigError> {
        parse(text, Path::new("/etc/s.toml"))
    }

    #[test]
    fn parses_any_deserializable_struct() {
        let s = parse_sample("name = \"a\"\n[listen]\nport = 80\n[[backends]]\nurl = \"u\"\n")
            .expect("valid");
        assert_eq!(s.name, "a");
        assert_eq!(s.listen.port, 80);
        assert_eq!(s.backends[0].url, "u");
    }

    #[test]
    fn type_errors_name_file_and_dotted_key() {
        let e = parse_sample("[listen]\nport = \"eighty\"\n").unwrap_err();
        assert_eq!(e.key(), Some("listen.port"));
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid config file /etc/s.toml: `listen.port`: "),
            "{msg}"
        );
        let e = parse_sample("[[backends]]\nurl = 5\n").unwrap_err();
        assert_eq!(e.key(), Some("backends[0].url"));
        // A missing required field is reported at its table.
        let e = parse_sample("[[backends]]\n").unwrap_err();
        assert_eq!(e.key(), Some("backends[0]"));
        assert!(e.to_string().contains("missing field `url`"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_in_full() {
        let e = parse_sample("[listen]\nprot = 1\n").unwrap_err();
        assert_eq!(e.key(), Some("listen.prot"));
        assert!(e.to_string().contains("unknown field `prot`"), "{e}");
        let e = parse_sample("nmae = 1\n").unwrap_err();
        assert_eq!(e.key(), Some("nmae"));
        let msg = e.to_string();
        // toml's own message (with the line it points at) follows the key.
        assert!(
            msg.starts_with("invalid config file /etc/s.toml: `nmae`: TOML parse error at line 1")
                && msg.contains("unknown field `nmae`"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let msg = parse_sample("[listen\n").unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid config file /etc/s.toml: "),
            "{msg}"
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_missing() {
        let dir = std::env::temp_dir().join(format!("mv-common-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "name = \"from-file\"\n").expect("write");
        let s: Sample = load(&path).expect("loads");
        assert_eq!(s.name, "from-file");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let e = load::<Sample>(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read config file {}: ", path.display())),
            "{e}"
        );
    }

    #[test]
    fn validation_errors_name_file_and_key() {
        let e = ConfigError::invalid(Some(Path::new("/etc/s.toml")), "listen.port", "must be > 0");
        assert_eq!(
            e.to_string(),
            "invalid config file /etc/s.toml: `listen.port`: must be > 0"
        );
        let e = ConfigError::invalid(None, "listen.port", "must be > 0");
        assert_eq!(e.to_string(), "invalid config: `listen.port`: must be > 0");
        assert_eq!(e.key(), Some("listen.port"));
    }

    #[test]
    fn hostname_is_trimmed_and_never_empty() {
        assert_eq!(hostname_from(Ok("gpu-7\n".into())), Some("gpu-7".into()));
        assert_eq!(hostname_from(Ok(" \n".into())), None);
        assert_eq!(
            hostname_from(Err(std::io::ErrorKind::NotFound.into())),
            None
        );
    }
}
