//! Inference API keys: the control plane issues them, keeps them (as hashes) and puts them in
//! the route snapshot, and proxies enforce them.
//!
//! A key's secret (`mv-` + 256 random bits from the thread-local CSPRNG, seeded by the OS) is
//! returned once, by creation or rotation; only its SHA-256 is kept in memory, in
//! `state.toml` and in snapshots ([`multiverse_common::keys`] says why an unkeyed hash is
//! enough). Rotation issues a new secret under the same id and invalidates the old one with
//! the next snapshot. Changes are persisted through the [`Store`]'s one writer as the backend
//! registry does: the map changes and the record is sent under the lock, the save is awaited
//! after it, and a failed save puts back what the file holds.
//!
//! - [`spec`] — the request body, its validation and the errors;
//! - [`leases`] — fleet-wide limits: each connected proxy's share of each key's limits.

pub mod leases;
pub mod spec;

use std::collections::BTreeMap;
use std::sync::Mutex;

use multiverse_common::keys::{hash_from_hex, hash_secret, secret_from, to_hex, SECRET_BYTES};
use multiverse_proto::discovery::v1 as pb;
use serde::{Deserialize, Serialize};

pub use spec::{KeyError, KeyRequest};

use crate::changes::Changes;
use crate::store::{KeyRecord, Revisions, SaveFailed, Saving, StateError, Store};

/// `[inference_auth] mode`: whether proxies fed by this control plane require keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may send inference requests (the default: the demo stays zero-config).
    #[default]
    Open,
    /// Every inference request needs one of this control plane's keys.
    Keys,
}

/// The `[inference_auth]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
}

/// A key as the API shows it: never the secret, never its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub expires_at: Option<String>,
    pub expired: bool,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub rotated_at: String,
}

impl KeyView {
    fn of(r: &KeyRecord) -> Self {
        KeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            models: r.models.clone(),
            rpm: r.rpm,
            tpm: r.tpm,
            max_concurrent: r.max_concurrent,
            expires_at: r.expires_at.clone(),
            expired: spec::expires_unix_ms(r.expires_at.as_deref())
                .is_some_and(|at| at <= spec::now_unix_ms()),
            owner: r.owner.clone(),
            tags: r.tags.clone(),
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            rotated_at: r.rotated_at.clone(),
        }
    }
}

/// A key just issued: the secret, shown this once, and the key.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub id: String,
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, KeyRecord>,
    revisions: Revisions,
}

/// Every inference key of this control plane, by id.
pub struct Keys {
    mode: AuthMode,
    inner: Mutex<Inner>,
    store: Store,
    changes: Changes,
}

struct Pending {
    id: String,
    rev: u64,
    saving: Saving<Option<KeyRecord>>,
}

/// A new secret and its hash (hex).
fn new_secret() -> (String, String) {
    let random: [u8; SECRET_BYTES] = rand::random();
    let secret = secret_from(&random);
    let hash = to_hex(&hash_secret(secret.as_bytes()));
    (secret, hash)
}

impl Keys {
    /// The persisted keys, in `mode`.
    pub fn open(mode: AuthMode, store: Store, changes: Changes, persisted: Vec<KeyRecord>) -> Self {
        let records = persisted.into_iter().map(|k| (k.id.clone(), k)).collect();
        Keys {
            mode,
            inner: Mutex::new(Inner {
                records,
                revisions: Revisions::default(),
            }),
            store,
            changes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn list(&self) -> Vec<KeyView> {
        self.lock().records.values().map(KeyView::of).collect()
    }

    pub fn get(&self, id: &str) -> Option<KeyView> {
        self.lock().records.get(id).map(KeyView::of)
    }

    /// What proxies enforce: the mode and every key's hash and limits.
    pub fn snapshot(&self) -> pb::InferenceAuth {
        let inner = self.lock();
        let keys = inner
            .records
            .values()
            .filter_map(|r| {
                Some(pb::ApiKey {
                    id: r.id.clone(),
                    sha256: hash_from_hex(&r.sha256)?.to_vec(),
                    models: r.models.clone(),
                    rpm: r.rpm.unwrap_or(0),
                    tpm: r.tpm.unwrap_or(0),
                    max_concurrent: r.max_concurrent.unwrap_or(0),
                    expires_at_unix_ms: spec::expires_unix_ms(r.expires_at.as_deref()).unwrap_or(0),
                })
            })
            .collect();
        pb::InferenceAuth {
            require_keys: self.mode == AuthMode::Keys,
            keys,
        }
    }

    /// Issues a key for `req`.
    pub async fn create(&self, req: KeyRequest) -> Result<Issued, KeyError> {
        let valid = req.validate()?;
        let (secret, sha256) = new_secret();
        let now = multiverse_common::time::now_rfc3339();
        let n: u64 = rand::random();
        let record = valid.into_record(format!("key-{n:016x}"), sha256, now);
        let view = KeyView::of(&record);
        let pending = {
            let mut inner = self.lock();
            inner.records.insert(record.id.clone(), record.clone());
            self.send(&mut inner, &record.id)
        };
        self.settle(pending).await?;
        tracing::info!(id = %view.id, name = %view.name, "inference key created");
        Ok(Issued {
            id: view.id.clone(),
            key: secret,
            view,
        })
    }

    /// Replaces a key's settings (the secret stays).
    pub async fn update(&self, id: &str, req: KeyRequest) -> Result<KeyView, KeyError> {
        let valid = req.validate()?;
        let (view, pending) = {
            let mut inner = self.lock();
            let current = inner
                .records
                .get(id)
                .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
            let mut record = valid.into_record(
                current.id.clone(),
                current.sha256.clone(),
                current.created_at.clone(),
            );
            record.rotated_at = current.rotated_at.clone();
            record.updated_at = multiverse_common::time::now_rfc3339();
            let view = KeyView::of(&record);
            inner.records.insert(id.to_string(), record);
            (view, self.send(&mut inner, id))
        };
        self.settle(pending).await?;
        Ok(view)
    }

    /// Issues a new secret for `id`; the old one stops working with the next snapshot.
    pub async fn rotate(&self, id: &str) -> Result<Issued, KeyError> {
        let (secret, sha256) = new_secret();
        let (view, pending) = {
            let mut inner = self.lock();
            let record = inner
                .records
                .get_mut(id)
                .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
            let now = multiverse_common::time::now_rfc3339();
            record.sha256 = sha256;
            record.rotated_at = now.clone();
            record.updated_at = now;
            let view = KeyView::of(record);
            (view, self.send(&mut inner, id))
        };
        self.settle(pending).await?;
        tracing::info!(id = %id, "inference key rotated");
        Ok(Issued {
            id: view.id.clone(),
            key: secret,
            view,
        })
    }

    /// Revokes a key.
    pub async fn remove(&self, id: &str) -> Result<(), KeyError> {
        let pending = {
            let mut inner = self.lock();
            if inner.records.remove(id).is_none() {
                return Err(KeyError::NotFound(id.to_string()));
            }
            self.send(&mut inner, id)
        };
        self.settle(pending).await?;
        tracing::info!(id = %id, "inference key revoked");
        Ok(())
    }

    /// Sends the persisted form of `id` to the writer (under the lock: in the map's order).
    fn send(&self, inner: &mut Inner, id: &str) -> Pending {
        let rev = inner.revisions.begin(id);
        let saving = match inner.records.get(id) {
            Some(r) => self.store.put_key(r.clone()),
            None => self.store.remove_key(id),
        };
        Pending {
            id: id.to_string(),
            rev,
            saving,
        }
    }

    /// Awaits a save with no lock held; a failure puts the file's record back (unless a later
    /// change of the same key decides) and is returned.
    async fn settle(&self, pending: Pending) -> Result<(), StateError> {
        let result = pending.saving.done().await;
        let mut inner = self.lock();
        let latest = inner.revisions.finish(&pending.id, pending.rev);
        let Err(SaveFailed { error, durable }) = result else {
            drop(inner);
            self.changes.signal();
            return Ok(());
        };
        tracing::error!(error = %error, key = %pending.id, "could not save the state; the change was undone");
        if let (true, Some(durable)) = (latest, durable) {
            match durable {
                Some(record) => {
                    inner.records.insert(pending.id.clone(), record);
                }
                None => {
                    inner.records.remove(&pending.id);
                }
            }
        }
        drop(inner);
        self.changes.signal();
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::open(
            AuthMode::Keys,
            Store::ephemeral(),
            Changes::new(),
            Vec::new(),
        )
    }

    fn req(name: &str) -> KeyRequest {
        KeyRequest {
            name: name.into(),
            models: vec!["demo".into()],
            rpm: Some(60),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn secrets_are_shown_once_and_only_hashes_travel() {
        let k = keys();
        let issued = k.create(req("team-a")).await.expect("created");
        assert!(issued.key.starts_with("mv-") && issued.key.len() == 67);
        let listed = serde_json::to_string(&k.list()).expect("json");
        assert!(!listed.contains(&issued.key[3..]), "{listed}");
        let snap = k.snapshot();
        assert!(snap.require_keys);
        assert_eq!(snap.keys.len(), 1);
        assert_eq!(
            snap.keys[0].sha256,
            hash_secret(issued.key.as_bytes()).to_vec()
        );
        assert_eq!((snap.keys[0].rpm, snap.keys[0].tpm), (60, 0));
        let hex = to_hex(&hash_secret(issued.key.as_bytes()));
        assert!(
            !listed.contains(&hex),
            "the API never shows the hash either"
        );
    }

    #[tokio::test]
    async fn rotation_replaces_the_hash_and_removal_revokes() {
        let k = keys();
        let first = k.create(req("a")).await.expect("created");
        let second = k.rotate(&first.id).await.expect("rotated");
        assert_eq!(first.id, second.id);
        assert_ne!(first.key, second.key);
        let snap = k.snapshot();
        assert_eq!(
            snap.keys[0].sha256,
            hash_secret(second.key.as_bytes()).to_vec()
        );
        assert!(matches!(
            k.rotate("key-none").await,
            Err(KeyError::NotFound(_))
        ));
        k.remove(&first.id).await.expect("removed");
        assert!(k.snapshot().keys.is_empty());
        assert!(matches!(
            k.remove(&first.id).await,
            Err(KeyError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn updates_keep_the_secret_and_validate() {
        let k = keys();
        let issued = k.create(req("a")).await.expect("created");
        let mut change = req("a2");
        change.rpm = None;
        change.expires_at = Some("2000-01-01T00:00:00Z".into());
        let view = k.update(&issued.id, change).await.expect("updated");
        assert_eq!(
            (view.name.as_str(), view.rpm, view.expired),
            ("a2", None, true)
        );
        assert_eq!(
            k.snapshot().keys[0].sha256,
            hash_secret(issued.key.as_bytes()).to_vec()
        );
        assert_eq!(k.snapshot().keys[0].expires_at_unix_ms, 946_684_800_000);
        let bad = KeyRequest {
            name: String::new(),
            ..Default::default()
        };
        assert!(matches!(
            k.update(&issued.id, bad).await,
            Err(KeyError::Invalid { .. })
        ));
    }
}
