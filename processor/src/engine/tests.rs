use durable_schemas::{Envelope, Event, Failure, Payload};
use proptest::prelude::*;

use super::*;

mod access;
mod adversary;
mod limits;
mod locks;
mod operations;
mod quota;
use crate::context::{when_any, OrchestrationContext};
use crate::examples::{self, ApprovalInput};
use crate::harness::Harness;
use crate::history::{CommandKind, Completion};

fn harness() -> Harness {
    Harness::new(examples::register(Registry::new()))
}

fn activity_requests(pending: &[Envelope]) -> Vec<Envelope> {
    pending.iter().filter(|e| e.target.starts_with("activity:")).cloned().collect()
}

/// The reply of activity `activity` to `correlation` of `target`, as the runtime sends it (from
/// the invocation's id).
fn reply_from(activity: &str, target: &str, correlation: &str, result: &str) -> Envelope {
    let mut e = Envelope::new(
        format!("{target}/{correlation}/manual"),
        target,
        0,
        Event::ActivityCompleted { correlation: correlation.into(), result: Payload::json(result).unwrap() },
    );
    e.source = Some(InstanceId::new(Kind::Activity, activity, format!("{target}#{correlation}")).unwrap().canonical());
    e
}

/// A reply of the `Square` activity.
fn reply(target: &str, correlation: &str, result: &str) -> Envelope {
    reply_from("Square", target, correlation, result)
}

#[test]
fn hello_sequence_calls_five_activities_in_order() {
    let mut h = harness();
    let start = h.start("HelloSequence", "h1", Vec::<String>::new());
    let id = start.target.clone();
    h.deliver(start);
    let mut order = Vec::new();
    loop {
        let pending = h.take_pending();
        let requests = activity_requests(&pending);
        if requests.is_empty() {
            break;
        }
        assert_eq!(requests.len(), 1, "one activity at a time");
        order.push(ActivityRequestView::of(&requests[0]).input);
        let reply = h.run_activity(requests[0].clone());
        h.take_pending();
        h.deliver(reply);
    }
    assert_eq!(order, ["\"Tokyo\"", "\"Seattle\"", "\"London\"", "\"Paris\"", "\"Cairo\""]);
    let out: Vec<String> = h.output(&id).unwrap();
    assert_eq!(out, ["Hello Tokyo!", "Hello Seattle!", "Hello London!", "Hello Paris!", "Hello Cairo!"]);
}

struct ActivityRequestView {
    input: String,
    attempt: u32,
}

impl ActivityRequestView {
    fn of(e: &Envelope) -> Self {
        let req = crate::context::ActivityRequest::parse(e).unwrap();
        Self { input: String::from_utf8(req.input.data).unwrap(), attempt: req.attempt }
    }
}

#[test]
fn replies_count_only_for_issued_slots_from_the_commanded_instance() {
    let mut h = harness();
    let start = h.start("HelloSequence", "early", vec!["A", "B", "C"]);
    let id = start.target.clone();
    h.deliver(start);
    h.take_pending();
    // A reply for slot 1, which the code has not asked for: no one could have sent it.
    let out = h.deliver(reply_from("SayHello", &id, "0.1", "Hello B!"));
    assert!(out.dead_letters[0].reason.contains("never issued"), "{:?}", out.dead_letters);
    assert!(h.record(&id).unwrap().orchestration().unwrap().early.is_empty(), "nothing is buffered");
    // Slot 0 is a SayHello call: a reply from another activity, an entity, or with no source is
    // refused, and so is a timer's answer from the right instance.
    let mut forged = vec![reply_from("Square", &id, "0.0", "x"), reply_from("SayHello", &id, "0.0", "x")];
    forged[1].source = Some("entity:Counter:c".into());
    let mut anonymous = reply_from("SayHello", &id, "0.0", "x");
    anonymous.source = None;
    forged.push(anonymous);
    let mut timer = Envelope::new("t", id.clone(), 0, Event::TimerFired { correlation: "0.0".into() });
    timer.source = Some(id.clone());
    forged.push(timer);
    for e in forged {
        let out = h.deliver(e);
        assert!(out.dead_letters[0].reason.contains("only the instance the slot commanded"), "{:?}", out.dead_letters);
    }
    assert!(h.record(&id).unwrap().orchestration().unwrap().log.is_empty());
    // The real replies complete the slots in turn.
    for (slot, city) in ["A", "B", "C"].iter().enumerate() {
        h.deliver(reply_from("SayHello", &id, &format!("0.{slot}"), &format!("Hello {city}!")));
        h.take_pending();
    }
    assert_eq!(h.output::<Vec<String>>(&id).unwrap(), ["Hello A!", "Hello B!", "Hello C!"]);
}

#[test]
fn duplicate_completions_are_applied_once() {
    let mut h = harness();
    let start = h.start("FanOut", "dups", 3u64);
    let id = start.target.clone();
    h.deliver(start);
    let requests = activity_requests(&h.take_pending());
    assert_eq!(requests.len(), 3);
    let replies: Vec<Envelope> = requests.into_iter().map(|r| h.run_activity(r)).collect();
    h.take_pending();
    // Same event twice (a redelivery without offsets) and a re-run activity's reply.
    h.deliver(replies[0].clone());
    let again = h.deliver(replies[0].clone());
    assert_eq!(again.dropped[0].reason, DropReason::SlotAlreadyCompleted);
    let mut rerun = replies[0].clone();
    rerun.id = "another-id".into();
    let again = h.deliver(rerun);
    assert_eq!(again.dropped[0].reason, DropReason::SlotAlreadyCompleted);
    h.deliver_batch(vec![replies[2].clone(), replies[1].clone(), replies[2].clone()]);
    assert_eq!(h.output::<u64>(&id), Some(examples::fan_out_expected(3)));
    let log = &h.record(&id).unwrap().orchestration().unwrap().log;
    assert_eq!(log.len(), 3, "each result recorded once");
}

#[test]
fn redelivered_offsets_are_dropped_and_flagged_for_outbox_resend() {
    let mut h = harness();
    let counter = InstanceId::entity("Counter", "redelivery");
    let s1 = h.signal(&counter, "add", 2);
    let s2 = h.signal(&counter, "add", 3);
    h.deliver_at_offsets(vec![(s1.clone(), 10), (s2.clone(), 11)]);
    let out = h.deliver_at_offsets(vec![(s1, 10), (s2, 11)]);
    assert!(!out.changed);
    assert!(out.redelivered());
    assert_eq!(h.entity_state::<examples::Counter>(&counter).unwrap().value, 5);
}

#[test]
fn timer_firing_after_the_awaited_event_won_changes_nothing() {
    let mut h = harness();
    let input = ApprovalInput { counter: "c-timer".into(), amount: 7 };
    let start = h.start("Approval", "a1", &input);
    let id = start.target.clone();
    h.deliver(start);
    // Run until the orchestration waits for approval (the retried activity and its timers).
    h.run_until(h.now() + 60_000);
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Running));
    let timers = h.take_timers();
    assert_eq!(timers.len(), 1, "the one-hour approval timer is parked");
    let raise = h.raise(&id, "approve", true);
    h.deliver(raise);
    h.run_until(h.now());
    assert_eq!(h.output::<String>(&id).unwrap(), examples::approval_expected(&input));
    // The timer fires an hour later: recorded, ignored, the result does not change.
    let fired = h.fire(timers.into_iter().next().unwrap());
    assert_eq!(fired.dropped[0].reason, DropReason::Finished);
    assert_eq!(h.output::<String>(&id).unwrap(), examples::approval_expected(&input));
}

#[test]
fn timer_wins_when_no_event_comes() {
    let mut h = harness();
    let input = ApprovalInput { counter: "c-timeout".into(), amount: 1 };
    let start = h.start("Approval", "a2", &input);
    let id = start.target.clone();
    h.deliver(start);
    h.run(); // fires the one-hour timer too: nothing else is pending
    let out: String = h.output(&id).unwrap();
    assert!(out.contains("approved=false"), "{out}");
}

#[test]
fn external_event_that_arrives_early_waits_in_the_buffer() {
    let mut h = harness();
    let input = ApprovalInput { counter: "c-early".into(), amount: 2 };
    let start = h.start("Approval", "a3", &input);
    let id = start.target.clone();
    let raise = h.raise(&id, "approve", true);
    h.deliver_batch(vec![start, raise]);
    let history = h.record(&id).unwrap().orchestration().unwrap();
    assert_eq!(history.inbox.len(), 1, "buffered: nobody waits for it yet");
    h.run();
    assert_eq!(h.output::<String>(&id).unwrap(), examples::approval_expected(&input));
}

#[test]
fn retry_succeeds_on_the_third_attempt_driven_by_durable_timers() {
    let mut h = harness();
    let input = ApprovalInput { counter: "c-retry".into(), amount: 1 };
    let start = h.start("Approval", "a4", &input);
    let id = start.target.clone();
    h.deliver(start);
    let mut attempts = Vec::new();
    let mut delays = Vec::new();
    for round in 0..3 {
        let requests = activity_requests(&h.take_pending());
        assert_eq!(requests.len(), 1);
        attempts.push(ActivityRequestView::of(&requests[0]).attempt);
        let reply = h.run_activity(requests[0].clone());
        h.take_pending();
        h.deliver(reply);
        if round < 2 {
            let timer = h.take_timers().into_iter().next().expect("a retry timer");
            delays.push(timer.0 - h.now());
            h.fire(timer);
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(delays, [1000, 2000], "first interval, then doubled");
    let kinds: Vec<CommandKind> =
        h.record(&id).unwrap().orchestration().unwrap().commands.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds[..5],
        [
            CommandKind::CallActivity,
            CommandKind::CreateTimer,
            CommandKind::CallActivity,
            CommandKind::CreateTimer,
            CommandKind::CallActivity
        ]
    );
}

#[test]
fn continue_as_new_keeps_buffered_events() {
    let mut h = harness();
    let start = h.start("Ticker", "t1", (0u32, 3u32));
    let id = start.target.clone();
    h.deliver(start);
    let ticks: Vec<Envelope> = (0..3).map(|i| h.raise(&id, "tick", i)).collect();
    let out = h.deliver_batch(ticks);
    assert!(out.dropped.is_empty());
    assert_eq!(h.output::<u32>(&id), Some(3));
    assert_eq!(h.record(&id).unwrap().orchestration().unwrap().generation, 2);
}

#[test]
fn stale_replies_from_an_earlier_generation_are_dropped() {
    let mut h = harness();
    let start = h.start("Ticker", "t2", (0u32, 5u32));
    let id = start.target.clone();
    h.deliver(start);
    let tick = h.raise(&id, "tick", 1);
    h.deliver(tick);
    let out = h.deliver(reply(&id, "0.0", "late"));
    assert_eq!(out.dropped[0].reason, DropReason::StaleGeneration);
}

async fn racer(ctx: OrchestrationContext, (): ()) -> Result<usize, Failure> {
    let a = ctx.call_activity::<_, String>("Square", 1u64);
    let b = ctx.call_activity::<_, String>("Square", 2u64);
    let (winner, _) = when_any(vec![a, b]).await;
    // Wait for something else, so the result is checked again after a replay.
    let _: u32 = ctx.wait_for_event("go").await?;
    Ok(winner)
}

fn racer_harness() -> Harness {
    Harness::new(examples::register(Registry::new()).orchestration("Racer", racer))
}

#[test]
fn when_any_winner_is_decided_by_arrival_order_not_argument_order() {
    for batch in [false, true] {
        let mut h = racer_harness();
        let start = h.start("Racer", "r", ());
        let id = start.target.clone();
        h.deliver(start);
        h.take_pending();
        let second = reply(&id, "0.1", "\"4\"");
        let first = reply(&id, "0.0", "\"1\"");
        if batch {
            h.deliver_batch(vec![second, first]);
        } else {
            h.deliver(second);
            h.deliver(first);
        }
        // A later step replays both completions and must pick the same winner.
        let go = h.raise(&id, "go", 1);
        h.deliver(go);
        assert_eq!(h.output::<usize>(&id), Some(1), "batch={batch}");
    }
}

async fn diverging(ctx: OrchestrationContext, (): ()) -> Result<(), Failure> {
    let _: u64 = ctx.call_activity("Square", 3u64).await?;
    let _: u64 = ctx.call_activity("Square", 4u64).await?;
    Ok(())
}

async fn diverged(ctx: OrchestrationContext, (): ()) -> Result<(), Failure> {
    ctx.create_timer_after(std::time::Duration::from_secs(1)).await;
    Ok(())
}

#[test]
fn replay_that_asks_for_something_else_fails_with_a_typed_nondeterminism_error() {
    let id = InstanceId::orchestration("Flow", "n1");
    let v1 = Engine::new(Registry::new().orchestration("Flow", diverging));
    let v2 = Engine::new(Registry::new().orchestration("Flow", diverged));
    let start = Envelope::new("s", id.canonical(), 0, Event::StartOrchestration { input: Payload::null() });
    let step = |engine: &Engine, record, e: Envelope| {
        engine.step(
            &id,
            record,
            StepInput {
                deliveries: vec![Delivery { envelope: e, offset: None, sealed: true }],
                now: 5,
                partition: None,
                trigger: None,
            },
        )
    };
    let first = step(&v1, None, start);
    // The code is redeployed with a different first step; the first reply arrives.
    let out = step(&v2, Some(first.record), reply(&id.canonical(), "0.0", "9"));
    let Some(OrchestrationStatus::Failed { failure }) = out.record.orchestration().map(|h| &h.status) else {
        panic!("expected a failure, got {:?}", out.record.orchestration().map(|h| &h.status));
    };
    assert_eq!(failure.kind, crate::context::NONDETERMINISM);
    assert!(failure.message.contains("CallActivity(Square)"), "{}", failure.message);
    assert!(failure.message.contains("CreateTimer"), "{}", failure.message);
    // It stays failed: more events change nothing and never spin.
    let again = step(&v2, Some(out.record), reply(&id.canonical(), "0.1", "16"));
    assert_eq!(again.dropped[0].reason, DropReason::Finished);
}

#[test]
fn identical_input_gives_identical_output() {
    let engine = Engine::new(examples::register(Registry::new()));
    let id = InstanceId::orchestration("FanOut", "det");
    let input = || StepInput {
        deliveries: vec![Delivery {
            envelope: Envelope::new(
                "s",
                id.canonical(),
                0,
                Event::StartOrchestration { input: Payload::json(&20).unwrap() },
            ),
            offset: Some(7),
            sealed: true,
        }],
        now: 1000,
        partition: Some(3),
        trigger: None,
    };
    let a = engine.step(&id, None, input());
    let b = engine.step(&id, None, input());
    assert_eq!(a.effects, b.effects);
    assert_eq!(a.record, b.record);
    assert_eq!(a.emitted().count(), 20);
    let origins: Vec<_> = a.emitted().map(|e| e.origin.clone().unwrap()).collect();
    assert!(origins.windows(2).all(|w| w[0].stream == "p3" && w[0].seq < w[1].seq));
    assert_eq!(origins[0].seq, 7 << 20);
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Replayed {
    uuid: String,
    random: u64,
    now: i64,
    flags: Vec<bool>,
}

async fn replay_safe(ctx: OrchestrationContext, (): ()) -> Result<(Replayed, Replayed), Failure> {
    let first =
        Replayed { uuid: ctx.new_uuid(), random: ctx.random(), now: ctx.now(), flags: vec![ctx.is_replaying()] };
    ctx.set_custom_status(&first.uuid);
    let _: u64 = ctx.call_activity("Square", 2u64).await?;
    let second =
        Replayed { uuid: ctx.new_uuid(), random: ctx.random(), now: ctx.now(), flags: vec![ctx.is_replaying()] };
    Ok((first, second))
}

#[test]
fn now_uuid_random_and_is_replaying_are_replay_safe() {
    let mut h = Harness::new(examples::register(Registry::new()).orchestration("Safe", replay_safe));
    let start = h.start("Safe", "s", ());
    let id = start.target.clone();
    let t0 = h.now();
    h.deliver(start);
    let status_uuid: String =
        h.record(&id).unwrap().orchestration().unwrap().custom_status.as_ref().unwrap().decode().unwrap();
    h.advance(5000);
    h.run();
    let (first, second): (Replayed, Replayed) = h.output(&id).unwrap();
    assert_eq!(first.uuid, status_uuid, "the uuid made in step 1 is made again on replay");
    assert_eq!(first.now, t0);
    assert_eq!(second.now, t0 + 5000);
    assert_ne!(first.uuid, second.uuid);
    assert_ne!(first.random, second.random);
    assert_eq!(first.flags, [true], "re-running the start is replay");
    assert_eq!(second.flags, [false]);
    assert_eq!(first.uuid.len(), 36);
    assert_eq!(&first.uuid[14..15], "4");
}

#[test]
fn terminate_stops_the_orchestration_and_answers_its_parent() {
    let mut h = harness();
    let input = ApprovalInput { counter: "c-term".into(), amount: 1 };
    let mut start = h.start("Approval", "a5", &input);
    start.body =
        Event::ReplyTo { address: "orch:Parent:p".into(), correlation: "0.3".into(), inner: Box::new(start.body) };
    let id = start.target.clone();
    h.deliver(start);
    h.take_pending();
    let terminate = h.terminate(&id, "operator said so");
    let out = h.deliver(terminate);
    assert_eq!(h.status(&id), Some(&OrchestrationStatus::Terminated { reason: "operator said so".into() }));
    let answer = out.emitted().find(|e| e.target == "orch:Parent:p").expect("parent is answered");
    assert!(
        matches!(&answer.body, Event::OrchestrationFailed { correlation, failure } if correlation == "0.3" && failure.kind == "Terminated")
    );
    let late = h.deliver(reply(&id, "0.0", "ok"));
    assert_eq!(late.dropped[0].reason, DropReason::Finished);
}

#[test]
fn entity_operations_change_state_reply_to_calls_and_dead_letter_unknown_operations() {
    let mut h = harness();
    let counter = InstanceId::entity("Counter", "e1");
    let add = h.signal(&counter, "add", 5);
    h.deliver(add);
    let mut call = h.signal(&counter, "get", ());
    call.body = Event::ReplyTo { address: "orch:X:x".into(), correlation: "0.0".into(), inner: Box::new(call.body) };
    let out = h.deliver(call);
    let answer = out.emitted().next().unwrap();
    assert!(matches!(&answer.body, Event::OperationResult { outcome: Ok(p), .. } if p.data == b"5"));
    let mut bogus = h.signal(&counter, "explode", ());
    bogus.body = Event::ReplyTo { address: "orch:X:x".into(), correlation: "0.1".into(), inner: Box::new(bogus.body) };
    let out = h.deliver(bogus);
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.contains("explode"));
    assert!(
        matches!(&out.emitted().next().unwrap().body, Event::OperationResult { outcome: Err(f), .. } if f.kind == "UnknownOperation")
    );
    assert_eq!(h.entity_state::<examples::Counter>(&counter).unwrap().value, 5, "state unchanged");
    let delete = h.signal(&counter, "delete", ());
    let out = h.deliver(delete);
    assert!(h.entity_state::<examples::Counter>(&counter).is_none());
    let change = out.effects.iter().find_map(|e| match e {
        Effect::StateChanged(c) => Some(c),
        _ => None,
    });
    assert_eq!(change.unwrap().status, "deleted");
}

#[test]
fn events_for_unregistered_handlers_and_wrong_kinds_are_dead_lettered() {
    let mut h = harness();
    let start = h.start("NoSuchThing", "x", ());
    let out = h.deliver(start);
    assert!(out.dead_letters[0].reason.contains("NoSuchThing"));
    let counter = InstanceId::entity("Counter", "k");
    let raise = h.raise(&counter.canonical(), "approve", true);
    let out = h.deliver(raise);
    assert!(out.dead_letters[0].reason.contains("cannot handle RaiseEvent"));
}

async fn panicking(_ctx: OrchestrationContext, (): ()) -> Result<(), Failure> {
    panic!("boom")
}

#[test]
fn a_panicking_orchestration_fails_instead_of_crashing_the_processor() {
    let mut h = Harness::new(Registry::new().orchestration("Boom", panicking));
    let start = h.start("Boom", "b", ());
    let id = start.target.clone();
    h.deliver(start);
    assert!(
        matches!(h.status(&id), Some(OrchestrationStatus::Failed { failure }) if failure.kind == "Panic" && failure.message.contains("boom"))
    );
}

#[test]
fn history_log_records_completions_in_delivery_order() {
    let mut h = harness();
    let start = h.start("FanOut", "order", 3u64);
    let id = start.target.clone();
    h.deliver(start);
    for (slot, value) in [(2, 4), (0, 0), (1, 1)] {
        h.deliver(reply(&id, &format!("0.{slot}"), &value.to_string()));
    }
    let log = &h.record(&id).unwrap().orchestration().unwrap().log;
    assert_eq!(log.iter().map(|e| e.slot).collect::<Vec<_>>(), [2, 0, 1]);
    assert!(matches!(&log[0].completion, Completion::Value(_)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Replies of a fan-out delivered in any order, in any batches, with duplicates: the output
    /// is always the same and each result is recorded once.
    #[test]
    fn fan_out_result_is_independent_of_order_batching_and_duplicates(
        order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
        dup_mask in proptest::collection::vec(any::<bool>(), 12),
        batch in 1..5usize,
    ) {
        let mut h = harness();
        let start = h.start("FanOut", "any", 12u64);
        let id = start.target.clone();
        h.deliver(start);
        let requests = activity_requests(&h.take_pending());
        let replies: Vec<Envelope> = requests.into_iter().map(|r| h.run_activity(r)).collect();
        h.take_pending();
        let mut stream = Vec::new();
        for i in order {
            stream.push(replies[i].clone());
            if dup_mask[i] {
                stream.push(replies[i].clone());
            }
        }
        for chunk in stream.chunks(batch) {
            h.deliver_batch(chunk.to_vec());
        }
        prop_assert_eq!(h.output::<u64>(&id), Some(examples::fan_out_expected(12)));
        let log = &h.record(&id).unwrap().orchestration().unwrap().log;
        prop_assert_eq!(log.len(), 12);
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Relay {
    forwarded: u32,
}

#[test]
fn entities_signal_entities_start_orchestrations_and_schedule_signals() {
    let relay = crate::context::EntityType::<Relay>::new().operation("forward", |s: &mut Relay, ctx, n: i64| {
        s.forwarded += 1;
        ctx.signal_entity(&InstanceId::entity("Counter", "target"), "add", n)?;
        ctx.signal_entity_at(&InstanceId::entity("Counter", "target"), "add", 100, ctx.now() + 60_000)?;
        ctx.start_orchestration("HelloSequence", "from-entity", vec!["Oslo"])?;
        Ok(())
    });
    let mut h = Harness::new(examples::register(Registry::new()).entity("Relay", relay));
    let relay_id = InstanceId::entity("Relay", "r");
    let signal = h.signal(&relay_id, "forward", 5);
    let out = h.deliver(signal);
    assert_eq!(out.emitted().count(), 2, "a signal and a start, after the commit");
    assert_eq!(out.delayed().map(|(at, _)| at - h.now()).collect::<Vec<_>>(), [60_000]);
    h.run_until(h.now());
    let target = InstanceId::entity("Counter", "target");
    assert_eq!(h.entity_state::<examples::Counter>(&target).unwrap().value, 5);
    assert_eq!(h.output::<Vec<String>>("orch:HelloSequence:from-entity").unwrap(), ["Hello Oslo!"]);
    h.run();
    assert_eq!(h.entity_state::<examples::Counter>(&target).unwrap().value, 105, "the delayed signal arrived");
}

/// Counts `tracing` events (a minimal subscriber: no dependency needed).
struct CountEvents(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn chatty(ctx: OrchestrationContext, (): ()) -> Result<(), Failure> {
    ctx.log("starting");
    let _: u64 = ctx.call_activity("Square", 1u64).await?;
    ctx.log("first done");
    let _: u64 = ctx.call_activity("Square", 2u64).await?;
    ctx.log("second done");
    Ok(())
}

#[test]
fn logging_is_replay_safe_each_line_once() {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = CountEvents(count.clone());
    tracing::subscriber::with_default(subscriber, || {
        let mut h = Harness::new(examples::register(Registry::new()).orchestration("Chatty", chatty));
        let start = h.start("Chatty", "c", ());
        let id = start.target.clone();
        h.deliver(start);
        h.run(); // three steps: each replays the lines before it
        assert!(matches!(h.status(&id), Some(OrchestrationStatus::Completed { .. })));
    });
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
}
