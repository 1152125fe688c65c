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
    let mut e = deposit("later", &mallory(), 1);
    e.body = Event::WithDelay { fire_at: 32_503_680_000_000, inner: Box::new(e.body) }; // the year 3000
    let out = h.deliver(e);
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
    let mut far = deposit("far", &alice(), 1);
    far.body = Event::WithDelay { fire_at: now + 60_001, inner: Box::new(far.body) };
    let out = h.deliver(far);
    assert_eq!(out.dead_letters.len(), 1);
    assert!(out.dead_letters[0].reason.contains("DURABLE_MAX_DELAY"), "{}", out.dead_letters[0].reason);
    let mut near = deposit("near", &alice(), 1);
    near.body = Event::WithDelay { fire_at: now + 60_000, inner: Box::new(near.body) };
    let out = h.deliver(near);
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
