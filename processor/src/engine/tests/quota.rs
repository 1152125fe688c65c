//! Per-user creation limits ([`crate::quota`]), enforced through the ledgers: at most the
//! limit of live instances per user, a place freed when an instance stops being live, events
//! held in order behind a creation, and ledgers nobody else can move.

use durable_schemas::{Envelope, Event, Failure, Payload};

use crate::access::{Policy, Principal, FORBIDDEN};
use crate::examples::{self, ApprovalInput};
use crate::harness::Harness;
use crate::history::OrchestrationStatus;
use crate::id::InstanceId;
use crate::quota::{self, Ledger};
use crate::registry::Registry;
use crate::OrchestrationContext;

fn alice() -> Principal {
    Principal::new("alice", ["staff"])
}
fn admin() -> Principal {
    Principal::new("root", ["admin"])
}

/// alice may have 2 live counters and 1 live approval; bob is not otherwise limited either.
fn harness() -> Harness {
    let mut policy = Policy::enforcing();
    policy.limits = [("Counter".to_owned(), 2), ("Approval".to_owned(), 1)].into();
    let registry =
        examples::register(Registry::new()).orchestration("Meddler", |ctx: OrchestrationContext, (): ()| async move {
            let ledger = InstanceId::entity(quota::LEDGER, "entity:Counter/alice");
            ctx.signal_entity(&ledger, quota::RELEASE, "entity:Counter:c1")?;
            Ok::<_, Failure>(())
        });
    Harness::new(registry).with_policy(policy)
}

fn counter(key: &str) -> InstanceId {
    InstanceId::entity("Counter", key)
}

fn add(h: &mut Harness, who: &Principal, key: &str, n: i64) -> Envelope {
    let e = h.signal(&counter(key), "add", n);
    Harness::as_principal(e, who)
}

fn value(h: &Harness, key: &str) -> Option<i64> {
    h.entity_state::<examples::Counter>(&counter(key)).map(|c| c.value)
}

fn ledger(h: &Harness, kind_type: &str, user: &str) -> Vec<String> {
    let id = InstanceId::entity(quota::LEDGER, format!("{kind_type}/{user}"));
    h.entity_state::<Ledger>(&id).map(|l| l.instances.into_iter().collect()).unwrap_or_default()
}

fn refusals(h: &Harness) -> Vec<String> {
    h.dead_letters().iter().filter(|d| d.reason.starts_with("Forbidden: ")).map(|d| d.reason.clone()).collect()
}

#[test]
fn a_user_has_at_most_the_limit_of_live_instances_and_a_deleted_one_frees_its_place() {
    let mut h = harness();
    for key in ["c1", "c2", "c3"] {
        let e = add(&mut h, &alice(), key, 1);
        h.deliver(e);
        h.run();
    }
    assert_eq!((value(&h, "c1"), value(&h, "c2"), value(&h, "c3")), (Some(1), Some(1), None), "{:?}", h.dead_letters());
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:c1", "entity:Counter:c2"]);
    let c3 = h.record(&counter("c3").canonical()).unwrap();
    assert!(c3.access.owners.is_empty() && c3.quota == Default::default(), "c3 was not created: {c3:?}");
    assert_eq!(
        refusals(&h),
        ["Forbidden: alice has 2 live Counter instances, the most one user may have (DURABLE_CREATE_LIMITS); entity:Counter:c3 was not created"]
    );
    // Deleting c1 gives its place back: c3 can be created now.
    let delete = h.signal(&counter("c1"), "delete", ());
    h.deliver(Harness::as_principal(delete, &alice()));
    h.run();
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:c2"]);
    let e = add(&mut h, &alice(), "c3", 5);
    h.deliver(e);
    h.run();
    assert_eq!(value(&h, "c3"), Some(5));
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:c2", "entity:Counter:c3"]);
    // Using the deleted c1 again revives it: that counts too, and there is no room.
    let e = add(&mut h, &alice(), "c1", 1);
    h.deliver(e);
    h.run();
    assert_eq!(value(&h, "c1"), None);
    assert_eq!(refusals(&h).len(), 2);
    // Other users and admins have their own places (admins are not limited).
    for key in ["b1", "b2"] {
        let e = add(&mut h, &Principal::new("bob", Vec::<String>::new()), key, 1);
        h.deliver(e);
    }
    for key in ["r1", "r2", "r3"] {
        let e = add(&mut h, &admin(), key, 1);
        h.deliver(e);
    }
    h.run();
    assert_eq!(ledger(&h, "entity:Counter", "bob").len(), 2);
    assert_eq!((value(&h, "r3"), ledger(&h, "entity:Counter", "root").len()), (Some(1), 0));
    assert_eq!(refusals(&h).len(), 2);
}

#[test]
fn events_behind_a_creation_wait_for_the_ledger_and_apply_in_order() {
    let mut h = harness();
    // Three signals and a call reach c1 before its ledger answers.
    let first = add(&mut h, &alice(), "c1", 1);
    h.deliver(first);
    assert_eq!(value(&h, "c1"), None, "nothing applies before the ledger answers");
    let reserve = h.take_pending();
    assert_eq!(reserve.len(), 1);
    assert_eq!(reserve[0].target, "entity:durable.quota:entity:Counter/alice");
    let second = add(&mut h, &alice(), "c1", 10);
    h.deliver(second);
    let call = Envelope::new(
        "call-1",
        counter("c1").canonical(),
        h.now(),
        Event::ReplyTo {
            address: "orch:Caller:1".into(),
            correlation: "0.4".into(),
            inner: Box::new(Event::EntityOperation { operation: "get".into(), input: Payload::null() }),
        },
    );
    h.deliver(Harness::as_principal(call, &alice()));
    assert_eq!(value(&h, "c1"), None);
    assert!(h.pending().is_empty(), "held, not answered");
    h.deliver(reserve[0].clone());
    h.run();
    assert_eq!(value(&h, "c1"), Some(11));
    let record = h.record(&counter("c1").canonical()).unwrap();
    assert_eq!(record.access.owners, ["alice".to_owned()].into());
    assert_eq!(record.quota.charged.as_deref(), Some("alice"));
    assert!(record.quota.waiting.is_none());
}

#[test]
fn a_refused_creation_answers_its_caller_and_later_events_are_decided_again() {
    let mut h = harness();
    for key in ["c1", "c2"] {
        let e = add(&mut h, &alice(), key, 1);
        h.deliver(e);
    }
    h.run();
    // A call that would create c3 is answered Forbidden; an admin's signal held behind it
    // creates c3 (admins are not limited), and alice's own later signal is then an ordinary
    // refusal: she does not own what the admin created.
    let call = Envelope::new(
        "call-3",
        counter("c3").canonical(),
        h.now(),
        Event::ReplyTo {
            address: "orch:Caller:1".into(),
            correlation: "0.7".into(),
            inner: Box::new(Event::EntityOperation { operation: "add".into(), input: Payload::json(&1).unwrap() }),
        },
    );
    h.deliver(Harness::as_principal(call, &alice()));
    let reserve = h.take_pending();
    let by_admin = add(&mut h, &admin(), "c3", 7);
    h.deliver(by_admin);
    let later = add(&mut h, &alice(), "c3", 100);
    h.deliver(later);
    for e in reserve {
        h.deliver(e);
    }
    let ledger_answer = h.take_pending();
    assert_eq!(ledger_answer.len(), 1);
    h.deliver(ledger_answer[0].clone());
    let answer = h.take_pending().into_iter().find(|e| e.target == "orch:Caller:1").expect("the caller is answered");
    match answer.body {
        Event::OperationResult { correlation, outcome: Err(f) } => {
            assert_eq!((correlation.as_str(), f.kind.as_str()), ("0.7", FORBIDDEN));
            assert!(f.message.contains("alice has 2 live Counter instances"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&h, "c3"), Some(7));
    let reasons = refusals(&h);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].contains("alice may not signal entity:Counter:c3"), "{reasons:?}");
}

#[test]
fn a_finished_orchestration_frees_its_place_and_a_restart_counts_again() {
    let mut h = harness();
    let input = ApprovalInput { counter: "k".into(), amount: 1 };
    let a1 = h.start("Approval", "a1", &input);
    h.deliver(Harness::as_principal(a1, &alice()));
    let a2 = h.start("Approval", "a2", &input);
    h.deliver(Harness::as_principal(a2, &alice()));
    // Runs until a1 waits for its approval (its hour's timer is not fired).
    let soon = |h: &Harness| h.now() + 60_000;
    h.run_until(soon(&h));
    let a1_id = InstanceId::orchestration("Approval", "a1").canonical();
    let a2_id = InstanceId::orchestration("Approval", "a2").canonical();
    assert!(matches!(h.status(&a1_id), Some(OrchestrationStatus::Running)));
    assert_eq!(h.status(&a2_id), None, "a2 is over alice's limit of one live Approval");
    assert_eq!(ledger(&h, "orch:Approval", "alice"), std::slice::from_ref(&a1_id));
    // a1 finishes (terminated): its place is free, and a2 starts.
    let stop = h.terminate(&a1_id, "enough");
    h.deliver(Harness::as_principal(stop, &alice()));
    h.run_until(soon(&h));
    assert!(ledger(&h, "orch:Approval", "alice").is_empty());
    let a2 = h.start("Approval", "a2", &input);
    h.deliver(Harness::as_principal(a2, &alice()));
    h.run_until(soon(&h));
    assert!(matches!(h.status(&a2_id), Some(OrchestrationStatus::Running)));
    // Restarting the finished a1 counts again: refused while a2 runs.
    let again = h.start("Approval", "a1", &input);
    h.deliver(Harness::as_principal(again, &alice()));
    h.run_until(soon(&h));
    assert!(matches!(h.status(&a1_id), Some(OrchestrationStatus::Terminated { .. })));
    assert_eq!(ledger(&h, "orch:Approval", "alice"), [a2_id]);
    // The ledger's entity `Counter:k`, created by the approvals as alice, counts too.
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:k"]);
}

#[test]
fn nobody_but_the_counted_instance_moves_a_ledger() {
    let mut h = harness();
    let e = add(&mut h, &alice(), "c1", 1);
    h.deliver(e);
    h.run();
    let ledger_id = InstanceId::entity(quota::LEDGER, "entity:Counter/alice");
    // A client (even an admin) releasing c1's place, c2 releasing c1's, a reserve without a
    // reply address, an unknown operation, a ledger key that names no type: all dead letters.
    let release = |source: &str, instance: &str| {
        let body =
            Event::EntityOperation { operation: quota::RELEASE.into(), input: Payload::json(&instance).unwrap() };
        let mut e = Envelope::new(format!("forged-{source}"), ledger_id.canonical(), 0, body);
        e.source = Some(source.into());
        e
    };
    let forged = [
        Harness::as_principal(release("client:x", "entity:Counter:c1"), &admin()),
        release("entity:Counter:c2", "entity:Counter:c1"),
        release("orch:Counter:c1", "orch:Counter:c1"),
        {
            let mut e = release("entity:Counter:c1", "entity:Counter:c1");
            e.id = "forged-reserve".into();
            e.body = Event::EntityOperation {
                operation: quota::RESERVE.into(),
                input: Payload::json(&"entity:Counter:c1").unwrap(),
            };
            e
        },
        {
            let mut e = release("entity:Counter:c1", "entity:Counter:c1");
            e.id = "forged-op".into();
            e.body = Event::EntityOperation {
                operation: "reset".into(),
                input: Payload::json(&"entity:Counter:c1").unwrap(),
            };
            e
        },
    ];
    for e in forged {
        let out = h.deliver(e);
        assert_eq!(out.dead_letters.len(), 1, "{:?}", out.dead_letters);
    }
    let mut e = release("entity:Counter:c1", "entity:Counter:c1");
    e.target = InstanceId::entity(quota::LEDGER, "nothing").canonical();
    assert!(h.deliver(e).dead_letters[0].reason.contains("is no ledger"));
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:c1"]);
    // Application code cannot address a ledger: the orchestration's signal is dead-lettered.
    let meddle = h.start("Meddler", "m1", ());
    h.deliver(Harness::as_principal(meddle, &alice()));
    h.run();
    assert!(h.dead_letters().iter().any(|d| d.reason.contains("is Durable's own ledger")), "{:?}", h.dead_letters());
    assert_eq!(ledger(&h, "entity:Counter", "alice"), ["entity:Counter:c1"]);
}

#[test]
#[should_panic(expected = "are Durable's own")]
fn handlers_may_not_take_durables_own_names() {
    let _ = Registry::new().entity(quota::LEDGER, examples::counter());
}
