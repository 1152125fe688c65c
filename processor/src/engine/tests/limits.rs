//! Limits: hitting one fails that instance or dead-letters that event with the reason; nothing
//! else changes.

use durable_schemas::Failure;
use serde::{Deserialize, Serialize};

use crate::context::OrchestrationContext;
use crate::engine::Limits;
use crate::examples;
use crate::harness::Harness;
use crate::history::OrchestrationStatus;
use crate::id::InstanceId;
use crate::registry::Registry;
use crate::EntityType;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Text {
    text: String,
}

async fn big_output(_ctx: OrchestrationContext, n: usize) -> Result<String, Failure> {
    Ok("x".repeat(n))
}

async fn big_status(ctx: OrchestrationContext, n: usize) -> Result<(), Failure> {
    ctx.set_custom_status(&"s".repeat(n));
    let _: u32 = ctx.wait_for_event("never").await?;
    Ok(())
}

async fn holder(ctx: OrchestrationContext, (): ()) -> Result<(), Failure> {
    let _guard = ctx.lock(&[InstanceId::entity("Text", "held")]).await?;
    let _: u32 = ctx.wait_for_event("go").await?;
    Ok(())
}

async fn caller(ctx: OrchestrationContext, n: usize) -> Result<(), Failure> {
    let _: usize = ctx.call_entity(&InstanceId::entity("Text", "called"), "append", "y".repeat(n)).await?;
    Ok(())
}

async fn big_result_caller(ctx: OrchestrationContext, n: usize) -> Result<usize, Failure> {
    let s: String = ctx.call_activity("Big", n).await?;
    Ok(s.len())
}

async fn echo_caller(ctx: OrchestrationContext, n: usize) -> Result<usize, Failure> {
    let s: String = ctx.call_entity(&InstanceId::entity("Text", "echo"), "echo", n).await?;
    Ok(s.len())
}

fn harness(limits: Limits) -> Harness {
    let text = EntityType::<Text>::new()
        .operation("append", |t: &mut Text, _ctx, more: String| {
            t.text.push_str(&more);
            Ok(t.text.len())
        })
        .operation("echo", |t: &mut Text, _ctx, n: usize| {
            t.text.push('e');
            Ok("z".repeat(n))
        });
    let registry = examples::register(Registry::new())
        .entity("Text", text)
        .orchestration("BigOutput", big_output)
        .orchestration("BigStatus", big_status)
        .orchestration("Holder", holder)
        .orchestration("Caller", caller)
        .orchestration("BigResultCaller", big_result_caller)
        .orchestration("EchoCaller", echo_caller)
        .activity("Big", |n: usize| async move { Ok::<_, Failure>("r".repeat(n)) });
    Harness::new(registry).with_limits(limits)
}

fn small() -> Limits {
    Limits {
        max_state_bytes: 100,
        max_history_bytes: 2_000,
        max_inbox: 3,
        max_entity_queue: 2,
        max_fan_out: 10,
        ..Limits::default()
    }
}

fn failure(h: &Harness, id: &str) -> Failure {
    match h.status(id) {
        Some(OrchestrationStatus::Failed { failure }) => failure.clone(),
        other => panic!("{id} should have failed, is {other:?}"),
    }
}

#[test]
fn an_entity_state_over_the_limit_is_refused_and_the_state_is_unchanged() {
    let mut h = harness(small());
    let text = InstanceId::entity("Text", "t");
    let ok = h.signal(&text, "append", "a".repeat(50));
    h.deliver(ok);
    let too_much = h.signal(&text, "append", "b".repeat(80));
    let out = h.deliver(too_much);
    assert!(out.dead_letters[0].reason.contains("over the limit of 100 (DURABLE_MAX_STATE_BYTES)"), "{out:?}");
    assert_eq!(h.entity_state::<Text>(&text).unwrap().text, "a".repeat(50));
    // A call gets the failure as its answer.
    let start = h.start("Caller", "c", 200usize);
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(failure(&h, &id).kind, "StateTooLarge");
}

#[test]
fn outputs_and_custom_statuses_over_the_limit_fail_the_orchestration() {
    let mut h = harness(small());
    let start = h.start("BigOutput", "o", 101usize);
    let id = start.target.clone();
    h.deliver(start);
    assert_eq!(failure(&h, &id).kind, "StateTooLarge");
    let start = h.start("BigOutput", "fits", 90usize);
    let fits = start.target.clone();
    h.deliver(start);
    assert!(matches!(h.status(&fits), Some(OrchestrationStatus::Completed { .. })));
    let start = h.start("BigStatus", "s", 200usize);
    let id = start.target.clone();
    h.deliver(start);
    let f = failure(&h, &id);
    assert!(f.kind == "StateTooLarge" && f.message.contains("custom status"), "{f:?}");
}

#[test]
fn a_history_over_the_limit_fails_with_continue_as_new_as_the_cure() {
    let mut h = harness(small());
    let cities: Vec<String> = (0..40).map(|i| format!("city-{i:03}-with-a-long-name")).collect();
    let start = h.start("HelloSequence", "long", &cities);
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    let f = failure(&h, &id);
    assert_eq!(f.kind, "HistoryTooLarge");
    assert!(f.message.contains("continue_as_new"), "{}", f.message);
    let history = h.record(&id).unwrap().orchestration().unwrap();
    assert!(history.log.is_empty() && history.commands.is_empty(), "a failed history is not kept");
}

#[test]
fn a_fan_out_over_the_limit_fails_the_orchestration_and_sends_nothing() {
    let mut h = harness(small());
    let start = h.start("FanOut", "wide", 11u64);
    let id = start.target.clone();
    let out = h.deliver(start);
    assert_eq!(failure(&h, &id).kind, "FanOutTooLarge");
    assert!(out.emitted().all(|e| !e.target.starts_with("activity:")), "nothing past the limit leaves");
    let start = h.start("FanOut", "fits", 10u64);
    let fits = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(h.output::<u64>(&fits), Some(examples::fan_out_expected(10)));
}

#[test]
fn the_inbox_and_an_entity_queue_hold_at_most_their_limit() {
    let mut h = harness(small());
    let start = h.start("Ticker", "t", (0u32, 5u32));
    let id = start.target.clone();
    h.deliver(start);
    for i in 0..4 {
        let other = h.raise(&id, "other", i);
        let out = h.deliver(other);
        assert_eq!(out.dead_letters.len(), usize::from(i == 3), "event {i}");
    }
    assert!(h.dead_letters()[0].reason.contains("DURABLE_MAX_INBOX"));
    assert_eq!(h.record(&id).unwrap().orchestration().unwrap().inbox.len(), 3);

    let start = h.start("Holder", "h", ());
    let holder = start.target.clone();
    h.deliver(start);
    h.run();
    let held = InstanceId::entity("Text", "held");
    for i in 0..3 {
        let op = h.signal(&held, "append", "z");
        let out = h.deliver(op);
        assert_eq!(out.dead_letters.len(), usize::from(i == 2), "operation {i}");
    }
    assert!(h.dead_letters().last().unwrap().reason.contains("DURABLE_MAX_ENTITY_QUEUE"));
    let go = h.raise(&holder, "go", 1);
    h.deliver(go);
    h.run();
    assert_eq!(h.entity_state::<Text>(&held).unwrap().text, "zz", "the two queued operations ran");
    assert!(matches!(
        h.record(&holder).unwrap().orchestration().unwrap().status,
        OrchestrationStatus::Completed { .. }
    ));
}

/// An activity result or an entity call's result too large to travel back reaches the caller as
/// a `ResultTooLarge` failure (it was dead-lettered on its way, and the caller waited forever);
/// the entity's operation is refused, its state unchanged. One that fits arrives as usual.
#[test]
fn results_over_the_limit_reach_the_caller_as_result_too_large() {
    let mut h = harness(small());
    let start = h.start("BigResultCaller", "big", 200usize);
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    let f = failure(&h, &id);
    assert_eq!(f.kind, "ResultTooLarge");
    assert!(f.message.contains("over the limit of 100 (DURABLE_MAX_STATE_BYTES)"), "{}", f.message);
    let start = h.start("BigResultCaller", "fits", 50usize);
    let fits = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(h.output::<usize>(&fits), Some(50));

    let start = h.start("EchoCaller", "echo", 200usize);
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(failure(&h, &id).kind, "ResultTooLarge");
    assert!(h.entity_state::<Text>(&InstanceId::entity("Text", "echo")).is_none(), "the operation changed nothing");
    assert!(h.dead_letters().iter().any(|d| d.reason.contains("the state is unchanged")));
    let start = h.start("EchoCaller", "echo-fits", 20usize);
    let fits = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(h.output::<usize>(&fits), Some(20));
}

/// What an instance keeps waiting is bounded in bytes, not only in count: a few large events
/// fill it, the next is dead-lettered with the setting to change (a call is answered
/// `QueueFull`), and what was kept still applies. Shown for an entity's queue behind a lock, for
/// events raised before an orchestration's start, and for a suspended orchestration.
#[test]
fn what_an_instance_keeps_waiting_is_bounded_in_bytes() {
    let limits = Limits { max_buffered_bytes: 2_200, ..Limits::default() };
    let mut h = harness(limits);
    let big = "q".repeat(600);
    // An entity's queue behind a lock.
    let start = h.start("Holder", "h", ());
    let holder = start.target.clone();
    h.deliver(start);
    h.run();
    let held = InstanceId::entity("Text", "held");
    for i in 0..4 {
        let op = h.signal(&held, "append", &big);
        let out = h.deliver(op);
        assert_eq!(out.dead_letters.len(), usize::from(i == 3), "operation {i}: {:?}", out.dead_letters);
    }
    assert!(h.dead_letters().last().unwrap().reason.contains("DURABLE_MAX_BUFFERED_BYTES"));
    let go = h.raise(&holder, "go", 1);
    h.deliver(go);
    h.run();
    assert_eq!(h.entity_state::<Text>(&held).unwrap().text.len(), 3 * 600, "the kept operations ran");

    // Events raised before the start (signal-with-start).
    let pending = InstanceId::orchestration("Ticker", "p").canonical();
    for i in 0..4 {
        let e = h.raise(&pending, "other", &big);
        let out = h.deliver(e);
        assert_eq!(out.dead_letters.len(), usize::from(i == 3), "raise {i}: {:?}", out.dead_letters);
    }
    assert!(h.dead_letters().last().unwrap().reason.contains("DURABLE_MAX_BUFFERED_BYTES"));
    assert_eq!(h.record(&pending).unwrap().orchestration().unwrap().inbox.len(), 3);

    // A suspended orchestration's kept events.
    let start = h.start("Ticker", "s", (0u32, 5u32));
    let ticker = start.target.clone();
    h.deliver(start);
    let suspend = h.client(&ticker, durable_schemas::Event::Suspend { reason: "test".into() });
    h.deliver(suspend);
    for i in 0..4 {
        let e = h.raise(&ticker, "other", &big);
        let out = h.deliver(e);
        assert_eq!(out.dead_letters.len(), usize::from(i == 3), "kept {i}: {:?}", out.dead_letters);
    }
    assert!(h.dead_letters().last().unwrap().reason.contains("DURABLE_MAX_BUFFERED_BYTES"));
}
