//! The body of `POST /admin/keys` and `PUT /admin/keys/{id}` (a PUT replaces every setting;
//! the secret stays), its validation, and why a key operation fails.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::{KeyRecord, StateError};

/// Longest name, model name, owner, tag key or value.
const MAX_TEXT: usize = 256;
/// Most models or tags on one key.
const MAX_ITEMS: usize = 256;

/// What an operator sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
    /// Models it may use; empty or absent: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests per minute across the fleet (absent or 0: no limit).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute across the fleet (absent or 0: no limit).
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Requests in flight across the fleet (absent or 0: no limit).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// RFC 3339; absent: never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no inference key `{0}`")]
    NotFound(String),
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// A request that passed validation.
pub struct Valid(KeyRequest);

fn invalid(field: &'static str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field,
        message: message.into(),
    }
}

fn text(field: &'static str, value: &str, required: bool) -> Result<(), KeyError> {
    if required && value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(invalid(field, format!("longer than {MAX_TEXT} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

impl KeyRequest {
    /// Checks every field.
    pub fn validate(mut self) -> Result<Valid, KeyError> {
        text("name", &self.name, true)?;
        text("owner", &self.owner, false)?;
        if self.models.len() > MAX_ITEMS {
            return Err(invalid("models", format!("more than {MAX_ITEMS} models")));
        }
        for m in &self.models {
            text("models", m, true)?;
        }
        self.models.sort();
        self.models.dedup();
        if self.tags.len() > MAX_ITEMS {
            return Err(invalid("tags", format!("more than {MAX_ITEMS} tags")));
        }
        for (k, v) in &self.tags {
            text("tags", k, true)?;
            text("tags", v, false)?;
        }
        if let Some(t) = &self.expires_at {
            if expires_unix_ms(Some(t)).is_none() {
                return Err(invalid(
                    "expires_at",
                    format!("`{t}` is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)"),
                ));
            }
        }
        // 0 means no limit: stored as absent.
        for v in [&mut self.rpm, &mut self.tpm, &mut self.max_concurrent] {
            if *v == Some(0) {
                *v = None;
            }
        }
        Ok(Valid(self))
    }
}

impl Valid {
    /// The record for key `id` with secret hash `sha256`, created at `created_at`.
    pub fn into_record(self, id: String, sha256: String, created_at: String) -> KeyRecord {
        let r = self.0;
        KeyRecord {
            id,
            name: r.name,
            sha256,
            models: r.models,
            rpm: r.rpm,
            tpm: r.tpm,
            max_concurrent: r.max_concurrent,
            expires_at: r.expires_at,
            owner: r.owner,
            tags: r.tags,
            updated_at: created_at.clone(),
            rotated_at: created_at.clone(),
            created_at,
        }
    }
}

/// An RFC 3339 time as milliseconds since the Unix epoch (at least 1); `None` if unparseable.
pub fn expires_unix_ms(t: Option<&str>) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(t?).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(u64::try_from(ms).unwrap_or(u64::MAX).max(1))
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let field = |r: KeyRequest| match r.validate() {
            Err(KeyError::Invalid { field, .. }) => field,
            other => panic!("{:?}", other.map(|_| ())),
        };
        let base = KeyRequest {
            name: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            field(KeyRequest {
                name: " ".into(),
                ..base.clone()
            }),
            "name"
        );
        assert_eq!(
            field(KeyRequest {
                expires_at: Some("tomorrow".into()),
                ..base.clone()
            }),
            "expires_at"
        );
        assert_eq!(
            field(KeyRequest {
                models: vec![String::new()],
                ..base.clone()
            }),
            "models"
        );
        assert!(base.validate().is_ok());
    }
}
