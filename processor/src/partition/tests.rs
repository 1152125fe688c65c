//! The partition core driven by hand, step by step, with the memory store: the call order and
//! the protocol's rules, each shown on the smallest group that exercises it.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use durable_schemas::contract::dead_letter;
use durable_schemas::{Envelope, Event, Payload};

use super::*;
use crate::examples;
use crate::registry::Registry;
use crate::store::{MemoryStore, ReleasedTimer, Store};

fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store answers at once"),
    }
}

const NOW: i64 = 1_700_000_000_000;

fn settings(local_rounds: usize) -> Settings {
    Settings {
        partition: 0,
        partitions: 1,
        events_topic: "t.events".into(),
        max_event_bytes: 4096,
        spread_activities: local_rounds == 0,
        local_rounds,
        defer_local: true,
        cache_limit: 100,
        cache_bytes: Settings::CACHE_BYTES,
        live_limit: Settings::LIVE_LIMIT,
        check_live: true,
        purge_grace_ms: Settings::PURGE_GRACE_MS,
    }
}

fn core(local_rounds: usize, store: &MemoryStore) -> Partition {
    let epoch = now_or_never(store.fence(0)).expect("memory store");
    Partition::new(settings(local_rounds), Engine::new(examples::register(Registry::new())), epoch)
}

fn record(offset: i64, envelope: &Envelope) -> Record {
    Record { offset, key: Some(envelope.target.as_bytes().to_vec()), payload: Some(envelope.encode()), sealed: true }
}

fn add(n: u32, counter: &str) -> Envelope {
    let target = InstanceId::entity("Counter", counter).canonical();
    let body = Event::EntityOperation { operation: "add".into(), input: Payload::json(&1i64).expect("json") };
    Envelope::new(format!("client-{n}"), target, NOW, body)
}

fn counter_value(store: &MemoryStore, counter: &str) -> i64 {
    let stored = store.get(&InstanceId::entity("Counter", counter).canonical()).expect("stored");
    let record = InstanceRecord::from_blob(&stored.blob).expect("decodes");
    record
        .entity()
        .and_then(|e| e.state.clone())
        .and_then(|p| p.decode::<examples::Counter>().ok())
        .map_or(0, |c| c.value)
}

/// What the driver saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Load(Vec<String>),
    Commit { writes: Vec<String>, fenced: bool },
    Run(usize),
    Produce(Vec<(Topic, String)>),
    Settle,
    Done { last: i64, rest: Vec<i64> },
}

/// Drive one group to its end against `store`; `before_commit` runs before each commit (to
/// write behind the core's back).
fn drive(
    core: &mut Partition,
    store: &MemoryStore,
    records: Vec<Record>,
    mut before_commit: impl FnMut(&MemoryStore),
) -> (Vec<Seen>, Vec<Outgoing>) {
    core.begin(records, NOW);
    let mut seen = Vec::new();
    let mut produced = Vec::new();
    loop {
        match core.poll() {
            Io::Load(ids) => {
                seen.push(Seen::Load(ids.clone()));
                core.loaded(now_or_never(store.load(0, &ids)).expect("memory store"));
            }
            Io::Commit { writes, epoch } => {
                before_commit(store);
                seen.push(Seen::Commit {
                    writes: writes.iter().map(|w| w.id.clone()).collect(),
                    fenced: epoch.is_some(),
                });
                let outcomes = match epoch {
                    Some(e) => now_or_never(store.commit_fenced(0, e, writes)),
                    None => now_or_never(store.commit(0, writes)),
                };
                core.committed(outcomes.expect("memory store"));
            }
            Io::Run(invocations) => {
                seen.push(Seen::Run(invocations.len()));
                let registry = examples::register(Registry::new());
                let results = invocations
                    .iter()
                    .map(|r| {
                        let f = registry.run_activity(r.id.name(), r.context(), r.input.clone()).expect("registered");
                        Ran::Returned(now_or_never(f))
                    })
                    .collect();
                core.ran(results, NOW);
            }
            Io::Produce(out) => {
                seen.push(Seen::Produce(
                    out.iter().map(|o| (o.topic, String::from_utf8_lossy(&o.key).into_owned())).collect(),
                ));
                produced.extend(out);
            }
            Io::Settle => {
                seen.push(Seen::Settle);
                core.settled();
            }
            Io::Done(done) => {
                seen.push(Seen::Done { last: done.last, rest: done.rest.iter().map(|r| r.offset).collect() });
                return (seen, produced);
            }
        }
    }
}

#[test]
fn a_group_commits_then_produces_then_settles_and_only_then_is_done() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let c1 = InstanceId::entity("Counter", "c1").canonical();
    let records = vec![record(0, &add(1, "c1")), record(1, &add(2, "c1"))];
    let (seen, produced) = drive(&mut core, &store, records, |_| {});
    assert_eq!(
        seen,
        [
            Seen::Load(vec![c1.clone()]),
            Seen::Commit { writes: vec![c1.clone()], fenced: false },
            Seen::Produce(vec![(Topic::State, c1.clone())]),
            Seen::Settle,
            Seen::Done { last: 1, rest: vec![] },
        ]
    );
    assert_eq!(counter_value(&store, "c1"), 2);
    let state: durable_schemas::contract::StateRecord =
        serde_json::from_slice(&produced[0].payload).expect("a state record");
    assert_eq!((state.kind.as_str(), state.version, state.state), ("entity", 1, Some(serde_json::json!({"value": 2}))));
    let stats = core.take_stats();
    assert_eq!((stats.commits, stats.applied, stats.cache_misses), (1, 2, 1));
}

#[test]
fn the_cache_saves_the_load_of_an_instance_it_committed() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    drive(&mut core, &store, vec![record(0, &add(1, "c1"))], |_| {});
    let (seen, _) = drive(&mut core, &store, vec![record(1, &add(2, "c1"))], |_| {});
    assert!(!seen.iter().any(|s| matches!(s, Seen::Load(_))), "{seen:?}");
    assert_eq!(counter_value(&store, "c1"), 2);
    assert_eq!(core.take_stats().cache_hits, 1);
}

/// Two instances in a group, one of them written behind the core's back: only that one is
/// reloaded and stepped again, and the other's commit stands.
#[test]
fn only_the_instance_that_lost_its_commit_is_rerun() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    drive(&mut core, &store, vec![record(0, &add(1, "a")), record(1, &add(2, "b"))], |_| {});
    let (a, b) = (InstanceId::entity("Counter", "a").canonical(), InstanceId::entity("Counter", "b").canonical());
    let mut first = true;
    let interfere = |store: &MemoryStore| {
        if std::mem::take(&mut first) {
            // Another owner writes `b` (same blob, new etag).
            let stored = store.get(&b).expect("stored");
            let write = Write {
                append: false,
                id: b.clone(),
                expected: Some(stored.etag),
                blob: stored.blob,
                timers: Vec::new(),
                index: None,
                expire: None,
            };
            now_or_never(store.commit(0, vec![write])).expect("memory store");
        }
    };
    let (seen, _) = drive(&mut core, &store, vec![record(2, &add(3, "a")), record(3, &add(4, "b"))], interfere);
    assert_eq!(
        seen[..3],
        [
            Seen::Commit { writes: vec![a.clone(), b.clone()], fenced: false },
            Seen::Load(vec![b.clone()]),
            Seen::Commit { writes: vec![b.clone()], fenced: false },
        ]
    );
    assert_eq!((counter_value(&store, "a"), counter_value(&store, "b")), (2, 2));
    let stats = core.take_stats();
    // Two commits in the first group; `a` once and `b` on its rerun in the second.
    assert_eq!((stats.conflicts, stats.reruns, stats.commits), (1, 1, 4));
}

/// A record applied before comes again with a new one for the same instance: the earlier
/// outbox is resent, nothing is committed before it left, and the group ends before the new
/// record, which the next group applies.
#[test]
fn a_resend_ends_the_group_before_the_instances_new_records() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let first = record(0, &add(1, "c1"));
    drive(&mut core, &store, vec![first.clone()], |_| {});
    // A new owner (no cache) reads the record again, followed by a new one.
    let mut next = self::core(0, &store);
    let (seen, produced) = drive(&mut next, &store, vec![first, record(1, &add(2, "c1"))], |_| {});
    assert!(!seen.iter().any(|s| matches!(s, Seen::Commit { .. })), "nothing committed: {seen:?}");
    assert_eq!(seen.last(), Some(&Seen::Done { last: 0, rest: vec![1] }));
    assert!(produced.iter().any(|o| o.topic == Topic::State), "the earlier outbox (its state) is resent");
    let (seen, _) = drive(&mut next, &store, vec![record(1, &add(2, "c1"))], |_| {});
    assert!(matches!(seen.last(), Some(Seen::Done { last: 1, .. })));
    assert_eq!(counter_value(&store, "c1"), 2);
}

/// A dead letter is committed with its instance's outbox: a processor that crashed after the
/// commit, before it produced, has it produced again by the next owner when the record is
/// redelivered — with the same headers and value, so nothing is lost and a repeat is the same.
#[test]
fn a_dead_letter_committed_but_not_produced_is_produced_by_the_next_owner() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let mut unknown = add(1, "c1");
    unknown.body = Event::EntityOperation { operation: "explode".into(), input: Payload::null() };
    let first = record(0, &unknown);
    let (_, produced) = drive(&mut core, &store, vec![first.clone()], |_| {});
    let dead: Vec<&Outgoing> = produced.iter().filter(|o| o.topic == Topic::Dead).collect();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason().unwrap().contains("explode"), "{:?}", dead[0].reason());
    // The processor crashed before those records left: a new owner reads the record again.
    let mut next = self::core(0, &store);
    let (seen, again) = drive(&mut next, &store, vec![first], |_| {});
    assert!(!seen.iter().any(|s| matches!(s, Seen::Commit { .. })), "nothing new to commit: {seen:?}");
    let dead_again: Vec<&Outgoing> = again.iter().filter(|o| o.topic == Topic::Dead).collect();
    assert_eq!(dead_again.len(), 1, "{again:?}");
    assert_eq!((&dead_again[0].headers, &dead_again[0].payload), (&dead[0].headers, &dead[0].payload));
}

/// Hostile records become dead letters with the reason and where they came from; the rest of
/// the group is applied.
#[test]
fn records_that_cannot_be_applied_are_dead_lettered_and_the_group_goes_on() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let mut big = add(9, "c1");
    big.body =
        Event::EntityOperation { operation: "add".into(), input: Payload::json(&"x".repeat(5000)).expect("json") };
    let activity = Envelope::new("x", "activity:NoSuchActivity:1", NOW, Event::Terminate { reason: "?".into() });
    let records = vec![
        Record { offset: 0, key: Some(b"k".to_vec()), payload: None, sealed: false },
        Record { offset: 1, key: None, payload: Some(b"not avro".to_vec()), sealed: false },
        record(2, &big),
        record(3, &activity),
        record(4, &add(1, "c1")),
    ];
    let (_, produced) = drive(&mut core, &store, records, |_| {});
    let dead: Vec<(&str, &str)> = produced
        .iter()
        .filter(|o| o.topic == Topic::Dead)
        .map(|o| {
            let offset = o.headers.iter().find(|(k, _)| *k == dead_letter::SOURCE_OFFSET).expect("offset").1.as_str();
            (offset, o.reason().expect("a reason"))
        })
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead[0].1.starts_with("empty record"), "{dead:?}");
    assert!(dead[1].1.starts_with("cannot decode"), "{dead:?}");
    assert!(dead[2].1.contains("over the limit of 4096 bytes"), "{dead:?}");
    assert!(dead[3].1.contains("expects ReplyTo(ScheduleActivity)"), "{dead:?}");
    assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), ["0", "1", "2", "3"]);
    assert_eq!(counter_value(&store, "c1"), 1);
}

/// A stored blob that does not decode is never overwritten: the events meant for it are
/// dead-lettered.
#[test]
fn events_for_an_unreadable_record_are_dead_lettered_and_it_is_not_overwritten() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let id = InstanceId::entity("Counter", "c1").canonical();
    let garbage = Write {
        append: false,
        id: id.clone(),
        expected: None,
        blob: b"garbage".to_vec(),
        timers: Vec::new(),
        index: None,
        expire: None,
    };
    now_or_never(store.commit(0, vec![garbage])).expect("memory store");
    let (seen, produced) = drive(&mut core, &store, vec![record(0, &add(1, "c1"))], |_| {});
    assert!(!seen.iter().any(|s| matches!(s, Seen::Commit { .. })), "{seen:?}");
    assert!(produced[0].reason().expect("dead").contains("unreadable"), "{produced:?}");
    assert_eq!(store.get(&id).expect("kept").blob, b"garbage");
}

/// A sequence of activities runs in local rounds: the steps between are deferred, the end of
/// the chain is committed once, fenced with the core's epoch; and a core fenced out by a newer
/// owner commits nothing locally — the reply to its committed call goes through the log.
#[test]
fn local_rounds_commit_fenced_and_a_fenced_out_core_sends_replies_through_the_log() {
    let store = MemoryStore::new();
    let mut core = core(Settings::LOCAL_ROUNDS, &store);
    let id = InstanceId::orchestration("HelloSequence", "h").canonical();
    let start = Event::StartOrchestration { input: Payload::json(&Vec::<String>::new()).expect("json") };
    let (seen, _) = drive(&mut core, &store, vec![record(0, &Envelope::new("s", id.clone(), NOW, start))], |_| {});
    let fenced = seen.iter().filter(|s| matches!(s, Seen::Commit { fenced: true, .. })).count();
    let runs = seen.iter().filter(|s| matches!(s, Seen::Run(1))).count();
    assert_eq!((fenced, runs), (1, 5), "five activities, their four steps between deferred: {seen:?}");
    assert_eq!(core.take_stats().deferred, 4);
    let record = InstanceRecord::from_blob(&store.get(&id).expect("stored").blob).expect("decodes");
    assert!(record.orchestration().expect("an orchestration").status.is_finished());

    // Fenced out before its first local round: the reply leaves through the log instead.
    let mut old = self::core(Settings::LOCAL_ROUNDS, &store);
    now_or_never(store.fence(0)).expect("a newer owner");
    let id2 = InstanceId::orchestration("HelloSequence", "h2").canonical();
    let start = Event::StartOrchestration { input: Payload::json(&Vec::<String>::new()).expect("json") };
    let (_, produced) =
        drive(&mut old, &store, vec![self::record(1, &Envelope::new("s2", id2.clone(), NOW, start))], |_| {});
    let replies = produced.iter().filter(|o| o.topic == Topic::Events && o.key == id2.as_bytes()).count();
    assert_eq!(replies, 1, "the first reply goes to the log: {produced:?}");
    assert_eq!(old.take_stats().conflicts, 1);
}

/// A deferred chain whose owner is fenced out before its commit (a crash would do the same)
/// leaves the record as last committed, waiting for its first call; the next owner, reading the
/// group again, resends that call and runs the sequence to the same end.
#[test]
fn a_deferred_chain_that_never_commits_is_run_again_from_the_last_commit() {
    let store = MemoryStore::new();
    let mut old = core(Settings::LOCAL_ROUNDS, &store);
    let (id, start) = hello("lost", 0);
    let mut commits = 0;
    let (_, produced) = drive(&mut old, &store, vec![start.clone()], |store| {
        commits += 1;
        if commits == 2 {
            // A newer owner takes the partition while the chain runs.
            now_or_never(store.fence(0)).expect("memory store");
        }
    });
    let stats = old.take_stats();
    assert_eq!((stats.deferred, stats.conflicts), (4, 1), "{stats:?}");
    let record = InstanceRecord::from_blob(&store.get(&id).expect("stored").blob).expect("decodes");
    let h = record.orchestration().expect("an orchestration");
    assert_eq!((h.status.word(), h.commands.len(), h.log.len()), ("running", 1, 0), "as first committed");
    let replies: Vec<Envelope> = produced
        .iter()
        .filter(|o| o.topic == Topic::Events)
        .map(|o| Envelope::decode(&o.payload).expect("decodes"))
        .collect();
    assert_eq!(replies.len(), 1, "only the reply to the committed call leaves: {replies:?}");
    assert!(
        matches!(&replies[0].body, Event::ActivityCompleted { correlation, .. } if correlation == "0.0"),
        "{replies:?}"
    );

    let mut new = core(Settings::LOCAL_ROUNDS, &store);
    let (seen, _) = drive(&mut new, &store, vec![start], |_| {});
    assert_eq!(seen.iter().filter(|s| matches!(s, Seen::Run(1))).count(), 5, "{seen:?}");
    let expected: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    assert_eq!(greetings(&store, &id), expected);
    assert_eq!(new.take_mismatches(), Vec::<String>::new());
}

/// A deferred step whose caller's next step cannot stay local (it signals an entity) is
/// committed in its place; the replies that step applied go through the log after it, and the
/// caller ends the same when they come back.
#[test]
fn a_deferred_step_is_committed_when_the_next_cannot_stay_local() {
    async fn greet_then_count(ctx: crate::OrchestrationContext, (): ()) -> Result<u32, Failure> {
        let a: String = ctx.call_activity("SayHello", "Oslo").await?;
        let b: String = ctx.call_activity("SayHello", "Lima").await?;
        ctx.signal_entity(&InstanceId::entity("Counter", "greetings"), "add", 1i64)?;
        Ok((a.len() + b.len()) as u32)
    }
    let store = MemoryStore::new();
    let epoch = now_or_never(store.fence(0)).expect("memory store");
    let registry = examples::register(Registry::new()).orchestration("GreetThenCount", greet_then_count);
    let mut core = Partition::new(settings(Settings::LOCAL_ROUNDS), Engine::new(registry), epoch);
    let id = InstanceId::orchestration("GreetThenCount", "g").canonical();
    let start = Event::StartOrchestration { input: Payload::json(&()).expect("json") };
    let (seen, produced) =
        drive(&mut core, &store, vec![record(0, &Envelope::new("s", id.clone(), NOW, start))], |_| {});
    assert_eq!(core.take_stats().deferred, 1, "{seen:?}");
    let fenced: Vec<&Seen> = seen.iter().filter(|s| matches!(s, Seen::Commit { fenced: true, .. })).collect();
    assert_eq!(fenced.len(), 1, "the deferred step, committed when the next could not stay: {seen:?}");
    let record = InstanceRecord::from_blob(&store.get(&id).expect("stored").blob).expect("decodes");
    let h = record.orchestration().expect("an orchestration");
    assert_eq!((h.commands.len(), h.log.len()), (2, 1), "the second call committed, its reply not yet");
    let reply = produced
        .iter()
        .filter(|o| o.topic == Topic::Events)
        .map(|o| Envelope::decode(&o.payload).expect("decodes"))
        .find(|e| e.target == id)
        .expect("the second reply goes through the log");
    assert!(matches!(&reply.body, Event::ActivityCompleted { correlation, .. } if correlation == "0.1"), "{reply:?}");
    let (_, produced) = drive(
        &mut core,
        &store,
        vec![Record { offset: 1, key: Some(id.as_bytes().to_vec()), payload: Some(reply.encode()), sealed: true }],
        |_| {},
    );
    let record = InstanceRecord::from_blob(&store.get(&id).expect("stored").blob).expect("decodes");
    match &record.orchestration().expect("an orchestration").status {
        crate::history::OrchestrationStatus::Completed { output } => {
            assert_eq!(output.decode::<u32>().expect("a number"), 22);
        }
        other => panic!("{id} is {other:?}"),
    }
    let counter = InstanceId::entity("Counter", "greetings").canonical();
    assert!(produced.iter().any(|o| o.topic == Topic::Events && o.key == counter.as_bytes()), "{produced:?}");
    assert_eq!(core.take_mismatches(), Vec::<String>::new());
}

/// Activities spread over processors: the invocation goes out by its key's hash, and one that
/// arrives through the log is run and its reply produced.
#[test]
fn spread_activities_go_through_the_log() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let id = InstanceId::orchestration("HelloSequence", "h").canonical();
    let start = Event::StartOrchestration { input: Payload::json(&Vec::<String>::new()).expect("json") };
    let (_, produced) = drive(&mut core, &store, vec![record(0, &Envelope::new("s", id.clone(), NOW, start))], |_| {});
    let invocation = produced.iter().find(|o| o.topic == Topic::Events).expect("an invocation");
    assert_eq!(invocation.partition, None);
    let envelope = Envelope::decode(&invocation.payload).expect("decodes");
    let (seen, produced) = drive(
        &mut core,
        &store,
        vec![Record { offset: 1, key: None, payload: Some(invocation.payload.clone()), sealed: true }],
        |_| {},
    );
    assert!(seen.contains(&Seen::Run(1)), "{seen:?}");
    let reply = Envelope::decode(&produced[0].payload).expect("a reply");
    assert_eq!((reply.target.as_str(), reply.source.as_deref()), (id.as_str(), Some(envelope.target.as_str())));
}

#[test]
fn an_abandoned_group_gives_back_every_record() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let records = vec![record(0, &add(1, "c1")), record(1, &add(2, "c2"))];
    core.begin(records.clone(), NOW);
    assert!(matches!(core.poll(), Io::Load(_)));
    assert_eq!(core.abandon(), records);
    assert!(!core.busy());
    let (seen, _) = drive(&mut core, &store, records, |_| {});
    assert!(matches!(seen.last(), Some(Seen::Done { last: 1, .. })));
}

#[test]
fn an_undecodable_parked_timer_is_dead_lettered_and_the_others_are_released_stamped() {
    let good = add(1, "c1");
    let timers = vec![
        ReleasedTimer { seq: 7, fire_at: NOW, envelope: b"junk".to_vec() },
        ReleasedTimer { seq: 8, fire_at: NOW, envelope: good.encode() },
    ];
    let out = timer_records(3, "t.events", &timers);
    assert_eq!(out[0].topic, Topic::Dead);
    assert!(out[0].reason().expect("a reason").starts_with("parked timer t3#7 does not decode"));
    let released = Envelope::decode(&out[1].payload).expect("decodes");
    let origin = released.origin.expect("stamped");
    assert_eq!((origin.stream.as_str(), origin.seq, out[1].topic), ("t3", 8, Topic::Events));
}

#[test]
fn peek_applies_the_records_for_the_caller_in_a_dry_run_and_skips_the_rest() {
    let store = MemoryStore::new();
    let mut core = core(0, &store);
    let target = InstanceId::orchestration("HelloSequence", "peeked");
    let start = Envelope::new(
        "start-peeked",
        target.canonical(),
        NOW,
        Event::StartOrchestration { input: Payload::json(&vec!["Oslo"]).unwrap() },
    );
    drive(&mut core, &store, vec![record(0, &start)], |_| {});
    let stored = || {
        let s = store.get(&target.canonical()).expect("stored");
        Some(InstanceRecord::from_blob(&s.blob).expect("decodes"))
    };
    let status = |r: &Option<InstanceRecord>| r.as_ref().and_then(|r| r.orchestration()).map(|h| h.status.word());
    let engine = Engine::new(examples::register(Registry::new()));
    // Nothing behind the call: the caller waits.
    assert_eq!(status(&peek(&engine, &settings(0), &target, stored(), &[], NOW)), Some("running"));
    // A forged reply (unsealed), another instance's terminate and an undecodable record change
    // nothing; the caller's own terminate ends it — in the dry run only.
    let forged = Envelope::new(
        "forged",
        target.canonical(),
        NOW,
        Event::ActivityCompleted { correlation: "0.0".into(), result: Payload::json(&"x").unwrap() },
    );
    let other = Envelope::new(
        "other",
        InstanceId::orchestration("HelloSequence", "other").canonical(),
        NOW,
        Event::Terminate { reason: "not you".into() },
    );
    let terminate =
        Envelope::new("stop", target.canonical(), NOW, Event::Terminate { reason: "no longer needed".into() });
    let mut unsealed = record(1, &forged);
    unsealed.sealed = false;
    let garbage = Record { offset: 3, key: None, payload: Some(vec![1, 2, 3]), sealed: false };
    let behind = [unsealed.clone(), record(2, &other), garbage.clone()];
    assert_eq!(status(&peek(&engine, &settings(0), &target, stored(), &behind, NOW)), Some("running"));
    let mut stop = record(4, &terminate);
    stop.sealed = false;
    let behind = [unsealed, record(2, &other), garbage, stop];
    assert_eq!(status(&peek(&engine, &settings(0), &target, stored(), &behind, NOW)), Some("terminated"));
    assert_eq!(status(&stored()), Some("running"), "a peek commits nothing");
}

fn hello(key: &str, offset: i64) -> (String, Record) {
    let id = InstanceId::orchestration("HelloSequence", key).canonical();
    let start = Event::StartOrchestration { input: Payload::json(&Vec::<String>::new()).expect("json") };
    (id.clone(), record(offset, &Envelope::new(format!("s-{key}"), id, NOW, start)))
}

fn greetings(store: &MemoryStore, id: &str) -> Vec<String> {
    let record = InstanceRecord::from_blob(&store.get(id).expect("stored").blob).expect("decodes");
    match &record.orchestration().expect("an orchestration").status {
        crate::history::OrchestrationStatus::Completed { output } => output.decode().expect("greetings"),
        other => panic!("{id} is {other:?}"),
    }
}

/// Between its steps a running orchestration's code stays in the cache with its committed record,
/// and each reply continues it instead of replaying the history; every live step is also checked
/// against a replay of the same record (`check_live`).
#[test]
fn an_orchestration_stays_live_between_its_steps_and_each_live_step_equals_a_replay() {
    let store = MemoryStore::new();
    let mut core = core(Settings::LOCAL_ROUNDS, &store);
    let (id, start) = hello("live", 0);
    drive(&mut core, &store, vec![start], |_| {});
    let stats = core.take_stats();
    assert_eq!(stats.live_steps, 5, "the five replies continue the code kept from the step before: {stats:?}");
    assert_eq!(core.take_mismatches(), Vec::<String>::new());
    assert_eq!(stats.live_mismatches, 0);
    assert_eq!(core.live(), (0, 0), "a finished orchestration keeps no code");
    let expected: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    assert_eq!(greetings(&store, &id), expected);
}

/// Live code past the byte bound is dropped oldest first (its record stays cached); that
/// orchestration replays at its next step and ends the same.
#[test]
fn live_code_past_its_bound_is_dropped_and_that_orchestration_replays() {
    let store = MemoryStore::new();
    let epoch = now_or_never(store.fence(0)).expect("memory store");
    // Room for one small orchestration's code, not two.
    let settings = Settings { live_limit: Live::OVERHEAD * 3 / 2, ..settings(Settings::LOCAL_ROUNDS) };
    let mut core = Partition::new(settings, Engine::new(examples::register(Registry::new())), epoch);
    let (a, start_a) = hello("a", 0);
    let (b, start_b) = hello("b", 1);
    let (seen, _) = drive(&mut core, &store, vec![start_a, start_b], |_| {});
    let stats = core.take_stats();
    assert!(stats.live_evicted >= 1, "{stats:?}");
    assert!(stats.live_steps >= 1 && stats.live_steps < 10, "some steps live, some replayed: {stats:?}");
    assert_eq!(stats.cache_misses, 2, "only the first load of each: dropping code keeps the record: {seen:?}");
    let expected: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    assert_eq!(greetings(&store, &a), expected);
    assert_eq!(greetings(&store, &b), expected);
    assert_eq!(core.take_mismatches(), Vec::<String>::new());
}

/// A local step that sets a timer beside an activity call is not deferred: the timer is parked
/// with its commit. (Deferring it dropped the timer — the engine keeps delays out of the
/// outbox — and the orchestration waited forever, silently; the generative simulator finds
/// this program when the fix is reverted.)
#[test]
fn a_step_that_sets_a_timer_beside_an_activity_call_is_committed_with_its_timer() {
    async fn greet_then_wait(ctx: crate::OrchestrationContext, (): ()) -> Result<u32, Failure> {
        let a: String = ctx.call_activity("SayHello", "Oslo").await?;
        let timer = ctx.create_timer_after(std::time::Duration::from_secs(1));
        let b: String = ctx.call_activity("SayHello", "Lima").await?;
        timer.await;
        Ok((a.len() + b.len()) as u32)
    }
    let store = MemoryStore::new();
    let epoch = now_or_never(store.fence(0)).expect("memory store");
    let registry = examples::register(Registry::new()).orchestration("GreetThenWait", greet_then_wait);
    let mut core = Partition::new(settings(Settings::LOCAL_ROUNDS), Engine::new(registry), epoch);
    let id = InstanceId::orchestration("GreetThenWait", "g").canonical();
    let start = Event::StartOrchestration { input: Payload::json(&()).expect("json") };
    let (seen, _) = drive(&mut core, &store, vec![record(0, &Envelope::new("s", id.clone(), NOW, start))], |_| {});
    assert_eq!(store.pending_timers(), 1, "the timer is parked: {seen:?}");
    let timers = now_or_never(store.claim_due_timers(0, NOW + 1_000, 10)).expect("memory store");
    assert_eq!(timers.len(), 1);
    let fired: Vec<Record> = timer_records(0, "t.events", &timers)
        .into_iter()
        .map(|o| Record { offset: 1, key: Some(o.key), payload: Some(o.payload), sealed: true })
        .collect();
    drive(&mut core, &store, fired, |_| {});
    let record = InstanceRecord::from_blob(&store.get(&id).expect("stored").blob).expect("decodes");
    match &record.orchestration().expect("an orchestration").status {
        crate::history::OrchestrationStatus::Completed { output } => {
            assert_eq!(output.decode::<u32>().expect("a number"), 22);
        }
        other => panic!("{id} is {other:?}: {seen:?}"),
    }
    assert_eq!(core.take_mismatches(), Vec::<String>::new());
}

/// A running orchestration loaded afresh at every step (no cache) keeps its stored blob within
/// about twice its whole size: a record loaded with deltas counts them as deltas, so the next
/// write past the bound rewrites it whole (the loaded size used to become the new base, and the
/// deltas grew without bound).
#[test]
fn deltas_stay_bounded_when_every_step_loads_the_record() {
    let store = MemoryStore::new();
    let epoch = now_or_never(store.fence(0)).expect("memory store");
    let settings = Settings { cache_limit: 0, defer_local: false, max_event_bytes: 1 << 20, ..settings(64) };
    let mut core = Partition::new(settings, Engine::new(examples::register(Registry::new())), epoch);
    let id = InstanceId::orchestration("HelloSequence", "long").canonical();
    // A large input, carried in every whole write: deltas must not repeat it without bound.
    let cities: Vec<String> = (0..40).map(|i| format!("{i:02}{}", "x".repeat(200))).collect();
    let start = Event::StartOrchestration { input: Payload::json(&cities).expect("json") };
    let mut worst = 0.0f64;
    let (seen, _) = drive(&mut core, &store, vec![record(0, &Envelope::new("s", id.clone(), NOW, start))], |store| {
        if let Some(stored) = store.get(&id) {
            let whole = InstanceRecord::from_blob(&stored.blob).expect("decodes").to_blob().len();
            worst = worst.max(stored.blob.len() as f64 / whole as f64);
        }
    });
    let loads = seen.iter().filter(|s| matches!(s, Seen::Load(_))).count();
    assert!(loads >= 40, "every step loads: {loads}");
    assert!(worst <= 2.2, "the stored blob reached {worst:.2} times the record's whole size");
    assert_eq!(greetings(&store, &id).len(), 40);
}

/// A creation waiting for its creation limit's ledger is an empty record holding the creating
/// event: it must not expire like a purged one (the start and the events held behind it would
/// vanish after a 202, and the ledger's place would leak when the answer came).
#[test]
fn a_creation_waiting_for_its_ledger_does_not_expire() {
    let mut policy = crate::access::Policy::enforcing();
    policy.limits.insert("Counter".into(), 1);
    let engine = Engine::new(examples::register(Registry::new())).with_policy(policy);
    let target = InstanceId::entity("Counter", "limited");
    let mut e = add(1, "limited");
    crate::access::send_as(&mut e, &crate::access::Principal::new("quinn", Vec::<String>::new()));
    let input = StepInput {
        deliveries: vec![Delivery { envelope: e, offset: Some(0), sealed: true }],
        now: NOW,
        partition: Some(0),
        trigger: None,
    };
    let out = engine.step(&target, None, input);
    assert!(out.record.quota.waiting.is_some(), "the creation waits for the ledger");
    let mut stepped = Stepped { id: target.canonical(), out, live: None, etag: None, shape: Shape::default() };
    let w = write(&mut stepped, Settings::PURGE_GRACE_MS);
    assert_eq!(w.expire, None, "a held creation is kept");
}
