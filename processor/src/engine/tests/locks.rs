//! Critical sections: the lock protocol between an orchestration and its entities.

use durable_schemas::{Envelope, Event, Failure};

use super::harness;
use crate::context::{when_any2, Either, OrchestrationContext, LOCK_VIOLATION};
use crate::engine::DropReason;
use crate::examples::{Account, TransferInput, TransferOutcome};
use crate::harness::Harness;
use crate::history::{EntityState, OrchestrationStatus};
use crate::id::InstanceId;
use crate::registry::Registry;

fn account(key: &str) -> InstanceId {
    InstanceId::entity("Account", key)
}

fn entity_state<'a>(h: &'a Harness, id: &InstanceId) -> &'a EntityState {
    h.record(&id.canonical()).and_then(|r| r.entity()).expect("entity exists")
}

fn balance(h: &Harness, key: &str) -> i64 {
    h.entity_state::<Account>(&account(key)).map_or(0, |a| a.balance)
}

fn open_accounts(h: &mut Harness, funds: &[(&str, i64)]) {
    for (key, amount) in funds {
        let deposit = h.signal(&account(key), "deposit", amount);
        h.deliver(deposit);
    }
}

fn transfer(h: &mut Harness, key: &str, from: &str, to: &str, amount: i64) -> Envelope {
    h.start("Transfer", key, TransferInput { from: from.into(), to: to.into(), amount })
}

/// Deliver pending events in an order picked by `seed` until nothing is pending.
fn run_shuffled(h: &mut Harness, mut seed: u64) {
    for _ in 0..10_000 {
        if h.pending().is_empty() {
            return;
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let i = (seed >> 33) as usize % h.pending().len();
        h.deliver_pending(i);
    }
    panic!("did not settle");
}

fn assert_unlocked(h: &Harness, keys: &[&str]) {
    for key in keys {
        let state = entity_state(h, &account(key));
        assert_eq!(state.lock, None, "{key} is still locked");
        assert!(state.queue.is_empty(), "{key} still has queued work: {:?}", state.queue);
    }
}

#[test]
fn locks_are_requested_in_sorted_order_whatever_the_argument_order() {
    let mut h = harness();
    let start = transfer(&mut h, "t", "b", "a", 1);
    let out = h.deliver(start);
    let request = out.emitted().next().unwrap();
    assert_eq!(request.target, "entity:Account:a");
    assert!(
        matches!(&request.body, Event::LockRequest { participants, position: 0, .. } if participants == &["entity:Account:a", "entity:Account:b"])
    );
}

#[test]
fn two_transfers_racing_for_the_same_pair_are_serialized_in_any_delivery_order() {
    for seed in 0..200 {
        let mut h = harness();
        open_accounts(&mut h, &[("a", 100), ("b", 50)]);
        let t1 = transfer(&mut h, "t1", "a", "b", 70);
        let t2 = transfer(&mut h, "t2", "b", "a", 100);
        let deposit = h.signal(&account("a"), "deposit", 5);
        let (id1, id2) = (t1.target.clone(), t2.target.clone());
        h.deliver(t1);
        h.deliver(t2);
        h.deliver(deposit.clone());
        run_shuffled(&mut h, seed);
        let outcome = |id: &str| {
            h.output::<TransferOutcome>(id).unwrap_or_else(|| panic!("seed {seed}: {id} {:?}", h.status(id)))
        };
        let (o1, o2) = (outcome(&id1), outcome(&id2));
        // Whichever went first, the other saw its effect: never both refused, never an overdraft.
        let (a, b) = (balance(&h, "a"), balance(&h, "b"));
        assert_eq!(a + b, 155, "seed {seed}: money is conserved");
        assert!(a >= 0 && b >= 0);
        let moved_out_of_a = if o1 == TransferOutcome::Transferred { 70 } else { 0 };
        let moved_out_of_b = if o2 == TransferOutcome::Transferred { 100 } else { 0 };
        assert_eq!(a, 105 - moved_out_of_a + moved_out_of_b, "seed {seed}: each transfer applied exactly once");
        assert!(o1 == TransferOutcome::Transferred || o2 == TransferOutcome::Transferred, "seed {seed}: {o1:?} {o2:?}");
        assert_unlocked(&h, &["a", "b"]);
    }
}

#[test]
fn operations_sent_to_a_locked_entity_wait_in_arrival_order_and_run_after_release() {
    let mut h = harness();
    open_accounts(&mut h, &[("a", 10), ("b", 0)]);
    let start = transfer(&mut h, "t", "a", "b", 10);
    let id = start.target.clone();
    h.deliver(start);
    // Acquire: request to a (locks, forwards), to b (locks, grants), grant to the owner.
    for _ in 0..3 {
        h.deliver_pending(0);
    }
    assert_eq!(entity_state(&h, &account("a")).lock.as_ref().map(|l| l.owner.as_str()), Some(id.as_str()));
    // Queued in this order, these leave 0 behind; run the other way round the withdraw fails.
    let first = h.signal(&account("a"), "deposit", 5);
    let second = h.signal(&account("a"), "withdraw", 5);
    h.deliver(first);
    h.deliver(second);
    assert_eq!(entity_state(&h, &account("a")).queue.len(), 2, "queued behind the lock");
    h.run();
    // The transfer saw 10 and moved it (its own signals carry the lock and run at once); then
    // the queued deposit 5 and withdraw 5 ran, in arrival order.
    assert_eq!(h.output::<TransferOutcome>(&id), Some(TransferOutcome::Transferred));
    assert_eq!(balance(&h, "a"), 0);
    assert_eq!(balance(&h, "b"), 10);
    assert_unlocked(&h, &["a", "b"]);
}

#[test]
fn a_lock_holder_terminated_mid_section_releases_its_locks() {
    let mut h = harness();
    open_accounts(&mut h, &[("a", 10), ("b", 0)]);
    let start = transfer(&mut h, "t", "a", "b", 5);
    let id = start.target.clone();
    h.deliver(start);
    for _ in 0..3 {
        h.deliver_pending(0); // lock acquired
    }
    let blocked = h.signal(&account("b"), "deposit", 7);
    h.deliver(blocked);
    let terminate = h.terminate(&id, "operator");
    let out = h.deliver(terminate);
    let releases: Vec<_> =
        out.emitted().filter(|e| matches!(e.body, Event::LockRelease { .. })).map(|e| e.target.clone()).collect();
    assert_eq!(releases, ["entity:Account:a", "entity:Account:b"]);
    h.run();
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Terminated { .. })));
    assert_unlocked(&h, &["a", "b"]);
    assert_eq!(balance(&h, "a") + balance(&h, "b"), 17, "the queued deposit ran after the release");
}

async fn greedy(ctx: OrchestrationContext, (): ()) -> Result<i64, Failure> {
    let a = InstanceId::entity("Account", "a");
    let _guard = ctx.lock(std::slice::from_ref(&a)).await?;
    ctx.call_entity(&a, "withdraw", 1000).await
}

#[test]
fn a_lock_holder_that_fails_mid_section_releases_its_locks() {
    let mut h = Harness::new(crate::examples::register(Registry::new()).orchestration("Greedy", greedy));
    open_accounts(&mut h, &[("a", 10)]);
    let start = h.start("Greedy", "g", ());
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Failed { failure }) if failure.kind == "Overdraft"));
    assert_unlocked(&h, &["a"]);
}

#[test]
fn a_duplicated_lock_request_takes_the_lock_once() {
    let mut h = harness();
    open_accounts(&mut h, &[("a", 10), ("b", 0)]);
    let start = transfer(&mut h, "t", "a", "b", 5);
    h.deliver(start);
    let request = h.take_pending().remove(0);
    let first = h.deliver(request.clone());
    assert_eq!(first.emitted().count(), 1, "forwarded to b");
    let again = h.deliver(request.clone());
    assert_eq!(again.dropped[0].reason, DropReason::Duplicate);
    // The same request re-sent under another event id (e.g. re-emitted): recognised as ours.
    let mut resent = request;
    resent.id = "resent".into();
    let again = h.deliver(resent);
    assert_eq!(again.emitted().count(), 0);
    assert!(entity_state(&h, &account("a")).queue.is_empty());
    h.run();
    assert_unlocked(&h, &["a", "b"]);
}

async fn impatient(ctx: OrchestrationContext, (): ()) -> Result<String, Failure> {
    let accounts = [InstanceId::entity("Account", "a"), InstanceId::entity("Account", "b")];
    match when_any2(ctx.lock(&accounts), ctx.create_timer_after(std::time::Duration::from_secs(1))).await {
        Either::Left(guard) => {
            drop(guard?);
            Ok("locked".into())
        }
        Either::Right(()) => Ok("gave up".into()),
    }
}

#[test]
fn release_before_all_grants_arrive_leaves_nothing_locked() {
    let mut h = Harness::new(crate::examples::register(Registry::new()).orchestration("Impatient", impatient));
    let start = h.start("Impatient", "i", ());
    let id = start.target.clone();
    h.deliver(start);
    let request_a = h.take_pending().remove(0);
    h.deliver(request_a);
    let forwarded = h.take_pending().remove(0);
    assert!(matches!(forwarded.body, Event::LockRequest { position: 1, .. }), "a forwards to b");
    // The timer wins: the owner withdraws and sends releases to a and b.
    let timer = h.take_timers().remove(0);
    h.fire(timer);
    assert_eq!(h.output::<String>(&id).as_deref(), Some("gave up"));
    let releases = h.take_pending();
    assert_eq!(releases.len(), 2);
    for r in releases {
        h.deliver(r); // a unlocks; b has nothing yet
    }
    // The forwarded request reaches b after its release: b locks and grants a dead request...
    h.deliver(forwarded);
    assert!(entity_state(&h, &account("b")).lock.is_some());
    let grant = h.take_pending().remove(0);
    let answer = h.deliver(grant);
    assert_eq!(answer.dropped[0].reason, DropReason::UnwantedGrant);
    // ...which the owner answers with a release.
    h.run();
    assert_unlocked(&h, &["a", "b"]);
}

async fn rule_breaker(ctx: OrchestrationContext, (): ()) -> Result<Vec<String>, Failure> {
    let (a, b, c) =
        (InstanceId::entity("Account", "a"), InstanceId::entity("Account", "b"), InstanceId::entity("Account", "c"));
    let _guard = ctx.lock(&[a.clone(), b]).await?;
    let mut kinds = Vec::new();
    let call: Result<i64, Failure> = ctx.call_entity(&c, "balance", ()).await;
    kinds.push(call.unwrap_err().kind);
    kinds.push(ctx.signal_entity(&c, "deposit", 1).unwrap_err().kind);
    kinds.push(ctx.lock(&[c]).await.err().unwrap().kind);
    let child: Result<Vec<String>, Failure> = ctx.call_sub_orchestration("HelloSequence", vec!["x"]).await;
    kinds.push(child.unwrap_err().kind);
    let allowed: i64 = ctx.call_entity(&a, "balance", ()).await?;
    kinds.push(format!("balance {allowed}"));
    Ok(kinds)
}

#[test]
fn breaking_the_critical_section_rules_is_a_clear_error_not_a_deadlock() {
    let mut h = Harness::new(crate::examples::register(Registry::new()).orchestration("Rules", rule_breaker));
    let start = h.start("Rules", "r", ());
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    let kinds: Vec<String> = h.output(&id).unwrap();
    assert_eq!(kinds, [LOCK_VIOLATION, LOCK_VIOLATION, LOCK_VIOLATION, LOCK_VIOLATION, "balance 0"]);
    assert_unlocked(&h, &["a", "b"]);
}

async fn locker_loop(ctx: OrchestrationContext, round: u32) -> Result<u32, Failure> {
    let a = InstanceId::entity("Account", "a");
    let _guard = ctx.lock(&[a]).await?;
    if round < 2 {
        ctx.continue_as_new(round + 1).await;
    }
    Ok(round)
}

#[test]
fn continue_as_new_releases_the_lock_of_the_old_generation() {
    let mut h = Harness::new(crate::examples::register(Registry::new()).orchestration("Looper", locker_loop));
    let start = h.start("Looper", "l", 0u32);
    let id = start.target.clone();
    h.deliver(start);
    h.run();
    assert_eq!(h.output::<u32>(&id), Some(2));
    assert_unlocked(&h, &["a"]);
}
