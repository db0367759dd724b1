//! Models' routing policies: how proxies send each model's requests (`lb`, retries, timeouts).
//!
//! A model's policy is layered, field by field, highest first:
//! 1. the API policy (`PUT /admin/models/{name}/policy`, kept in `state.toml`);
//! 2. the config's `[models.<name>]`;
//! 3. the `policy` of the model's backends and instances (a template's when the instance sets
//!    none), in endpoint-id order: the first that sets a field gives it;
//! 4. the proxy's defaults (a field left unset travels as "default").
//!
//! So a model section (or an operator's API call) always wins over what one backend asked for,
//! and deleting the API policy falls back to the config. Changes are persisted through the
//! [`Store`]'s one writer as the inference keys are: the map changes and the record is sent
//! under the lock, the save is awaited after it, and a failed save puts back what the file holds.
//!
//! - [`policy`] — a policy's checks, layering and wire form.

pub mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use policy::{PolicyInvalid, PolicySpec};

use crate::changes::Changes;
use crate::events::{EventBus, EventKind};
use crate::store::{Revisions, SaveFailed, StateError, Store};

/// Why a policy change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("model name must be 1-256 characters without control characters")]
    InvalidModel,
    #[error("{0}")]
    Invalid(#[from] PolicyInvalid),
    #[error("model `{0}` has no policy set through the API")]
    NotFound(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A model's policy as `GET /admin/models/{name}/policy` shows it: the API's and the config's
/// layers, and the two combined (what proxies get before the backends' and instances' own).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    pub model: String,
    /// Set through the API (null: none).
    pub api: Option<PolicySpec>,
    /// `[models.<name>]` in the config (null: none).
    pub config: Option<PolicySpec>,
    /// `api` over `config`, field by field.
    pub policy: PolicySpec,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, PolicySpec>,
    revisions: Revisions,
}

/// Every model's API policy, with the config's `[models]` beside them.
pub struct Policies {
    config: BTreeMap<String, PolicySpec>,
    inner: Mutex<Inner>,
    store: Store,
    changes: Changes,
    events: Option<Arc<EventBus>>,
}

/// 1-256 characters, none a control character (model names are what clients send).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
}

impl Policies {
    /// The persisted API policies and the config's (validated with the config).
    pub fn open(
        config: BTreeMap<String, PolicySpec>,
        store: Store,
        changes: Changes,
        persisted: BTreeMap<String, PolicySpec>,
    ) -> Self {
        Policies {
            config,
            inner: Mutex::new(Inner {
                records: persisted,
                revisions: Revisions::default(),
            }),
            store,
            changes,
            events: None,
        }
    }

    /// Announces changes on `events`.
    pub fn with_events(mut self, events: Arc<EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Layers 1 and 2 of every model that has either.
    pub fn effective(&self) -> BTreeMap<String, PolicySpec> {
        let inner = self.lock();
        let mut out = self.config.clone();
        for (model, api) in &inner.records {
            let lower = out.get(model).cloned().unwrap_or_default();
            out.insert(model.clone(), policy::layer(api, &lower));
        }
        out
    }

    /// A model's layers; None when it has neither an API nor a config policy.
    pub fn get(&self, model: &str) -> Option<PolicyView> {
        let api = self.lock().records.get(model).cloned();
        let config = self.config.get(model).cloned();
        if api.is_none() && config.is_none() {
            return None;
        }
        let policy = policy::layer(
            api.as_ref().unwrap_or(&PolicySpec::default()),
            config.as_ref().unwrap_or(&PolicySpec::default()),
        );
        Some(PolicyView {
            model: model.to_string(),
            api,
            config,
            policy,
        })
    }

    /// Sets (replaces) a model's API policy.
    pub async fn put(&self, model: &str, spec: PolicySpec) -> Result<PolicyView, PolicyError> {
        if !valid_model_name(model) {
            return Err(PolicyError::InvalidModel);
        }
        policy::validate(&spec)?;
        let (rev, saving) = {
            let mut inner = self.lock();
            inner.records.insert(model.to_string(), spec.clone());
            let rev = inner.revisions.begin(model);
            (rev, self.store.put_policy(model, spec))
        };
        self.settle(model, rev, saving.done().await)?;
        self.announce(model, EventKind::PolicyUpdated);
        self.get(model)
            .ok_or_else(|| PolicyError::NotFound(model.to_string()))
    }

    /// Removes a model's API policy (its config policy, if any, applies again).
    pub async fn remove(&self, model: &str) -> Result<(), PolicyError> {
        let (rev, saving) = {
            let mut inner = self.lock();
            if inner.records.remove(model).is_none() {
                return Err(PolicyError::NotFound(model.to_string()));
            }
            let rev = inner.revisions.begin(model);
            (rev, self.store.remove_policy(model))
        };
        self.settle(model, rev, saving.done().await)?;
        self.announce(model, EventKind::PolicyDeleted);
        Ok(())
    }

    fn announce(&self, model: &str, kind: EventKind) {
        if let Some(bus) = &self.events {
            bus.emit_model(model, kind);
        }
    }

    /// After a save: signals the change; a failure puts the file's record back (unless a later
    /// change of the same model decides) and is returned.
    fn settle(
        &self,
        model: &str,
        rev: u64,
        result: Result<(), SaveFailed<Option<PolicySpec>>>,
    ) -> Result<(), StateError> {
        let mut inner = self.lock();
        let latest = inner.revisions.finish(model, rev);
        let Err(SaveFailed { error, durable }) = result else {
            drop(inner);
            self.changes.signal();
            return Ok(());
        };
        tracing::error!(error = %error, model, "could not save the state; the policy change was undone");
        if let (true, Some(durable)) = (latest, durable) {
            match durable {
                Some(p) => {
                    inner.records.insert(model.to_string(), p);
                }
                None => {
                    inner.records.remove(model);
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

    fn policies() -> Policies {
        let config = BTreeMap::from([(
            "m1".to_string(),
            PolicySpec {
                lb: Some("weighted".into()),
                first_byte_timeout_ms: Some(1000),
                ..Default::default()
            },
        )]);
        Policies::open(config, Store::ephemeral(), Changes::new(), BTreeMap::new())
    }

    #[tokio::test]
    async fn the_api_layer_wins_field_by_field_and_deleting_it_restores_the_config() {
        let p = policies();
        let view = p
            .put(
                "m1",
                PolicySpec {
                    lb: Some("round_robin".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("put");
        assert_eq!(view.policy.lb.as_deref(), Some("round_robin"));
        assert_eq!(view.policy.first_byte_timeout_ms, Some(1000), "from config");
        assert_eq!(
            p.effective()["m1"].lb.as_deref(),
            Some("round_robin"),
            "what routes get"
        );
        p.remove("m1").await.expect("remove");
        assert_eq!(p.effective()["m1"].lb.as_deref(), Some("weighted"));
        assert!(matches!(
            p.remove("m1").await,
            Err(PolicyError::NotFound(_))
        ));
        assert!(p.get("m2").is_none());
    }

    #[tokio::test]
    async fn bad_policies_and_names_are_refused_and_nothing_is_stored() {
        let p = policies();
        let bad = PolicySpec {
            lb: Some("fastest".into()),
            ..Default::default()
        };
        assert!(matches!(
            p.put("m2", bad).await,
            Err(PolicyError::Invalid(PolicyInvalid { field: "lb", .. }))
        ));
        assert!(matches!(
            p.put("bad\nname", PolicySpec::default()).await,
            Err(PolicyError::InvalidModel)
        ));
        assert!(p.get("m2").is_none());
    }
}
