//! The registry: conflicts, limits, persistence, and roll-back of failed saves.

use super::*;
use crate::changes::Changes;
use crate::health::Status;
use crate::store::StateFile;
use std::sync::Arc;

fn ok() -> CheckResult {
    CheckResult {
        at: "t".into(),
        ok: true,
        latency_ms: 1,
        status: Some(200),
        reason: None,
    }
}

fn dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mv-reg-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

fn open(dir: &std::path::Path, max: usize) -> Registry {
    let (store, state) = Store::open(StateFile::new(dir)).expect("open");
    Registry::open(store, Changes::new(), state.backends, &[], max)
}

#[tokio::test]
async fn insert_conflicts_limits_and_persistence() {
    let dir = dir("insert");
    let s = HealthSettings::default();
    let reg = open(&dir, 2);
    let a = reg
        .insert(BackendRecord::example("a"), ok(), &s)
        .await
        .expect("insert a");
    assert_eq!(a.health.status, Status::Healthy);
    assert!(a.has_api_key);
    assert!(matches!(
        reg.insert(BackendRecord::example("a"), ok(), &s).await,
        Err(RegistryError::Exists(_))
    ));
    reg.insert(BackendRecord::example("b"), ok(), &s)
        .await
        .expect("insert b");
    assert!(matches!(
        reg.insert(BackendRecord::example("c"), ok(), &s).await,
        Err(RegistryError::MaxReached(2))
    ));
    // Reopening restores both with their ids.
    let again = open(&dir, 2);
    let ids: Vec<_> = again.list().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, vec!["bk-a".to_string(), "bk-b".to_string()]);
    again.remove("bk-a").await.expect("remove");
    assert_eq!(again.routable().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn failed_saves_roll_back_every_mutation() {
    let dir = dir("rollback");
    let s = HealthSettings::default();
    let reg = open(&dir, 8);
    reg.insert(BackendRecord::example("a"), ok(), &s)
        .await
        .expect("insert a");
    // From now on the state file cannot be written: its directory is a regular file.
    std::fs::remove_dir_all(&dir).expect("rm");
    std::fs::write(&dir, "not a directory").expect("file");

    let err = reg.insert(BackendRecord::example("b"), ok(), &s).await;
    assert!(matches!(err, Err(RegistryError::State(_))), "{err:?}");
    assert!(reg.get("bk-b").is_none(), "the insert was undone");

    let mut changed = BackendRecord::example("a");
    changed.weight = 9;
    let err = reg.update(changed, ok(), &s).await;
    assert!(matches!(err, Err(RegistryError::State(_))), "{err:?}");
    assert_eq!(
        reg.record("bk-a").expect("kept").weight,
        1,
        "the update was undone"
    );

    let err = reg.remove("bk-a").await;
    assert!(matches!(err, Err(RegistryError::State(_))), "{err:?}");
    assert!(reg.get("bk-a").is_some(), "the removal was undone");
    assert_eq!(reg.routable().len(), 1);

    // Writable again: what is in memory is what a restart finds.
    std::fs::remove_file(&dir).expect("rm");
    reg.insert(BackendRecord::example("c"), ok(), &s)
        .await
        .expect("insert c");
    let again = open(&dir, 8);
    let ids: Vec<_> = again.list().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, ["bk-a", "bk-c"]);
    assert_eq!(again.record("bk-a").expect("a").weight, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_reach_the_file_in_the_order_of_the_map() {
    let dir = dir("order");
    let s = HealthSettings::default();
    let reg = Arc::new(open(&dir, 8));
    reg.insert(BackendRecord::example("a"), ok(), &s)
        .await
        .expect("insert a");
    let updates = (1..=20).map(|w| {
        let reg = reg.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let mut r = BackendRecord::example("a");
            r.weight = w;
            reg.update(r, ok(), &s).await.expect("update");
        })
    });
    for u in futures::future::join_all(updates).await {
        u.expect("task");
    }
    let in_memory = reg.record("bk-a").expect("a").weight;
    let again = open(&dir, 8);
    assert_eq!(again.record("bk-a").expect("a").weight, in_memory);
    let _ = std::fs::remove_dir_all(&dir);
}
