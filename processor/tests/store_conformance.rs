//! The `Store` contract, checked against every implementation: the in-memory store and Redis
//! (a real server at `DURABLE_REDIS_URL`, default `redis://127.0.0.1:6379`; the Redis tests fail
//! loudly if it does not answer — `scripts/services` starts one).

use std::sync::Arc;

use durable_processor::store::{CommitOutcome, MemoryStore, RedisStore, Store, TimerEntry, Write};

fn write(id: &str, expected: Option<u64>, blob: &str, timers: &[(i64, &str)]) -> Write {
    Write {
        id: id.into(),
        expected,
        blob: blob.as_bytes().to_vec(),
        timers: timers.iter().map(|(at, e)| TimerEntry { fire_at: *at, envelope: e.as_bytes().to_vec() }).collect(),
    }
}

fn etag(outcome: CommitOutcome) -> u64 {
    match outcome {
        CommitOutcome::Committed { etag } => etag,
        CommitOutcome::Conflict => panic!("expected a commit, got a conflict"),
    }
}

async fn compare_and_set<S: Store>(store: &S) {
    let p = 3;
    let ids = vec!["entity:Counter:a".to_string()];
    assert_eq!(store.load(p, &ids).await.unwrap(), vec![None]);
    let first = etag(store.commit(p, vec![write(&ids[0], None, "v1", &[])]).await.unwrap()[0]);
    // A second creator loses.
    assert_eq!(store.commit(p, vec![write(&ids[0], None, "other", &[])]).await.unwrap(), [CommitOutcome::Conflict]);
    let loaded = store.load(p, &ids).await.unwrap()[0].clone().unwrap();
    assert_eq!((loaded.blob.as_slice(), loaded.etag), (&b"v1"[..], first));
    let second = etag(store.commit(p, vec![write(&ids[0], Some(first), "v2", &[])]).await.unwrap()[0]);
    assert_ne!(first, second);
    // A writer that computed from the old etag loses, and nothing changes.
    assert_eq!(
        store.commit(p, vec![write(&ids[0], Some(first), "stale", &[])]).await.unwrap(),
        [CommitOutcome::Conflict]
    );
    assert_eq!(store.load(p, &ids).await.unwrap()[0].as_ref().unwrap().blob, b"v2");
}

async fn batches_have_one_outcome_per_write<S: Store>(store: &S) {
    let p = 1;
    let ids: Vec<String> = ["x", "y", "z"].iter().map(|k| format!("entity:E:{k}")).collect();
    store.commit(p, vec![write(&ids[1], None, "y0", &[])]).await.unwrap();
    let outcomes = store
        .commit(
            p,
            vec![
                write(&ids[0], None, "x1", &[]),
                write(&ids[1], None, "y1", &[(10, "lost-timer")]),
                write(&ids[2], None, "z1", &[]),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(
        outcomes[..],
        [CommitOutcome::Committed { .. }, CommitOutcome::Conflict, CommitOutcome::Committed { .. }]
    ));
    let loaded = store.load(p, &ids).await.unwrap();
    let blobs: Vec<&[u8]> = loaded.iter().map(|s| s.as_ref().unwrap().blob.as_slice()).collect();
    assert_eq!(blobs, [&b"x1"[..], b"y0", b"z1"]);
    assert_eq!(store.timer_backlog(p).await.unwrap(), (None, 0), "a conflicting write parks no timers");
}

async fn timers_are_released_in_seq_order_and_re_released_until_acknowledged<S: Store>(store: &S) {
    let p = 7;
    store
        .commit(p, vec![write("orch:O:o", None, "b", &[(200, "late"), (100, "early"), (300, "latest")])])
        .await
        .unwrap();
    assert_eq!(store.timer_backlog(p).await.unwrap(), (Some(100), 3));
    let first = store.claim_due_timers(p, 150, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].fire_at, first[0].envelope.as_slice()), (100, &b"early"[..]));
    // Not acknowledged (a crash): the same timer comes back with the same seq.
    let again = store.claim_due_timers(p, 150, 10).await.unwrap();
    assert_eq!(again, first);
    let more = store.claim_due_timers(p, 250, 10).await.unwrap();
    assert_eq!(more.iter().map(|t| t.envelope.as_slice()).collect::<Vec<_>>(), [&b"early"[..], b"late"]);
    assert!(more[0].seq < more[1].seq);
    store.ack_timers(p, more[0].seq).await.unwrap();
    let rest = store.claim_due_timers(p, 250, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].envelope, b"late");
    store.ack_timers(p, rest[0].seq).await.unwrap();
    assert!(store.claim_due_timers(p, 250, 10).await.unwrap().is_empty());
    assert_eq!(store.timer_backlog(p).await.unwrap(), (Some(300), 1));
    // `max` bounds the release queue.
    let bounded = store.claim_due_timers(p, 1_000, 0).await.unwrap();
    assert!(bounded.is_empty());
    let last = store.claim_due_timers(p, 1_000, 10).await.unwrap();
    assert!(last[0].seq > rest[0].seq, "seqs keep increasing");
}

/// Many tasks, one shared store handle: optimistic retry loops never lose an update.
async fn concurrent_writers_never_lose_updates<S: Store>(store: Arc<S>) {
    let p = 0;
    let id = "entity:Counter:contended".to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..50 {
                loop {
                    let current = store.load(p, std::slice::from_ref(&id)).await.unwrap().remove(0);
                    let value: u64 = current.as_ref().map_or(0, |s| String::from_utf8_lossy(&s.blob).parse().unwrap());
                    let w = Write {
                        id: id.clone(),
                        expected: current.map(|s| s.etag),
                        blob: (value + 1).to_string().into_bytes(),
                        timers: vec![],
                    };
                    match store.commit(p, vec![w]).await.unwrap()[0] {
                        CommitOutcome::Committed { .. } => break,
                        CommitOutcome::Conflict => conflicts += 1,
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let final_value = store.load(p, &[id]).await.unwrap().remove(0).unwrap();
    assert_eq!(String::from_utf8_lossy(&final_value.blob), "400", "({conflicts} conflicts retried)");
}

/// Fencing: a fenced commit writes only while its epoch is the partition's latest; plain
/// commits and other partitions are not affected.
async fn fenced_commits_fail_once_a_newer_owner_fenced<S: Store>(store: &S) {
    let p = 5;
    let id = "orchestration:Hello:f".to_string();
    let old = store.fence(p).await.unwrap();
    let v1 = etag(store.commit_fenced(p, old, vec![write(&id, None, "v1", &[(10, "t1")])]).await.unwrap()[0]);
    let new = store.fence(p).await.unwrap();
    assert!(new > old, "epochs go up: {old} then {new}");
    // The old owner's write loses even with the right etag, and parks no timer.
    let stale =
        store.commit_fenced(p, old, vec![write(&id, Some(v1), "zombie", &[(5, "t2")]), write("x", None, "x", &[])]);
    assert_eq!(stale.await.unwrap(), [CommitOutcome::Conflict, CommitOutcome::Conflict]);
    assert_eq!(store.load(p, std::slice::from_ref(&id)).await.unwrap()[0].as_ref().unwrap().blob, b"v1");
    assert_eq!(store.timer_backlog(p).await.unwrap(), (Some(10), 1));
    // The new owner's writes land, fenced or not; the etag check still applies.
    let v2 = etag(store.commit_fenced(p, new, vec![write(&id, Some(v1), "v2", &[])]).await.unwrap()[0]);
    assert_eq!(
        store.commit_fenced(p, new, vec![write(&id, Some(v1), "v3", &[])]).await.unwrap(),
        [CommitOutcome::Conflict]
    );
    etag(store.commit(p, vec![write(&id, Some(v2), "v3", &[])]).await.unwrap()[0]);
    // Another partition has its own epochs.
    let other = store.fence(p + 1).await.unwrap();
    etag(store.commit_fenced(p + 1, other, vec![write("entity:Counter:f", None, "1", &[])]).await.unwrap()[0]);
    assert!(store.commit_fenced(p, new, Vec::new()).await.unwrap().is_empty());
}

/// The deployment secret: the first one offered is kept; later offers get it back.
async fn the_first_deployment_secret_offered_is_kept<S: Store>(store: &S) {
    assert_eq!(store.deployment_secret(b"first-secret-of-sixteen".to_vec()).await.unwrap(), b"first-secret-of-sixteen");
    assert_eq!(
        store.deployment_secret(b"second-secret-of-sixteen".to_vec()).await.unwrap(),
        b"first-secret-of-sixteen"
    );
}

mod memory {
    use super::*;
    #[tokio::test]
    async fn the_first_deployment_secret_offered_is_kept() {
        super::the_first_deployment_secret_offered_is_kept(&MemoryStore::new()).await
    }

    #[tokio::test]
    async fn fenced_commits_fail_once_a_newer_owner_fenced() {
        super::fenced_commits_fail_once_a_newer_owner_fenced(&MemoryStore::new()).await
    }

    #[tokio::test]
    async fn compare_and_set() {
        super::compare_and_set(&MemoryStore::new()).await
    }
    #[tokio::test]
    async fn batches_have_one_outcome_per_write() {
        super::batches_have_one_outcome_per_write(&MemoryStore::new()).await
    }
    #[tokio::test]
    async fn timers_are_released_in_seq_order_and_re_released_until_acknowledged() {
        super::timers_are_released_in_seq_order_and_re_released_until_acknowledged(&MemoryStore::new()).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_never_lose_updates() {
        super::concurrent_writers_never_lose_updates(Arc::new(MemoryStore::new())).await
    }
}

mod redis {
    use super::*;

    async fn store() -> RedisStore {
        let url = std::env::var("DURABLE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("durable-test-{}-{nanos}", std::process::id());
        RedisStore::connect(&url, &prefix).await.unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn compare_and_set() {
        super::compare_and_set(&store().await).await
    }
    #[tokio::test]
    async fn batches_have_one_outcome_per_write() {
        super::batches_have_one_outcome_per_write(&store().await).await
    }
    #[tokio::test]
    async fn timers_are_released_in_seq_order_and_re_released_until_acknowledged() {
        super::timers_are_released_in_seq_order_and_re_released_until_acknowledged(&store().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_never_lose_updates() {
        super::concurrent_writers_never_lose_updates(Arc::new(store().await)).await
    }

    #[tokio::test]
    async fn fenced_commits_fail_once_a_newer_owner_fenced() {
        super::fenced_commits_fail_once_a_newer_owner_fenced(&store().await).await
    }

    #[tokio::test]
    async fn the_first_deployment_secret_offered_is_kept() {
        super::the_first_deployment_secret_offered_is_kept(&store().await).await
    }

    #[tokio::test]
    async fn keys_carry_the_partition_as_a_cluster_hash_tag() {
        let s = store().await;
        let key = s.state_key(17, "entity:Account:a");
        assert!(key.contains(":{p17}:s:entity:Account:a"), "{key}");
    }

    #[tokio::test]
    async fn an_unreachable_server_says_what_to_do() {
        let err = RedisStore::connect("redis://127.0.0.1:1", "x").await.unwrap_err();
        assert!(err.to_string().contains("cannot reach Redis at redis://127.0.0.1:1"), "{err}");
        assert!(err.to_string().contains("DURABLE_REDIS_URL"), "{err}");
    }
}
