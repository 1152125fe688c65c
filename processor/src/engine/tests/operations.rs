//! Operator events: suspend and resume, purge, retention.

use durable_schemas::{Event, Payload};

use crate::effect::Effect;
use crate::engine::DropReason;
use crate::examples;
use crate::harness::Harness;
use crate::history::{Body, OrchestrationStatus};
use crate::id::InstanceId;
use crate::registry::Registry;
use crate::retention::{self, Retention};

fn harness() -> Harness {
    Harness::new(examples::register(Registry::new()))
}

fn suspended_with(h: &Harness, id: &str) -> Option<usize> {
    match h.status(id)? {
        OrchestrationStatus::Suspended { held, .. } => Some(held.len()),
        _ => None,
    }
}

#[test]
fn a_suspended_orchestration_keeps_what_arrives_and_applies_it_on_resume() {
    let mut h = harness();
    let start = h.start("HelloSequence", "s", vec!["Oslo", "Lima"]);
    let id = start.target.clone();
    h.deliver(start);
    let request = h.take_pending().pop().expect("the first activity call");
    let suspend = h.client(&id, Event::Suspend { reason: "audit".into() });
    let out = h.deliver(suspend);
    assert!(out.changed);
    assert_eq!(h.record(&id).unwrap().version, 2);
    let state = out.effects.iter().find_map(|e| match e {
        Effect::StateChanged(c) => Some(c.status.clone()),
        _ => None,
    });
    assert_eq!(state.as_deref(), Some("suspended"));
    // The reply and an event arrive while suspended: kept, nothing runs.
    let reply = h.run_activity(request);
    h.take_pending();
    let out = h.deliver(reply);
    assert_eq!(out.emitted().count(), 0, "nothing runs while suspended");
    let raise = h.raise(&id, "unused", 1);
    h.deliver(raise);
    assert_eq!(suspended_with(&h, &id), Some(2));
    // Suspending again changes nothing.
    let again = h.client(&id, Event::Suspend { reason: "again".into() });
    assert_eq!(h.deliver(again).dropped[0].reason, DropReason::NoChange);
    // Resume: the kept reply applies, the code asks for the next activity, and it completes.
    let resume = h.client(&id, Event::Resume { reason: String::new() });
    let out = h.deliver(resume);
    assert_eq!(out.emitted().filter(|e| e.target.starts_with("activity:SayHello:")).count(), 1);
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Running));
    h.run();
    let done: Vec<String> = h.output(&id).expect("completed");
    assert_eq!(done, ["Hello Oslo!", "Hello Lima!"]);
    let late = h.client(&id, Event::Resume { reason: String::new() });
    assert_eq!(h.deliver(late).dropped[0].reason, DropReason::Finished);
    let finished = h.client(&id, Event::Suspend { reason: "too late".into() });
    h.deliver(finished);
    assert!(h.dead_letters().last().unwrap().reason.contains("only a running orchestration can be suspended"));
}

#[test]
fn terminate_ends_a_suspended_orchestration_and_drops_what_it_kept() {
    let mut h = harness();
    let start = h.start("HelloSequence", "t", vec!["Oslo"]);
    let id = start.target.clone();
    h.deliver(start);
    let request = h.take_pending().pop().unwrap();
    let suspend = h.client(&id, Event::Suspend { reason: String::new() });
    h.deliver(suspend);
    let reply = h.run_activity(request);
    h.take_pending();
    h.deliver(reply);
    let terminate = h.terminate(&id, "enough");
    let out = h.deliver(terminate);
    assert!(out.changed && out.dropped.is_empty(), "{:?}", out.dropped);
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Terminated { reason: "enough".into() }));
}

#[test]
fn the_kept_events_are_bounded_by_the_inbox_limit() {
    let mut h = harness().with_limits(crate::engine::Limits { max_inbox: 2, ..Default::default() });
    let start = h.start("Ticker", "b", (0, 5));
    let id = start.target.clone();
    h.deliver(start);
    let suspend = h.client(&id, Event::Suspend { reason: String::new() });
    h.deliver(suspend);
    for _ in 0..3 {
        let tick = h.raise(&id, "tick", 1);
        h.deliver(tick);
    }
    assert_eq!(suspended_with(&h, &id), Some(2));
    assert!(h.dead_letters().last().unwrap().reason.contains("is suspended and already keeps 2 events"));
}

#[test]
fn a_purge_empties_a_finished_orchestration_and_publishes_its_tombstone() {
    let mut h = harness();
    let start = h.start("HelloSequence", "p", vec!["Oslo"]);
    let id = start.target.clone();
    h.deliver(start);
    // Running: refused.
    let early = h.client(&id, Event::Purge { reason: String::new() });
    h.deliver(early);
    assert!(h.dead_letters().last().unwrap().reason.contains("is running: terminate it first"));
    h.run();
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Completed { .. })));
    let purge = h.client(&id, Event::Purge { reason: "done with it".into() });
    let out = h.deliver(purge);
    let record = h.record(&id).unwrap();
    assert!(matches!(record.body, Body::Empty), "emptied");
    assert!(record.dedup.recent_ids.len() >= 2, "its dedup marks stay");
    let purged = out.effects.iter().find_map(|e| match e {
        Effect::StateChanged(c) if c.is_purge() => Some(c.version),
        _ => None,
    });
    assert_eq!(purged, Some(record.version), "a tombstone with the new version");
    // Again (a redelivered purge): the tombstone again, nothing else.
    let again = h.client(&id, Event::Purge { reason: String::new() });
    let out = h.deliver(again);
    assert!(out.effects.iter().any(|e| matches!(e, Effect::StateChanged(c) if c.is_purge())));
    // A start after the purge is a new instance: generation 0, running again.
    let restart = h.start("HelloSequence", "p", vec!["Lima"]);
    h.deliver(restart);
    assert_eq!(h.record(&id).unwrap().orchestration().unwrap().generation, 0);
    h.run();
    let out: Vec<String> = h.output(&id).unwrap();
    assert_eq!(out, ["Hello Lima!"]);
}

#[test]
fn an_entity_is_purged_only_outside_a_critical_section() {
    let mut h = harness();
    let counter = InstanceId::entity("Counter", "c");
    let add = h.signal(&counter, "add", 3);
    h.deliver(add);
    let lock = Event::LockRequest {
        owner: "orch:Transfer:t".into(),
        correlation: "0.0".into(),
        participants: vec![counter.canonical()],
        position: 0,
    };
    let mut request = h.client(&counter.canonical(), lock);
    request.source = Some("orch:Transfer:t".into());
    h.deliver(request);
    let purge = h.client(&counter.canonical(), Event::Purge { reason: String::new() });
    h.deliver(purge);
    assert!(h.dead_letters().last().unwrap().reason.contains("is locked by orch:Transfer:t"));
    let release = Event::LockRelease { owner: "orch:Transfer:t".into(), correlation: "0.0".into() };
    let mut release = h.client(&counter.canonical(), release);
    release.source = Some("orch:Transfer:t".into());
    // The purge and a signal after it, in one step: the signal makes a new entity.
    let purge = h.client(&counter.canonical(), Event::Purge { reason: String::new() });
    let add = h.signal(&counter, "add", 1);
    let out = h.deliver_batch(vec![release, purge, add]);
    assert_eq!(h.entity_state::<serde_json::Value>(&counter), Some(serde_json::json!({ "value": 1 })));
    assert!(!out.effects.iter().any(|e| matches!(e, Effect::StateChanged(c) if c.is_purge())), "not gone after all");
    let purge = h.client(&counter.canonical(), Event::Purge { reason: String::new() });
    h.deliver(purge);
    assert!(matches!(h.record(&counter.canonical()).unwrap().body, Body::Empty));
}

#[test]
fn retention_purges_a_finished_orchestration_once_its_period_passed_and_not_a_restarted_one() {
    let retention = Retention { default: Some(60_000), by_name: [("Ticker".to_owned(), 1_000)].into() };
    let mut h = harness().with_retention(retention);
    let start = h.start("HelloSequence", "r", vec!["Oslo"]);
    let id = start.target.clone();
    h.deliver(start);
    h.run_until(h.now());
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Completed { .. })));
    let timers = h.take_timers();
    assert_eq!(timers.len(), 1, "one retention timer: {timers:?}");
    let (fire_at, purge) = timers[0].clone();
    assert_eq!(fire_at, h.now() + 60_000);
    assert!(matches!(&purge.body, Event::Purge { reason } if reason == retention::REASON));
    // Restarted before the timer fired: the old timer leaves the new run alone.
    let again = h.start("HelloSequence", "r", vec!["Lima"]);
    h.advance(10_000);
    h.deliver(again);
    let out = h.fire((fire_at, purge.clone()));
    assert_eq!(out.dropped[0].reason, DropReason::NoChange);
    h.run_until(h.now());
    let (next_at, next) = h.take_timers().pop().expect("the restarted run's end parks its own timer");
    assert_eq!(next_at, h.now() + 60_000);
    // Once the restarted run has been done for its period, its timer purges it.
    h.fire((next_at, next));
    assert!(matches!(h.record(&id).unwrap().body, Body::Empty));
    // A per-type period, and an entity whose state was deleted counts too.
    let ticker = h.start("Ticker", "k", (0, 1));
    let tid = ticker.target.clone();
    h.deliver(ticker);
    let tick = h.raise(&tid, "tick", 1);
    h.deliver(tick);
    let (at, _) = h.take_timers().pop().expect("a timer for the ticker");
    assert_eq!(at, h.now() + 1_000);
    assert!(
        matches!(h.status(&tid), Some(OrchestrationStatus::Completed { output }) if *output == Payload::json(&1).unwrap())
    );
}

#[test]
fn a_resume_whose_kept_events_are_all_duplicates_still_resumes() {
    // Found by the simulator: a reply delivered twice while suspended is kept twice; on resume
    // the copy is dropped, and a step whose only delivery was the resume looked like nothing
    // had changed, so the resume was never committed.
    let mut h = harness();
    let start = h.start("HelloSequence", "d", vec!["Oslo", "Lima"]);
    let id = start.target.clone();
    h.deliver(start);
    let request = h.take_pending().pop().unwrap();
    let reply = h.run_activity(request);
    h.take_pending();
    h.deliver(reply.clone());
    h.take_pending();
    let suspend = h.client(&id, Event::Suspend { reason: String::new() });
    h.deliver(suspend);
    h.deliver(reply);
    assert_eq!(suspended_with(&h, &id), Some(1), "the late copy is kept");
    let resume = h.client(&id, Event::Resume { reason: String::new() });
    let out = h.deliver(resume);
    assert!(out.changed, "the resume is committed");
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Running));
}

/// A parent waiting on two sub-orchestrations keyed by its code, after one (keyed by default)
/// that finished; children wait for `go`.
fn family() -> Harness {
    use crate::context::{when_all, OrchestrationContext};
    use durable_schemas::Failure;
    let registry = Registry::new()
        .orchestration("Child", |ctx: OrchestrationContext, _: ()| async move {
            ctx.wait_for_event::<()>("go").await?;
            Ok::<_, Failure>(())
        })
        .orchestration("Quick", |_: OrchestrationContext, _: ()| async move { Ok::<_, Failure>(()) })
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_sub_orchestration::<_, ()>("Quick", ()).await?;
            let calls = vec![
                ctx.call_sub_orchestration_with_key::<_, ()>("Child", "kid", ()),
                ctx.call_sub_orchestration_with_key::<_, ()>("Child", "kid-2", ()),
            ];
            for r in when_all(calls).await {
                r?;
            }
            Ok::<_, Failure>(())
        });
    Harness::new(registry)
}

#[test]
fn terminating_an_orchestration_terminates_the_sub_orchestrations_still_running() {
    let mut h = family();
    let start = h.start("Parent", "p", ());
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    let children = ["orch:Child:kid", "orch:Child:kid-2"];
    for child in children {
        assert_eq!(h.status(child), Some(&OrchestrationStatus::Running), "{child} runs");
    }
    let terminate = h.terminate(&id, "enough");
    let out = h.deliver(terminate);
    let mut told: Vec<&str> =
        out.emitted().filter(|e| matches!(e.body.core(), Event::Terminate { .. })).map(|e| e.target.as_str()).collect();
    told.sort();
    assert_eq!(told, children, "the running children, not the finished one");
    h.run();
    for child in children {
        match h.status(child) {
            Some(OrchestrationStatus::Terminated { reason }) => {
                assert_eq!(reason, &format!("its parent {id} was terminated: enough"))
            }
            other => panic!("{child}: {other:?}"),
        }
    }
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Terminated { .. })));
}

#[test]
fn the_children_are_terminated_for_the_principal_the_parent_runs_as() {
    use crate::access::{Policy, Principal};
    let alice = Principal::new("alice", Vec::<String>::new());
    let mut h = family().with_policy(Policy::enforcing());
    let start = h.start("Parent", "p", ());
    let id = start.target.clone();
    h.deliver(Harness::as_principal(start, &alice));
    h.run();
    assert_eq!(h.status("orch:Child:kid"), Some(&OrchestrationStatus::Running));
    let terminate = h.terminate(&id, "enough");
    let out = h.deliver(Harness::as_principal(terminate, &alice));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    h.run();
    for child in ["orch:Child:kid", "orch:Child:kid-2"] {
        assert!(
            matches!(h.status(child), Some(OrchestrationStatus::Terminated { .. })),
            "{child}: {:?}",
            h.status(child)
        );
    }
}

fn payments() -> Harness {
    use crate::context::OrchestrationContext;
    use durable_schemas::Failure;
    let registry = Registry::new()
        .activity("Reserve", |_: ()| async { Ok::<_, Failure>("r".to_owned()) })
        .activity("Charge", |_: ()| async { Ok::<_, Failure>("c".to_owned()) })
        .orchestration("Pay", |ctx: OrchestrationContext, _: ()| async move {
            let reserved: String = ctx.call_activity("Reserve", ()).await?;
            let charged: String = ctx.call_activity("Charge", ()).await?;
            Ok::<_, Failure>(format!("{reserved}+{charged}"))
        })
        .orchestration("Broken", |_: OrchestrationContext, _: ()| async move {
            Err::<(), _>(Failure::new("Bug", "the code failed by itself"))
        })
        .orchestration("Caller", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_sub_orchestration_with_key::<_, String>("Pay", "child", ()).await
        });
    Harness::new(registry)
}

/// Deliver the pending activity request for `name` answered with `result`.
fn answer(h: &mut Harness, name: &str, result: Result<Payload, durable_schemas::Failure>) -> crate::engine::StepOutput {
    let pending = h.take_pending();
    let request = pending.iter().find(|e| e.target.starts_with(&format!("activity:{name}:"))).expect(name).clone();
    for other in pending.into_iter().filter(|e| e.id != request.id) {
        h.deliver(other);
    }
    let reply = h.reply_to_activity(&request, result);
    h.deliver(reply)
}

#[test]
fn a_rewind_runs_a_failed_orchestration_on_from_the_failed_activity_keeping_what_succeeded() {
    let mut h = payments();
    let start = h.start("Pay", "p", ());
    let id = start.target.clone();
    h.deliver(start);
    answer(&mut h, "Reserve", Ok(Payload::json("r").unwrap()));
    answer(&mut h, "Charge", Err(durable_schemas::Failure::new("Declined", "the bank is down")));
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Failed { .. })));
    let rewind = h.client(&id, Event::Rewind { reason: "the bank is back".into() });
    let out = h.deliver(rewind);
    let calls: Vec<&str> = out.emitted().map(|e| e.target.as_str()).collect();
    assert_eq!(calls.len(), 1, "only the failed call is sent again: {calls:?}");
    assert!(calls[0].starts_with("activity:Charge:"), "{calls:?}");
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Running));
    let state = out.effects.iter().find_map(|e| match e {
        Effect::StateChanged(c) => Some(c.status.clone()),
        _ => None,
    });
    assert_eq!(state.as_deref(), Some("running"));
    h.run();
    assert_eq!(h.output::<String>(&id).as_deref(), Some("r+c"), "Reserve's result was kept");
    // A completed orchestration is not rewound.
    let again = h.client(&id, Event::Rewind { reason: String::new() });
    let out = h.deliver(again);
    assert!(
        out.dead_letters[0].reason.contains("only a failed orchestration can be rewound"),
        "{:?}",
        out.dead_letters
    );
}

#[test]
fn what_cannot_be_rewound_is_refused_with_why() {
    let mut h = payments();
    // Failed in its own code, not in an activity.
    let start = h.start("Broken", "b", ());
    let broken = start.target.clone();
    h.deliver(start);
    let out = {
        let e = h.client(&broken, Event::Rewind { reason: String::new() });
        h.deliver(e)
    };
    assert!(out.dead_letters[0].reason.contains("did not fail in an activity"), "{:?}", out.dead_letters);
    // A sub-orchestration whose parent already has its failure.
    let start = h.start("Caller", "c", ());
    h.deliver(start);
    h.deliver_pending(0);
    answer(&mut h, "Reserve", Ok(Payload::json("r").unwrap()));
    answer(&mut h, "Charge", Err(durable_schemas::Failure::new("Declined", "no")));
    assert!(matches!(h.status("orch:Pay:child"), Some(OrchestrationStatus::Failed { .. })));
    let out = {
        let e = h.client("orch:Pay:child", Event::Rewind { reason: String::new() });
        h.deliver(e)
    };
    assert!(out.dead_letters[0].reason.contains("is a sub-orchestration"), "{:?}", out.dead_letters);
    // A running one.
    let start = h.start("Pay", "running", ());
    h.deliver(start);
    let out = {
        let e = h.client("orch:Pay:running", Event::Rewind { reason: String::new() });
        h.deliver(e)
    };
    assert!(out.dead_letters[0].reason.contains("is running"), "{:?}", out.dead_letters);
}

fn pending_raised(h: &Harness, id: &str) -> Option<usize> {
    match &h.record(id)?.body {
        Body::Orchestration(o) if o.status == OrchestrationStatus::Pending => Some(o.inbox.len()),
        _ => None,
    }
}

#[test]
fn events_raised_before_the_start_wait_for_it_and_the_start_takes_them() {
    let mut h = harness();
    let id = "orch:Ticker:early".to_owned();
    let first = h.raise(&id, "tick", 1);
    let out = h.deliver(first);
    assert!(out.dead_letters.is_empty() && out.changed, "{:?}", out.dead_letters);
    let state = out.effects.iter().find_map(|e| match e {
        Effect::StateChanged(c) => Some(c.status.clone()),
        _ => None,
    });
    assert_eq!(state.as_deref(), Some("pending"));
    let second = h.raise(&id, "tick", 1);
    h.deliver(second);
    assert_eq!(pending_raised(&h, &id), Some(2));
    // Nothing but its start, raised events and a purge applies before the start.
    for body in [Event::Suspend { reason: String::new() }, Event::Terminate { reason: String::new() }] {
        let early = h.client(&id, body);
        h.deliver(early);
        assert!(h.dead_letters().last().unwrap().reason.contains("never started"), "{:?}", h.dead_letters());
    }
    assert_eq!(pending_raised(&h, &id), Some(2));
    // Two generations, one tick each: both were raised before the start.
    let start = h.start("Ticker", "early", (0, 2));
    h.deliver(start);
    h.run();
    assert_eq!(h.output::<u32>(&id), Some(2));
    assert_eq!(h.record(&id).unwrap().orchestration().unwrap().generation, 1);
}

#[test]
fn raising_before_the_start_takes_the_right_to_start_and_makes_the_sender_the_owner() {
    use crate::access::{Policy, Principal};
    let (alice, bob) = (Principal::new("alice", Vec::<String>::new()), Principal::new("bob", Vec::<String>::new()));
    let mut h = harness().with_policy(Policy::enforcing());
    let id = "orch:Ticker:claimed".to_owned();
    let tick = h.raise(&id, "tick", 1);
    h.deliver(Harness::as_principal(tick, &bob));
    assert_eq!(pending_raised(&h, &id), Some(1));
    assert!(h.record(&id).unwrap().access.owners.contains("bob"));
    // Alice may neither add to it nor start it: it is bob's.
    let theirs = h.raise(&id, "tick", 1);
    h.deliver(Harness::as_principal(theirs, &alice));
    assert!(h.dead_letters().last().unwrap().reason.contains("alice may not signal"), "{:?}", h.dead_letters());
    let start = h.start("Ticker", "claimed", (0, 1));
    h.deliver(Harness::as_principal(start, &alice));
    assert!(h.dead_letters().last().unwrap().reason.contains("alice may not start"), "{:?}", h.dead_letters());
    assert_eq!(pending_raised(&h, &id), Some(1));
    let start = h.start("Ticker", "claimed", (0, 1));
    h.deliver(Harness::as_principal(start, &bob));
    h.run();
    assert_eq!(h.output::<u32>(&id), Some(1));
    // Who may not create the type may not raise on one that does not exist either.
    let mut creation = Policy::enforcing();
    creation.default_creation = crate::access::Creation::Nobody;
    let mut h = harness().with_policy(creation);
    let tick = h.raise("orch:Ticker:nobody", "tick", 1);
    h.deliver(Harness::as_principal(tick, &bob));
    assert!(h.record("orch:Ticker:nobody").is_none_or(|r| matches!(r.body, Body::Empty)));
    assert!(h.dead_letters().last().unwrap().reason.contains("may not create"), "{:?}", h.dead_letters());
}

#[test]
fn a_pending_orchestration_is_bounded_purged_and_aged_out() {
    let limits = crate::engine::Limits { max_inbox: 2, ..Default::default() };
    let mut h = harness().with_limits(limits).with_retention(Retention { default: Some(5_000), ..Default::default() });
    let id = "orch:Ticker:never".to_owned();
    for _ in 0..3 {
        let tick = h.raise(&id, "tick", 1);
        h.deliver(tick);
    }
    assert_eq!(pending_raised(&h, &id), Some(2));
    assert!(h.dead_letters().last().unwrap().reason.contains("already buffers 2 events"));
    // Nobody starts it: its retention period ends it.
    let (at, purge) = h.take_timers().pop().expect("a pending orchestration ages out like a finished one");
    assert_eq!(at, h.now() + 5_000);
    h.advance(5_000);
    let out = h.fire((at, purge));
    assert!(out.changed);
    assert!(matches!(h.record(&id).unwrap().body, Body::Empty));
    // An operator's purge empties one too.
    let tick = h.raise("orch:Ticker:gone", "tick", 1);
    h.deliver(tick);
    let purge = h.client("orch:Ticker:gone", Event::Purge { reason: "cleanup".into() });
    h.deliver(purge);
    assert!(matches!(h.record("orch:Ticker:gone").unwrap().body, Body::Empty));
}
