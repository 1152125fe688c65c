//! Hostile tenants: what an event brings — an id for the duplicate window, a delay to park — is
//! remembered only once its sender was found allowed to send it, so a refused producer leaves
//! nothing behind but its dead letter.

use durable_schemas::{Envelope, Event, Payload};

use crate::access::{Policy, Principal};
use crate::engine::Limits;
use crate::examples::{self, Account};
use crate::harness::Harness;
use crate::id::InstanceId;
use crate::registry::Registry;
use crate::Effect;

fn alice() -> Principal {
    Principal::new("alice", Vec::<String>::new())
}
fn mallory() -> Principal {
    Principal::new("mallory", Vec::<String>::new())
}

fn harness() -> Harness {
    Harness::new(examples::register(Registry::new())).with_policy(Policy::enforcing())
}

fn a1() -> InstanceId {
    InstanceId::entity("Account", "a1")
}

fn balance(h: &Harness) -> i64 {
    h.entity_state::<Account>(&a1()).map_or(0, |a| a.balance)
}

/// `principal`'s deposit of `amount` into a1 with event id `id`.
fn deposit(id: &str, principal: &Principal, amount: i64) -> Envelope {
    let body = Event::EntityOperation { operation: "deposit".into(), input: Payload::json(&amount).expect("json") };
    let mut e = Envelope::new(id, a1().canonical(), 1_700_000_000_000, body);
    e.source = Some("client:test".into());
    Harness::as_principal(e, principal)
}

/// `e` sent to be applied at `fire_at` (inside `WithDelay`).
fn later(mut e: Envelope, fire_at: i64) -> Envelope {
    e.body = Event::WithDelay { fire_at, inner: Box::new(e.body) };
    e
}

/// mallory sends a refused event with the id alice will use: alice's event still applies.
#[test]
fn a_refused_event_does_not_burn_its_id() {
    let mut h = harness();
    h.deliver(deposit("open", &alice(), 10));
    let out = h.deliver(deposit("alice-42", &mallory(), 1));
    assert_eq!(out.dead_letters.len(), 1, "mallory is refused");
    let out = h.deliver(deposit("alice-42", &alice(), 5));
    assert!(out.dropped.is_empty(), "alice's event is new: {:?}", out.dropped);
    assert_eq!(balance(&h), 15);
}

/// mallory floods a1 with refused events to push alice's id out of the window: alice's retry is
/// still recognised as a duplicate.
#[test]
fn refused_events_do_not_flush_the_duplicate_window() {
    let mut h = harness();
    h.deliver(deposit("open", &alice(), 10));
    h.deliver(deposit("alice-1", &alice(), 5));
    for i in 0..crate::history::EXTERNAL_ID_WINDOW + 10 {
        h.deliver(deposit(&format!("flood-{i}"), &mallory(), 1));
    }
    let out = h.deliver(deposit("alice-1", &alice(), 5));
    assert_eq!(out.dropped.len(), 1, "alice's retry is a duplicate");
    assert_eq!(balance(&h), 15, "applied once");
}

/// A delayed event is authorized before it is parked: mallory's delay parks nothing.
#[test]
fn a_delayed_event_from_a_sender_without_rights_parks_nothing() {
    let mut h = harness();
    h.deliver(deposit("open", &alice(), 10));
    let out = h.deliver(later(deposit("later", &mallory(), 1), 32_503_680_000_000)); // the year 3000
    assert!(!out.effects.iter().any(|e| matches!(e, Effect::Delay { .. })), "nothing parked: {:?}", out.effects);
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.starts_with("Forbidden: "), "{}", out.dead_letters[0].reason);
    assert!(h.take_timers().is_empty());
}

/// A delay beyond the maximum is refused with the setting to change; one within it is parked.
#[test]
fn a_delay_past_the_maximum_is_refused() {
    let limits = Limits { max_delay_ms: 60_000, ..Limits::default() };
    let mut h = harness().with_limits(limits);
    h.deliver(deposit("open", &alice(), 10));
    let now = h.now();
    let out = h.deliver(later(deposit("far", &alice(), 1), now + 60_001));
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.contains("DURABLE_MAX_DELAY"), "{}", out.dead_letters[0].reason);
    let out = h.deliver(later(deposit("near", &alice(), 1), now + 60_000));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(h.take_timers().len(), 1);
}

/// Application code that holds a value whose drop panics, across an await: terminating,
/// suspending-then-terminating or purging it drops the code, and the panic is caught there —
/// it does not unwind through the engine (and the partition core, and the worker).
#[test]
fn code_that_panics_when_dropped_is_dropped_safely() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("boom as the code is dropped");
            }
        }
    }
    async fn bomb(ctx: crate::OrchestrationContext, (): ()) -> Result<(), durable_schemas::Failure> {
        let _bomb = Bomb;
        let _: u32 = ctx.wait_for_event("never").await?;
        Ok(())
    }
    let mut h = Harness::new(Registry::new().orchestration("Bomb", bomb));
    for (key, then) in [("t", None), ("s", Some(Event::Suspend { reason: "x".into() }))] {
        let start = h.start("Bomb", key, ());
        let id = start.target.clone();
        h.deliver(start);
        if let Some(then) = then {
            let e = h.client(&id, then);
            h.deliver(e);
        }
        let stop = h.terminate(&id, "stop");
        h.deliver(stop);
        assert_eq!(h.status(&id).map(|s| s.word()), Some("terminated"), "{key}");
        let purge = h.client(&id, Event::Purge { reason: "gone".into() });
        h.deliver(purge);
    }
}

/// The burn and the real event in one step (one group of records): the refused first copy does
/// not make the allowed second one a duplicate; a second allowed copy in the same step is one.
#[test]
fn a_refused_event_does_not_burn_its_id_within_one_step() {
    let mut h = harness();
    h.deliver(deposit("open", &alice(), 10));
    let out = h.deliver_batch(vec![deposit("x", &mallory(), 1), deposit("x", &alice(), 5), deposit("x", &alice(), 5)]);
    assert_eq!(out.dead_letters.len(), 1, "mallory's copy is refused");
    assert_eq!(out.dropped.len(), 1, "alice's second copy is a duplicate");
    assert_eq!(balance(&h), 15);
}

/// A step of a1 at `now` with `envelopes`, each sealed by a processor (as the API's are).
fn sealed_step(
    engine: &crate::engine::Engine,
    record: Option<crate::history::InstanceRecord>,
    envelopes: Vec<Envelope>,
    now: i64,
) -> crate::engine::StepOutput {
    let deliveries =
        envelopes.into_iter().map(|envelope| crate::engine::Delivery { envelope, offset: None, sealed: true });
    let input = crate::engine::StepInput { deliveries: deliveries.collect(), now, partition: Some(0), trigger: None };
    engine.step(&a1(), record, input)
}

fn engine() -> crate::engine::Engine {
    crate::engine::Engine::new(examples::register(Registry::new())).with_policy(Policy::enforcing())
}

fn balance_of(record: &crate::history::InstanceRecord) -> i64 {
    let state = record.entity().and_then(|e| e.state.as_ref()).expect("a1 has a state");
    state.decode::<Account>().expect("an account").balance
}

/// A deposit as the API seals it: alice's, at `at`.
fn api_deposit(id: &str, amount: i64, at: i64) -> Envelope {
    let mut e = deposit(id, &alice(), amount);
    e.timestamp = at;
    e
}

/// Someone who captured alice's sealed deposit sends it again after its id left the window: it
/// is refused (it was sealed no later than an id the window forgot), and the balance counts it
/// once. Before replay protection the copy was applied a second time.
#[test]
fn a_captured_sealed_record_sent_again_after_its_id_left_the_window_is_refused() {
    let engine = engine();
    let t0 = 1_700_000_000_000;
    let captured = api_deposit("alice-pay", 100, t0 + 1);
    let mut record = sealed_step(&engine, None, vec![api_deposit("open", 10, t0), captured.clone()], t0 + 5).record;
    assert_eq!(balance_of(&record), 110);
    // Alice's ordinary traffic turns the window over.
    for i in 0..crate::history::EXTERNAL_ID_WINDOW {
        let at = t0 + 10 + i as i64;
        record = sealed_step(&engine, Some(record), vec![api_deposit(&format!("d{i}"), 0, at)], at).record;
    }
    let now = t0 + 60_000;
    let out = sealed_step(&engine, Some(record.clone()), vec![captured], now);
    assert_eq!(out.dead_letters.len(), 1, "the copy is refused: {:?}", out.dropped);
    assert!(out.dead_letters[0].reason.contains("cannot be told from a replay"), "{}", out.dead_letters[0].reason);
    assert_eq!(balance_of(&out.record), 110, "applied once");
    // Alice's new deposit, sealed now, still applies.
    let out = sealed_step(&engine, Some(out.record), vec![api_deposit("alice-next", 1, now)], now);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(balance_of(&out.record), 111);
}

/// A sealed record older than the freshness (or as far ahead of the clock) is refused with the
/// setting to change, even for an instance that never saw it: a purged instance forgets its window.
#[test]
fn a_sealed_record_older_than_the_freshness_is_refused() {
    let engine = engine();
    let t0 = 1_700_000_000_000;
    let day = crate::engine::Limits::MAX_SEALED_AGE_MS;
    let record = sealed_step(&engine, None, vec![api_deposit("open", 10, t0)], t0).record;
    for at in [t0 - 1, t0 + 2 * day + 1] {
        let out = sealed_step(&engine, Some(record.clone()), vec![api_deposit("old", 5, at)], t0 + day);
        assert_eq!(out.dead_letters.len(), 1, "sealed at {at}");
        assert!(out.dead_letters[0].reason.contains("DURABLE_MAX_SEALED_AGE"), "{}", out.dead_letters[0].reason);
    }
    let out = sealed_step(&engine, Some(record), vec![api_deposit("fresh", 5, t0 + 1)], t0 + day);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(balance_of(&out.record), 15);
    // An unsealed event's timestamp proves nothing and is not checked (the Harness delivers so).
    let mut h = harness();
    h.deliver(deposit("open", &alice(), 10));
    let mut old = deposit("old", &alice(), 5);
    old.timestamp = 0;
    assert!(h.deliver(old).dead_letters.is_empty());
}

/// A producer allowed to signal a1 parks delayed events: past the most one instance may have
/// waiting, the next is refused; once some are due there is room again. Their bytes count
/// against the buffered bytes.
#[test]
fn delayed_events_parked_for_one_instance_are_capped_by_count_and_bytes() {
    let limits = Limits { max_delayed: 3, ..Limits::default() };
    let mut h = harness().with_limits(limits);
    h.deliver(deposit("open", &alice(), 10));
    let now = h.now();
    let delayed = |id: &str, due: i64| later(deposit(id, &alice(), 1), due);
    for i in 0..3 {
        let out = h.deliver(delayed(&format!("later-{i}"), now + 1_000 + i));
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    }
    let out = h.deliver(delayed("one-too-many", now + 5_000));
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.contains("DURABLE_MAX_DELAYED"), "{}", out.dead_letters[0].reason);
    assert_eq!(h.record(&a1().canonical()).unwrap().parked.len(), 3);
    // The first comes due: there is room for one more.
    h.advance(1_000);
    let out = h.deliver(delayed("after-one-fired", now + 5_000));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(h.record(&a1().canonical()).unwrap().parked.len(), 3);

    // Bytes: a buffer of 2,000 bytes holds one large delayed event, not two.
    let limits = Limits { max_buffered_bytes: 2_000, ..Limits::default() };
    let mut h = harness().with_limits(limits);
    h.deliver(deposit("open", &alice(), 10));
    let now = h.now();
    let large = |id: &str| {
        let mut e = deposit(id, &alice(), 1);
        let Event::WithPrincipal { inner, .. } = &mut e.body else { panic!("{:?}", e.body) };
        **inner =
            Event::EntityOperation { operation: "deposit".into(), input: Payload::json(&"x".repeat(1_200)).unwrap() };
        later(e, now + 1_000)
    };
    assert!(h.deliver(large("big-1")).dead_letters.is_empty());
    let out = h.deliver(large("big-2"));
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.contains("DURABLE_MAX_BUFFERED_BYTES"), "{}", out.dead_letters[0].reason);
}
