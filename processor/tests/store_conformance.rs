//! The `Store` contract, checked against every implementation: the in-memory store, Redis (a real
//! server at `DURABLE_REDIS_URL`, default `redis://127.0.0.1:6379`) and a Redis Cluster (three
//! masters from `DURABLE_REDIS_CLUSTER_URL`, default `redis://127.0.0.1:7000`). The Redis tests
//! fail loudly if their server does not answer — `scripts/services` starts both.

use std::sync::Arc;

use durable_processor::store::{CommitOutcome, Continuity, Indexed, MemoryStore, RedisStore, Store, TimerEntry, Write};

fn write(id: &str, expected: Option<u64>, blob: &str, timers: &[(i64, &str)]) -> Write {
    Write {
        append: false,
        id: id.into(),
        expected,
        blob: blob.as_bytes().to_vec(),
        timers: timers.iter().map(|(at, e)| TimerEntry { fire_at: *at, envelope: e.as_bytes().to_vec() }).collect(),
        index: None,
        expire: None,
    }
}

/// A write of `id` in `group` (`<kind>:<name>|<status>`), its entry `<status>|<id>`.
fn indexed(id: &str, expected: Option<u64>, group: &str) -> Write {
    let mut w = write(id, expected, group, &[]);
    let (type_name, status) = group.split_once('|').expect("a group");
    w.index = Some(Indexed { type_name: type_name.into(), status: status.into(), entry: format!("{status}|{id}") });
    w
}

/// A write of `id` in `group` that changed at `at`: its entry `<status>|1|0|<at>|[]`.
fn changed(id: &str, expected: Option<u64>, group: &str, at: i64) -> Write {
    let mut w = indexed(id, expected, group);
    let status = group.split_once('|').expect("a group").1;
    w.index.as_mut().expect("indexed").entry = format!("{status}|1|0|{at}|[]");
    w
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
                        append: false,
                        id: id.clone(),
                        expected: current.map(|s| s.etag),
                        blob: (value + 1).to_string().into_bytes(),
                        timers: vec![],
                        index: None,
                        expire: None,
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
/// The applied mark only goes up, a new owner learns it with its epoch, and the rule for lost
/// state follows from it.
async fn the_applied_mark_only_goes_up_and_tells_a_new_owner_what_was_lost<S: Store>(store: &S) {
    let p = 5;
    let fresh = store.take(p).await.unwrap();
    assert_eq!((fresh.applied, fresh.known), (None, false));
    assert_eq!(fresh.check(None), Continuity::Whole, "nothing committed in Kafka: nothing to lose");
    assert_eq!(fresh.check(Some(0)), Continuity::Whole);
    assert_eq!(fresh.check(Some(10)), Continuity::Lost, "Kafka processed records the store never saw");
    let known = store.take(p).await.unwrap();
    assert!(known.epoch > fresh.epoch && known.known);
    assert_eq!(known.check(Some(10)), Continuity::Adopt, "a partition from before applied marks is adopted");
    let committed = store.commit_applied(p, None, 7, vec![write("entity:E:m", None, "b", &[])]).await.unwrap();
    assert!(matches!(committed.as_deref(), Ok([CommitOutcome::Committed { .. }])), "{committed:?}");
    store.mark_applied(p, Some(7), 3).await.unwrap().unwrap();
    assert_eq!(store.take(p).await.unwrap().applied, Some(7), "the mark never goes down");
    store.commit_applied(p, Some(7), 12, Vec::new()).await.unwrap().unwrap();
    store.mark_applied(p, None, 9).await.unwrap().unwrap();
    let taken = store.take(p).await.unwrap();
    assert_eq!(taken.applied, Some(12), "a commit with no writes raises the mark too");
    assert_eq!(taken.check(Some(12)), Continuity::Whole);
    assert_eq!(taken.check(Some(11)), Continuity::Whole, "the store may be ahead of Kafka's commit");
    assert_eq!(taken.check(Some(13)), Continuity::Lost);
    // An owner that raised the mark to 12 finds it lower (the store lost writes under it):
    // nothing is written.
    let blob = "entity:E:after-the-loss";
    assert_eq!(
        store.commit_applied(p, Some(20), 25, vec![write(blob, None, "b", &[])]).await.unwrap(),
        Err(Some(12)),
        "a commit over a mark below its floor is refused"
    );
    assert_eq!(store.load(p, &[blob.to_string()]).await.unwrap(), vec![None], "and writes nothing");
    assert_eq!(store.mark_applied(p, Some(20), 25).await.unwrap(), Err(Some(12)));
    assert_eq!(store.take(p).await.unwrap().applied, Some(12), "the mark stays where it was");
}

/// A loss is accepted only once recorded, and the acceptance is used up once.
async fn a_loss_is_accepted_only_once_recorded<S: Store>(store: &S) {
    let p = 6;
    assert!(!store.accept_loss(p).await.unwrap(), "nothing recorded: an acceptance never waits for a future loss");
    assert!(!store.loss_accepted(p).await.unwrap());
    store.record_loss(p).await.unwrap();
    assert!(!store.loss_accepted(p).await.unwrap(), "recorded, not yet accepted");
    assert!(store.accept_loss(p).await.unwrap());
    assert!(store.loss_accepted(p).await.unwrap());
    assert!(!store.loss_accepted(p).await.unwrap(), "used up");
    assert!(!store.accept_loss(p).await.unwrap(), "the record is used up too");
}

async fn the_first_deployment_secret_offered_is_kept<S: Store>(store: &S) {
    let (first, second) = (b"first-secret-of-sixteen".to_vec(), b"second-secret-of-sixteen".to_vec());
    let secrets = store.deployment_secret(first.clone(), None).await.unwrap();
    assert_eq!((secrets.current, secrets.accepted), (first.clone(), vec![first.clone()]));
    // A second processor offers its own: it gets the first to seal with, and what it offered
    // but never sealed with is not accepted.
    let secrets = store.deployment_secret(second.clone(), None).await.unwrap();
    assert_eq!((secrets.current, secrets.accepted), (first.clone(), vec![first.clone()]));
    // A processor that sealed with another (kept before the store lost it) has it accepted.
    let secrets = store.deployment_secret(first.clone(), Some(second.clone())).await.unwrap();
    assert_eq!(secrets.current, first);
    assert_eq!(secrets.accepted, vec![first.clone(), second.clone()]);
    let again = store.deployment_secret(first.clone(), Some(first.clone())).await.unwrap();
    assert_eq!(again.accepted, vec![first, second], "the same list, asked again");
}

/// The index follows the committed writes: entries in id order after a given id, within a
/// prefix; counts move with an instance's group; a conflicting write changes nothing; a write
/// without an entry leaves the index as it is; partitions are separate.
async fn the_index_lists_in_id_order_and_counts_by_group<S: Store>(store: &S) {
    let p = 5;
    let mut etags = std::collections::BTreeMap::new();
    for (id, group) in [
        ("orch:Approval:a2", "orch:Approval|running"),
        ("orch:Approval:a1", "orch:Approval|running"),
        ("entity:Counter:c1", "entity:Counter|active"),
        ("orch:ApprovalX:z", "orch:ApprovalX|running"),
        ("orch:Hello:h1", "orch:Hello|completed"),
    ] {
        etags.insert(id, etag(store.commit(p, vec![indexed(id, None, group)]).await.unwrap()[0]));
    }
    let ids = |page: Vec<(String, String)>| page.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list(p, "", None, 100).await.unwrap()),
        ["entity:Counter:c1", "orch:Approval:a1", "orch:Approval:a2", "orch:ApprovalX:z", "orch:Hello:h1"]
    );
    assert_eq!(
        ids(store.list(p, "orch:Approval:", None, 100).await.unwrap()),
        ["orch:Approval:a1", "orch:Approval:a2"]
    );
    assert_eq!(
        ids(store.list(p, "orch:Approval:", Some("orch:Approval:a1"), 100).await.unwrap()),
        ["orch:Approval:a2"]
    );
    assert_eq!(
        ids(store.list(p, "orch:", Some("entity:zzz"), 2).await.unwrap()),
        ["orch:Approval:a1", "orch:Approval:a2"]
    );
    assert_eq!(ids(store.list(p, "", Some("orch:Hello:h1"), 100).await.unwrap()), Vec::<String>::new());
    let page = store.list(p, "entity:", None, 1).await.unwrap();
    assert_eq!(page[0].1, "active|entity:Counter:c1");
    assert!(store.list(p + 1, "", None, 100).await.unwrap().is_empty(), "partitions are separate");
    let counts =
        |c: Vec<(String, u64)>| c.into_iter().filter(|(_, n)| *n > 0).collect::<std::collections::BTreeMap<_, _>>();
    assert_eq!(counts(store.counts(p).await.unwrap())["orch:Approval|running"], 2);
    // a1 completes: it moves between counts; a write of a2 in the same group counts once.
    let a1 = etag(
        store
            .commit(p, vec![indexed("orch:Approval:a1", Some(etags["orch:Approval:a1"]), "orch:Approval|completed")])
            .await
            .unwrap()[0],
    );
    store
        .commit(p, vec![indexed("orch:Approval:a2", Some(etags["orch:Approval:a2"]), "orch:Approval|running")])
        .await
        .unwrap();
    // A conflicting write and a write without an entry change nothing in the index.
    let stale = indexed("orch:Approval:a1", Some(etags["orch:Approval:a1"]), "orch:Approval|failed");
    assert_eq!(store.commit(p, vec![stale]).await.unwrap(), [CommitOutcome::Conflict]);
    store.commit(p, vec![write("orch:Approval:a1", Some(a1), "x", &[])]).await.unwrap();
    let c = counts(store.counts(p).await.unwrap());
    assert_eq!((c["orch:Approval|running"], c["orch:Approval|completed"]), (1, 1));
    assert_eq!((c.get("orch:Approval|failed"), c["orch:Hello|completed"], c.len()), (None, 1, 5));
    let a1_summary = store.list(p, "orch:Approval:a1", None, 1).await.unwrap().remove(0).1;
    assert_eq!(a1_summary, "completed|orch:Approval:a1", "a write without an entry keeps the last one");
}

/// The index lists by most recent change too: newest first, ties at one ms by id descending,
/// paged from where the last page ended; a change moves an instance to the front, an emptied
/// record leaves.
async fn the_index_lists_most_recently_changed_first<S: Store>(store: &S) {
    let p = 7;
    let mut etags = std::collections::BTreeMap::new();
    for (id, at) in [("orch:A:a", 100), ("orch:A:b", 300), ("orch:A:c", 200), ("orch:A:d", 200), ("orch:A:e", 200)] {
        etags.insert(id, etag(store.commit(p, vec![changed(id, None, "orch:A|running", at)]).await.unwrap()[0]));
    }
    let page = |page: Vec<(i64, String, String)>| page.into_iter().map(|(at, id, _)| (at, id)).collect::<Vec<_>>();
    let want = |items: &[(i64, &str)]| items.iter().map(|(at, id)| (*at, id.to_string())).collect::<Vec<_>>();
    assert_eq!(
        page(store.recent(p, None, 10).await.unwrap()),
        want(&[(300, "orch:A:b"), (200, "orch:A:e"), (200, "orch:A:d"), (200, "orch:A:c"), (100, "orch:A:a")])
    );
    assert_eq!(page(store.recent(p, None, 2).await.unwrap()), want(&[(300, "orch:A:b"), (200, "orch:A:e")]));
    assert_eq!(
        page(store.recent(p, Some((200, "orch:A:e")), 2).await.unwrap()),
        want(&[(200, "orch:A:d"), (200, "orch:A:c")])
    );
    assert_eq!(page(store.recent(p, Some((200, "orch:A:c")), 10).await.unwrap()), want(&[(100, "orch:A:a")]));
    assert!(store.recent(p, Some((100, "orch:A:a")), 10).await.unwrap().is_empty());
    assert!(store.recent(p + 1, None, 10).await.unwrap().is_empty(), "partitions are separate");
    // a changes again; b is emptied.
    store.commit(p, vec![changed("orch:A:a", Some(etags["orch:A:a"]), "orch:A|completed", 400)]).await.unwrap();
    let mut tomb = write("orch:A:b", Some(etags["orch:A:b"]), "tombstone", &[]);
    tomb.expire = Some(60_000);
    store.commit(p, vec![tomb]).await.unwrap();
    let now = store.recent(p, None, 10).await.unwrap();
    assert_eq!(
        now[0],
        (400, "orch:A:a".to_owned(), "completed|1|0|400|[]".to_owned()),
        "moved to the front, entry new"
    );
    assert_eq!(page(now).len(), 4, "the emptied record left, the changed one is listed once");
}

/// A write with `expire` takes the instance out of the index and its count; written again, it
/// is back.
async fn an_emptied_record_leaves_the_index<S: Store>(store: &S) {
    let p = 6;
    let e1 = etag(store.commit(p, vec![indexed("orch:Hello:e1", None, "orch:Hello|completed")]).await.unwrap()[0]);
    store.commit(p, vec![indexed("orch:Hello:e2", None, "orch:Hello|completed")]).await.unwrap();
    let mut tomb = write("orch:Hello:e1", Some(e1), "tombstone", &[]);
    tomb.expire = Some(60_000);
    let e1 = etag(store.commit(p, vec![tomb]).await.unwrap()[0]);
    let ids: Vec<String> = store.list(p, "", None, 100).await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["orch:Hello:e2"]);
    let count = |c: Vec<(String, u64)>, g: &str| c.into_iter().find(|(group, _)| group == g).map_or(0, |(_, n)| n);
    assert_eq!(count(store.counts(p).await.unwrap(), "orch:Hello|completed"), 1);
    let kept = store.load(p, &["orch:Hello:e1".to_owned()]).await.unwrap().remove(0).expect("kept until it expires");
    assert_eq!((kept.blob.as_slice(), kept.etag), (&b"tombstone"[..], e1));
    // An emptied record written again while empty stays out; filled again, it is back.
    let mut again = write("orch:Hello:e1", Some(e1), "tombstone", &[]);
    again.expire = Some(60_000);
    let e1 = etag(store.commit(p, vec![again]).await.unwrap()[0]);
    assert_eq!(count(store.counts(p).await.unwrap(), "orch:Hello|completed"), 1);
    store.commit(p, vec![indexed("orch:Hello:e1", Some(e1), "orch:Hello|running")]).await.unwrap();
    let c = store.counts(p).await.unwrap();
    assert_eq!((count(c.clone(), "orch:Hello|running"), count(c, "orch:Hello|completed")), (1, 1));
    assert_eq!(store.list(p, "", None, 100).await.unwrap().len(), 2);
}

/// An appending write puts its blob after the stored one (an orchestration's delta frames); the
/// next whole write replaces all of it; a conflicting append changes nothing.
async fn appends_follow_the_stored_blob_until_a_whole_write<S: Store>(store: &S) {
    let p = 5;
    let id = "orch:Hello:appended".to_string();
    let append = |expected: u64, blob: &str| Write { append: true, ..write(&id, Some(expected), blob, &[]) };
    let first = etag(store.commit(p, vec![write(&id, None, "base", &[])]).await.unwrap()[0]);
    let second = etag(store.commit(p, vec![append(first, "+d1")]).await.unwrap()[0]);
    let third = etag(store.commit(p, vec![append(second, "+d2")]).await.unwrap()[0]);
    assert_eq!(store.commit(p, vec![append(second, "+stale")]).await.unwrap(), [CommitOutcome::Conflict]);
    let loaded = store.load(p, std::slice::from_ref(&id)).await.unwrap()[0].clone().unwrap();
    assert_eq!((loaded.blob.as_slice(), loaded.etag), (&b"base+d1+d2"[..], third));
    let fourth = etag(store.commit(p, vec![write(&id, Some(third), "whole", &[])]).await.unwrap()[0]);
    let loaded = store.load(p, std::slice::from_ref(&id)).await.unwrap()[0].clone().unwrap();
    assert_eq!((loaded.blob.as_slice(), loaded.etag), (&b"whole"[..], fourth));
    etag(store.commit(p, vec![append(fourth, "+d3")]).await.unwrap()[0]);
    assert_eq!(store.load(p, std::slice::from_ref(&id)).await.unwrap()[0].as_ref().unwrap().blob, b"whole+d3");
}

/// The contract's tests for one implementation: `$store` makes a fresh store.
macro_rules! contract_tests {
    ($store:expr) => {
        #[tokio::test]
        async fn compare_and_set() {
            super::compare_and_set(&$store).await
        }
        #[tokio::test]
        async fn batches_have_one_outcome_per_write() {
            super::batches_have_one_outcome_per_write(&$store).await
        }
        #[tokio::test]
        async fn timers_are_released_in_seq_order_and_re_released_until_acknowledged() {
            super::timers_are_released_in_seq_order_and_re_released_until_acknowledged(&$store).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_writers_never_lose_updates() {
            super::concurrent_writers_never_lose_updates(Arc::new($store)).await
        }
        #[tokio::test]
        async fn fenced_commits_fail_once_a_newer_owner_fenced() {
            super::fenced_commits_fail_once_a_newer_owner_fenced(&$store).await
        }
        #[tokio::test]
        async fn the_first_deployment_secret_offered_is_kept() {
            super::the_first_deployment_secret_offered_is_kept(&$store).await
        }
        #[tokio::test]
        async fn the_applied_mark_only_goes_up_and_tells_a_new_owner_what_was_lost() {
            super::the_applied_mark_only_goes_up_and_tells_a_new_owner_what_was_lost(&$store).await
        }
        #[tokio::test]
        async fn the_index_lists_in_id_order_and_counts_by_group() {
            super::the_index_lists_in_id_order_and_counts_by_group(&$store).await
        }
        #[tokio::test]
        async fn the_index_lists_most_recently_changed_first() {
            super::the_index_lists_most_recently_changed_first(&$store).await
        }
        #[tokio::test]
        async fn an_emptied_record_leaves_the_index() {
            super::an_emptied_record_leaves_the_index(&$store).await
        }
        #[tokio::test]
        async fn appends_follow_the_stored_blob_until_a_whole_write() {
            super::appends_follow_the_stored_blob_until_a_whole_write(&$store).await
        }
        #[tokio::test]
        async fn a_loss_is_accepted_only_once_recorded() {
            super::a_loss_is_accepted_only_once_recorded(&$store).await
        }
    };
}

mod memory {
    use super::*;
    contract_tests!(MemoryStore::new());
}

mod redis {
    use super::*;
    contract_tests!(store().await);

    fn url() -> String {
        std::env::var("DURABLE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    async fn store() -> RedisStore {
        store_and_prefix().await.0
    }

    async fn store_and_prefix() -> (RedisStore, String) {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("durable-test-{}-{nanos}", std::process::id());
        (RedisStore::connect(&url(), &prefix).await.unwrap_or_else(|e| panic!("{e}")), prefix)
    }

    async fn redis_connection() -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Redis restarted empty or rolled back: etags, timer seqs and epochs handed out afterwards
    /// are still larger than any handed out before.
    #[tokio::test]
    async fn counters_stay_ahead_of_a_rollback() {
        let (s, prefix) = store_and_prefix().await;
        let p = 2;
        let id = "entity:E:r".to_string();
        let e1 = etag(s.commit(p, vec![write(&id, None, "v1", &[(5, "t1")])]).await.unwrap()[0]);
        let seq1 = s.claim_due_timers(p, 10, 10).await.unwrap()[0].seq;
        let epoch1 = s.take(p).await.unwrap().epoch;
        // Roll back: every key of the prefix goes back to before these writes (here: gone).
        let mut conn = redis_connection().await;
        let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
        let _: () = ::redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        let e2 = etag(s.commit(p, vec![write(&id, None, "v1 again", &[(5, "t2")])]).await.unwrap()[0]);
        assert!(e2 > e1, "a new etag ({e2}) repeats none from before the rollback ({e1})");
        let seq2 = s.claim_due_timers(p, 10, 10).await.unwrap()[0].seq;
        assert!(seq2 > seq1, "a new timer seq ({seq2}) repeats none from before ({seq1})");
        let taken = s.take(p).await.unwrap();
        assert!(taken.epoch > epoch1, "a new epoch ({}) is above every earlier one ({epoch1})", taken.epoch);
        assert!(!taken.known, "the rolled-back partition looks new");
    }

    /// A partition indexed by a version without the recent index gets it when it is taken.
    #[tokio::test]
    async fn taking_a_partition_fills_a_missing_recent_index() {
        let (s, prefix) = store_and_prefix().await;
        let p = 3;
        for (id, at) in [("orch:A:x", 5), ("orch:A:y", 9)] {
            s.commit(p, vec![changed(id, None, "orch:A|running", at)]).await.unwrap();
        }
        let mut conn = redis_connection().await;
        let _: () = ::redis::cmd("DEL").arg(format!("{prefix}:{{p{p}}}:recent")).query_async(&mut conn).await.unwrap();
        assert!(s.recent(p, None, 10).await.unwrap().is_empty(), "as an older version left it");
        s.take(p).await.unwrap();
        let ids: Vec<(i64, String)> =
            s.recent(p, None, 10).await.unwrap().into_iter().map(|(at, id, _)| (at, id)).collect();
        assert_eq!(ids, [(9, "orch:A:y".to_owned()), (5, "orch:A:x".to_owned())]);
    }

    /// A mark that is not a number (written by hand) counts as none: a new owner sees no mark,
    /// and an owner with a floor finds its state lost; no script fails on it.
    #[tokio::test]
    async fn a_mark_that_is_not_a_number_counts_as_none() {
        let (s, prefix) = store_and_prefix().await;
        let p = 4;
        let mut conn = redis_connection().await;
        let _: () = ::redis::cmd("SET")
            .arg(format!("{prefix}:{{p{p}}}:applied"))
            .arg("garbage")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(s.take(p).await.unwrap().applied, None);
        assert_eq!(
            s.commit_applied(p, Some(5), 9, vec![write("entity:E:g", None, "b", &[])]).await.unwrap(),
            Err(None)
        );
        assert_eq!(s.mark_applied(p, Some(5), 9).await.unwrap(), Err(None));
        s.mark_applied(p, None, 9).await.unwrap().unwrap();
        assert_eq!(s.take(p).await.unwrap().applied, Some(9), "raising it repairs it");
    }

    /// An emptied record's key expires; a record written again does not.
    #[tokio::test]
    async fn an_emptied_record_expires_and_a_filled_one_stays() {
        let s = store().await;
        let p = 7;
        let ttl = |key: String| async move {
            let ttl: i64 = ::redis::cmd("PTTL").arg(key).query_async(&mut redis_connection().await).await.unwrap();
            ttl
        };
        let gone = etag(s.commit(p, vec![indexed("entity:C:gone", None, "entity:C|active")]).await.unwrap()[0]);
        let back = etag(s.commit(p, vec![indexed("entity:C:back", None, "entity:C|active")]).await.unwrap()[0]);
        let mut w = write("entity:C:gone", Some(gone), "empty", &[]);
        w.expire = Some(300);
        let mut v = write("entity:C:back", Some(back), "empty", &[]);
        v.expire = Some(300);
        let etags = s.commit(p, vec![w, v]).await.unwrap();
        let back = etag(etags[1]);
        assert!((1..=300).contains(&ttl(s.state_key(p, "entity:C:gone")).await));
        s.commit(p, vec![indexed("entity:C:back", Some(back), "entity:C|active")]).await.unwrap();
        assert_eq!(ttl(s.state_key(p, "entity:C:back")).await, -1, "written again: it no longer expires");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let loaded = s.load(p, &["entity:C:gone".to_owned(), "entity:C:back".to_owned()]).await.unwrap();
        assert!(loaded[0].is_none() && loaded[1].is_some(), "{loaded:?}");
        let ids: Vec<String> = s.list(p, "", None, 10).await.unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["entity:C:back"]);
    }

    /// The appended deltas live in the instance's tail key until the next whole write deletes it,
    /// so nothing is left behind; an emptied record's tail goes with it.
    #[tokio::test]
    async fn a_whole_write_deletes_the_tail_key() {
        let s = store().await;
        let p = 9;
        let id = "orch:Hello:tail";
        let exists = |key: String| async move {
            let n: i64 = ::redis::cmd("EXISTS").arg(key).query_async(&mut redis_connection().await).await.unwrap();
            n
        };
        let first = etag(s.commit(p, vec![write(id, None, "base", &[])]).await.unwrap()[0]);
        let second =
            etag(s.commit(p, vec![Write { append: true, ..write(id, Some(first), "+d", &[]) }]).await.unwrap()[0]);
        assert_eq!(exists(s.tail_key(p, id)).await, 1);
        let mut emptied = write(id, Some(second), "empty", &[]);
        emptied.expire = Some(300);
        s.commit(p, vec![emptied]).await.unwrap();
        assert_eq!(exists(s.tail_key(p, id)).await, 0, "the whole write took the tail away");
        assert_eq!(s.load(p, &[id.to_owned()]).await.unwrap()[0].as_ref().unwrap().blob, b"empty");
    }

    #[tokio::test]
    async fn the_servers_settings_are_reported() {
        let health = store().await.health().await;
        // scripts/services starts the test Redis without persistence and without eviction.
        assert_eq!(health.appendonly, Some(false), "{health:?}");
        assert_eq!(health.maxmemory_policy.as_deref(), Some("noeviction"), "{health:?}");
        assert!(!health.durable() && !health.evicts(), "{health:?}");
        assert_eq!(health.replicas, Some(0), "{health:?}");
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

mod cluster {
    use super::*;
    contract_tests!(store().await);

    async fn store() -> RedisStore {
        let seeds = std::env::var("DURABLE_REDIS_CLUSTER_URL").unwrap_or_else(|_| "redis://127.0.0.1:7000".into());
        let seeds: Vec<&str> = seeds.split(',').collect();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("durable-test-{}-{nanos}", std::process::id());
        RedisStore::connect_cluster(&seeds, &prefix, None).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every partition's keys land in one slot, and the partitions spread over the masters.
    #[tokio::test]
    async fn partitions_spread_over_the_masters() {
        let s = store().await;
        let mut conn =
            ::redis::Client::open("redis://127.0.0.1:7000").unwrap().get_multiplexed_async_connection().await.unwrap();
        let mut slots = std::collections::BTreeSet::new();
        for p in 0..32 {
            let state: i64 = ::redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(s.state_key(p, "entity:A:x"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let other: i64 = ::redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(s.state_key(p, "orch:B:y"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(state, other, "one slot per partition");
            slots.insert(state / (16384 / 3 + 1));
        }
        assert_eq!(slots.len(), 3, "32 partitions use every master's slot range");
    }

    #[tokio::test]
    async fn unreachable_nodes_say_what_to_do() {
        let err = RedisStore::connect_cluster(&["redis://127.0.0.1:1"], "x", None).await.unwrap_err();
        assert!(err.to_string().contains("cannot reach the Redis Cluster at redis://127.0.0.1:1"), "{err}");
    }
}
