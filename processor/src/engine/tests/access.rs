//! Authorization in the engine: who owns what an orchestration creates, refusals that change
//! nothing, sharing, run-as and the principal activities receive.

use durable_schemas::{AccessChange, Envelope, Event, Payload};

use crate::access::{Operation, Policy, Principal, FORBIDDEN};
use crate::context::ActivityRequest;
use crate::examples::{self, Account, TransferInput, TransferOutcome};
use crate::harness::Harness;
use crate::history::OrchestrationStatus;
use crate::id::InstanceId;
use crate::registry::Registry;

fn alice() -> Principal {
    Principal::new("alice", ["staff"])
}
fn bob() -> Principal {
    Principal::new("bob", Vec::<String>::new())
}

fn harness() -> Harness {
    Harness::new(examples::register(Registry::new())).with_policy(Policy::enforcing())
}

fn account(key: &str) -> InstanceId {
    InstanceId::entity("Account", key)
}

fn balance(h: &Harness, key: &str) -> Option<i64> {
    h.entity_state::<Account>(&account(key)).map(|a| a.balance)
}

/// `principal` opens `key` with `amount`.
fn open(h: &mut Harness, principal: &Principal, key: &str, amount: i64) {
    let open = h.signal(&account(key), "open", principal.user.clone());
    h.deliver(Harness::as_principal(open, principal));
    let deposit = h.signal(&account(key), "deposit", amount);
    h.deliver(Harness::as_principal(deposit, principal));
}

fn transfer(h: &mut Harness, principal: &Principal, key: &str, amount: i64) -> Envelope {
    let start = h.start("Transfer", key, TransferInput { from: "a1".into(), to: "a2".into(), amount });
    Harness::as_principal(start, principal)
}

fn forbidden_dead_letters(h: &Harness) -> Vec<String> {
    h.dead_letters().iter().filter(|d| d.reason.starts_with("Forbidden: ")).map(|d| d.reason.clone()).collect()
}

#[test]
fn the_creator_owns_and_others_are_refused_without_any_change() {
    let mut h = harness();
    open(&mut h, &alice(), "a1", 100);
    open(&mut h, &alice(), "a2", 0);
    let record = h.record(&account("a1").canonical()).unwrap().clone();
    assert_eq!(record.access.owners, ["alice".to_owned()].into());
    let version = record.version;
    // bob signals alice's account: dead-lettered Forbidden, nothing changes but the dedup marks.
    let steal = h.signal(&account("a1"), "withdraw", 100);
    let out = h.deliver(Harness::as_principal(steal, &bob()));
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason, "Forbidden: bob may not signal entity:Account:a1");
    assert_eq!(balance(&h, "a1"), Some(100));
    let after = h.record(&account("a1").canonical()).unwrap();
    assert_eq!((after.version, after.entity()), (version + 1, record.entity()), "only the dedup marks moved");
    // Anonymous events are refused when the deployment requires a principal.
    let anonymous = h.signal(&account("a1"), "deposit", 5);
    let out = h.deliver(anonymous);
    assert!(out.dead_letters[0].reason.contains("anonymous signal of entity:Account:a1 refused"));
    assert_eq!(balance(&h, "a1"), Some(100));
}

#[test]
fn an_orchestration_acts_for_its_starter_and_cannot_reach_what_the_starter_could_not() {
    let mut h = harness();
    open(&mut h, &alice(), "a1", 100);
    open(&mut h, &alice(), "a2", 0);
    // alice's transfer: her principal travels with every request, so her accounts accept it.
    let t = transfer(&mut h, &alice(), "t1", 30);
    h.deliver(t);
    let lock = h.pending().front().cloned().expect("a lock request");
    assert!(matches!(&lock.body, Event::WithPrincipal { user, .. } if user == "alice"), "{:?}", lock.body);
    h.run();
    let t1 = InstanceId::orchestration("Transfer", "t1").canonical();
    assert_eq!(h.output::<TransferOutcome>(&t1), Some(TransferOutcome::Transferred));
    assert_eq!((balance(&h, "a1"), balance(&h, "a2")), (Some(70), Some(30)));
    assert_eq!(h.record(&t1).unwrap().access.owners, ["alice".to_owned()].into());
    // bob may start a transfer (he owns it), but alice's accounts refuse his lock: the transfer
    // fails Forbidden, nothing moved, no lock or queued operation is left.
    let t = transfer(&mut h, &bob(), "t2", 70);
    h.deliver(t);
    h.run();
    let t2 = InstanceId::orchestration("Transfer", "t2").canonical();
    match h.status(&t2) {
        Some(OrchestrationStatus::Failed { failure }) => {
            assert_eq!(failure.kind, FORBIDDEN);
            assert!(failure.message.contains("bob may not lock entity:Account:a1"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((balance(&h, "a1"), balance(&h, "a2")), (Some(70), Some(30)));
    for key in ["a1", "a2"] {
        let e = h.record(&account(key).canonical()).unwrap().entity().unwrap().clone();
        assert!(e.lock.is_none() && e.queue.is_empty(), "{key}: {e:?}");
    }
    assert_eq!(forbidden_dead_letters(&h).len(), 1);
    // alice shares lock, call and signal on both accounts with bob: his next transfer goes through.
    for key in ["a1", "a2"] {
        let operations = ["lock", "call", "signal"].map(String::from).to_vec();
        let share =
            h.change_access(&account(key).canonical(), AccessChange::ShareWithUser { user: "bob".into(), operations });
        h.deliver(Harness::as_principal(share, &alice()));
    }
    let t = transfer(&mut h, &bob(), "t3", 70);
    h.deliver(t);
    h.run();
    let t3 = InstanceId::orchestration("Transfer", "t3").canonical();
    assert_eq!(h.output::<TransferOutcome>(&t3), Some(TransferOutcome::Transferred));
    assert_eq!((balance(&h, "a1"), balance(&h, "a2")), (Some(0), Some(100)));
    // Revoked: refused again.
    for key in ["a1", "a2"] {
        let revoke = h.change_access(&account(key).canonical(), AccessChange::RevokeUser { user: "bob".into() });
        h.deliver(Harness::as_principal(revoke, &alice()));
    }
    let t = transfer(&mut h, &bob(), "t4", 1);
    h.deliver(t);
    h.run();
    let t4 = InstanceId::orchestration("Transfer", "t4").canonical();
    assert!(matches!(h.status(&t4), Some(OrchestrationStatus::Failed { failure }) if failure.kind == FORBIDDEN));
}

#[test]
fn a_refused_call_is_answered_forbidden_and_a_refused_share_changes_nothing() {
    let mut h = harness();
    open(&mut h, &alice(), "a1", 10);
    let call = Envelope::new(
        "call-1",
        account("a1").canonical(),
        h.now(),
        Event::ReplyTo {
            address: "orch:Caller:1".into(),
            correlation: "0.4".into(),
            inner: Box::new(Event::EntityOperation { operation: "balance".into(), input: Payload::null() }),
        },
    );
    h.deliver(Harness::as_principal(call, &bob()));
    let answer = h.take_pending().pop().expect("an answer");
    assert_eq!(answer.target, "orch:Caller:1");
    match answer.body {
        Event::OperationResult { correlation, outcome: Err(f) } => {
            assert_eq!((correlation.as_str(), f.kind.as_str()), ("0.4", FORBIDDEN));
        }
        other => panic!("{other:?}"),
    }
    // bob cannot share alice's account with himself, nor take it over.
    let before = h.record(&account("a1").canonical()).unwrap().access.clone();
    for change in [
        AccessChange::ShareWithUser { user: "bob".into(), operations: vec!["read".into()] },
        AccessChange::TransferOwnership { user: "bob".into() },
        AccessChange::AddOwner { user: "bob".into() },
    ] {
        let e = h.change_access(&account("a1").canonical(), change);
        let out = h.deliver(Harness::as_principal(e, &bob()));
        assert!(out.dead_letters[0].reason.starts_with("Forbidden: bob may not"), "{:?}", out.dead_letters);
    }
    assert_eq!(h.record(&account("a1").canonical()).unwrap().access, before);
    // alice transfers ownership: bob owns, alice no longer does.
    let e = h.change_access(&account("a1").canonical(), AccessChange::TransferOwnership { user: "bob".into() });
    h.deliver(Harness::as_principal(e, &alice()));
    let steal = h.signal(&account("a1"), "withdraw", 10);
    let out = h.deliver(Harness::as_principal(steal, &alice()));
    assert!(out.dead_letters[0].reason.contains("alice may not signal"));
    let take = h.signal(&account("a1"), "withdraw", 10);
    h.deliver(Harness::as_principal(take, &bob()));
    assert_eq!(balance(&h, "a1"), Some(0));
    assert!(crate::access::holds(
        &Policy::enforcing(),
        Some(&bob()),
        &h.record(&account("a1").canonical()).unwrap().access,
        Operation::Own
    ));
}

#[test]
fn activities_and_sub_orchestrations_receive_the_starters_principal() {
    let mut h = harness();
    let start = h.start("HelloSequence", "h1", vec!["Oslo".to_string()]);
    h.deliver(Harness::as_principal(start, &alice()));
    let request = h.pending().front().cloned().expect("an activity request");
    let parsed = ActivityRequest::parse(&request).unwrap();
    assert_eq!(parsed.principal, Some(alice()));
    assert_eq!(parsed.context().principal, Some(alice()));
    h.run();
    let h1 = InstanceId::orchestration("HelloSequence", "h1").canonical();
    assert!(matches!(h.status(&h1), Some(OrchestrationStatus::Completed { .. })));
    // A sub-orchestration start bob may not make is answered with a Forbidden failure.
    let restart = Envelope::new(
        "sub-1",
        h1.clone(),
        h.now(),
        Event::ReplyTo {
            address: "orch:Parent:p".into(),
            correlation: "0.2".into(),
            inner: Box::new(Event::StartOrchestration { input: Payload::json(&vec!["x"]).unwrap() }),
        },
    );
    h.deliver(Harness::as_principal(restart, &bob()));
    let answer = h.take_pending().pop().expect("an answer");
    assert!(
        matches!(&answer.body, Event::OrchestrationFailed { failure, .. } if failure.kind == FORBIDDEN),
        "{answer:?}"
    );
    assert!(matches!(h.status(&h1), Some(OrchestrationStatus::Completed { .. })), "not restarted");
}

#[test]
fn a_refused_first_event_creates_nothing_and_the_rightful_creator_still_can() {
    let policy = Policy {
        creation: [("Account".to_owned(), crate::access::Creation::Roles(["staff".into()].into()))].into(),
        ..Policy::enforcing()
    };
    let mut h = Harness::new(examples::register(Registry::new())).with_policy(policy);
    // bob may not create accounts: his signal to a1 is refused and leaves no ownerless body.
    let squat = h.signal(&account("a1"), "open", "bob");
    let out = h.deliver(Harness::as_principal(squat, &bob()));
    assert!(out.dead_letters[0].reason.contains("bob may not create a Account"), "{:?}", out.dead_letters);
    assert!(h.record(&account("a1").canonical()).unwrap().entity().is_none());
    open(&mut h, &alice(), "a1", 5);
    assert_eq!(balance(&h, "a1"), Some(5));
}

#[test]
fn suspend_resume_and_purge_need_terminate() {
    let mut h = harness();
    open(&mut h, &alice(), "a1", 100);
    let start = transfer(&mut h, &alice(), "t", 1_000_000);
    let id = start.target.clone();
    h.deliver(start);
    for body in [
        Event::Suspend { reason: String::new() },
        Event::Resume { reason: String::new() },
        Event::Purge { reason: String::new() },
    ] {
        let name = body.name();
        let event = h.client(&id, body);
        h.deliver(Harness::as_principal(event, &bob()));
        let refused = forbidden_dead_letters(&h);
        assert_eq!(
            refused.last().map(String::as_str),
            Some("Forbidden: bob may not terminate orch:Transfer:t"),
            "{name}"
        );
        let purge = h.client(&account("a1").canonical(), Event::Purge { reason: String::new() });
        h.deliver(Harness::as_principal(purge, &bob()));
        assert_eq!(balance(&h, "a1"), Some(100), "bob cannot purge alice's account");
    }
    assert!(!matches!(h.status(&id), Some(OrchestrationStatus::Suspended { .. })));
    // Its owner may.
    let suspend = h.client(&id, Event::Suspend { reason: "mine".into() });
    h.deliver(Harness::as_principal(suspend, &alice()));
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Suspended { .. })), "{:?}", h.status(&id));
}

#[test]
fn the_retention_timer_purges_without_a_principal_but_nobody_can_pretend_to_be_it() {
    let retention = crate::retention::Retention { default: Some(1_000), ..Default::default() };
    let mut h = harness().with_retention(retention);
    let start = h.start("HelloSequence", "kept", vec!["Oslo"]);
    let id = start.target.clone();
    h.deliver(Harness::as_principal(start, &alice()));
    h.run_until(h.now());
    assert!(matches!(h.status(&id), Some(OrchestrationStatus::Completed { .. })));
    // bob's purge with the retention reason is refused: it does not come from the instance.
    let forged = h.client(&id, Event::Purge { reason: crate::retention::REASON.into() });
    h.deliver(Harness::as_principal(forged, &bob()));
    assert_eq!(forged_refusals(&h), 1);
    let (at, purge) = h.take_timers().pop().expect("the retention timer");
    assert_eq!(purge.source.as_deref(), Some(id.as_str()));
    h.fire((at, purge));
    assert!(matches!(h.record(&id).unwrap().body, crate::history::Body::Empty), "purged by its timer");
    assert_eq!(forged_refusals(&h), 1, "the timer's purge was not refused");
}

fn forged_refusals(h: &Harness) -> usize {
    forbidden_dead_letters(h).iter().filter(|r| r.contains("may not terminate")).count()
}
