//! Per-user creation limits: how many live instances of a type one user may have. Pure.
//!
//! A deployment may limit, per orchestration or entity name, how many *live* instances one
//! user has created ([`crate::access::Policy::limits`], `DURABLE_CREATE_LIMITS`): an
//! orchestration is live from its start until it completes, fails or is terminated; an entity
//! from its first operation until it holds no state, no lock and no queued operation. Admins
//! and anonymous events (where allowed) are not limited.
//!
//! Instances live in different partitions, so the count cannot be kept by any one of them. Each
//! (type, user) has a **ledger**, a Durable-owned entity `entity:durable.quota:<kind>:<Type>/<user>`,
//! whose state is the set of instances that count against the limit. An event that would
//! create (or revive) a limited instance does not apply at once:
//! 1. The instance holds it — and every later event for the instance, in order — and asks the
//!    ledger to **reserve** a place (an `EntityOperation` `reserve` whose input is the instance
//!    id, in `ReplyTo` the instance).
//! 2. The ledger grants when the instance already counts or fewer than the limit do (it then
//!    counts), and refuses otherwise, answering with an `OperationResult`.
//! 3. On a grant the held events apply in order and the instance is **charged** to that user;
//!    on a refusal the creating event is dead-lettered `Forbidden` (a call or sub-orchestration
//!    start is answered with that failure), and the later events are decided again.
//! 4. When a charged instance stops being live, it sends the ledger a **release** (a signal
//!    `release`), and the place is free again.
//!
//! A ledger accepts `reserve` and `release` only from the instance they name, of the ledger's
//! type: outside producers cannot send as an instance ([`crate::trust`]), and the engine does
//! not let application code address a ledger. Reservations and releases are idempotent, so
//! redelivered messages count once.

use std::collections::{BTreeSet, VecDeque};

use durable_schemas::Envelope;
use serde::{Deserialize, Serialize};

use crate::access::{self, Operation, Policy, Principal};
use crate::id::{InstanceId, Kind};

/// The entity name of the ledgers (names starting `durable.` are Durable's own).
pub const LEDGER: &str = "durable.quota";
/// The operation that asks a ledger for a place.
pub const RESERVE: &str = "reserve";
/// The operation that gives a place back.
pub const RELEASE: &str = "release";
/// The largest limit a deployment may set (a ledger's state lists every counted instance).
pub const MAX_LIMIT: u32 = 10_000;

/// An instance's standing with its ledger; stored in its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    /// The user whose limit this live instance counts against.
    pub charged: Option<String>,
    /// A creation waiting for the ledger's answer.
    pub waiting: Option<Reservation>,
}

/// A creation waiting for the ledger, with the events held behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// The correlation of the `reserve` request (its answer carries it).
    pub correlation: String,
    /// The user the reservation is for.
    pub user: String,
    /// The creating event first, then every later event for the instance, in arrival order.
    pub events: VecDeque<Envelope>,
}

/// What a ledger holds: the instances that count against its user's limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Canonical ids of the counted instances.
    pub instances: BTreeSet<String>,
}

impl Ledger {
    /// Reserve a place for `instance` within `limit` (`None`: unlimited): `true` if it counts
    /// now (it did already, or there was room).
    pub fn reserve(&mut self, instance: &str, limit: Option<u32>) -> bool {
        if self.instances.contains(instance) {
            return true;
        }
        if limit.is_some_and(|l| self.instances.len() >= l as usize) {
            return false;
        }
        self.instances.insert(instance.to_owned());
        true
    }

    /// Give `instance`'s place back (nothing if it held none).
    pub fn release(&mut self, instance: &str) {
        self.instances.remove(instance);
    }
}

/// The ledger that counts `user`'s live instances of the type of `instance`.
pub fn ledger_of(instance: &InstanceId, user: &str) -> InstanceId {
    InstanceId::entity(LEDGER, format!("{}:{}/{user}", instance.kind().prefix(), instance.name()))
}

/// Whether `id` is a ledger.
pub fn is_ledger(id: &InstanceId) -> bool {
    id.kind() == Kind::Entity && id.name() == LEDGER
}

/// Whether the canonical id `target` names a ledger (a prefix check).
pub fn names_ledger(target: &str) -> bool {
    target.strip_prefix("entity:").and_then(|rest| rest.strip_prefix(LEDGER)).is_some_and(|r| r.starts_with(':'))
}

/// The instance type a ledger counts, `(kind, name)`, and its user, from the ledger's key.
pub fn ledger_subject(ledger: &InstanceId) -> Option<(Kind, &str, &str)> {
    let (kind, rest) = ledger.key().split_once(':')?;
    let (name, user) = rest.split_once('/')?;
    let kind = [Kind::Orchestration, Kind::Entity].into_iter().find(|k| k.prefix() == kind)?;
    (!user.is_empty()).then_some((kind, name, user))
}

/// The user an allowed `op` by `principal` must be charged to before it applies to `target`
/// (`settled`: its stored record is live or already charged), or `None` when no place is
/// needed: the type has no limit, the principal is anonymous or an admin, the operation does
/// not create, the instance is settled.
pub fn needs_charge(
    policy: &Policy,
    principal: Option<&Principal>,
    op: Operation,
    target: &InstanceId,
    settled: bool,
) -> Option<String> {
    policy.limits.get(target.name())?;
    let p = principal?;
    if policy.may_administer(Some(p)) || !access::creates(target.kind(), op) {
        return None;
    }
    if settled {
        return None;
    }
    Some(p.user.clone())
}

#[cfg(test)]
mod tests {
    use durable_schemas::Payload;

    use super::*;
    use crate::history::{Body, InstanceRecord, OrchestrationStatus};
    use crate::history::{EntityLock, EntityState, OrchestrationHistory};

    fn record(id: &InstanceId, body: Body, charged: Option<&str>) -> InstanceRecord {
        let mut r = InstanceRecord::new(id.canonical(), 0);
        r.body = body;
        r.quota.charged = charged.map(str::to_owned);
        r
    }

    fn orchestration(status: OrchestrationStatus) -> Body {
        let mut h = OrchestrationHistory::start(Payload::null(), None, 0, 0);
        h.status = status;
        Body::Orchestration(Box::new(h))
    }

    fn entity(state: bool, locked: bool) -> Body {
        Body::Entity(EntityState {
            state: state.then(Payload::null),
            lock: locked.then(|| EntityLock { owner: "orch:T:1".into(), correlation: "0.1".into() }),
            ..EntityState::default()
        })
    }

    /// Which allowed operations must first get a place from the ledger, as `Q` (charged to the
    /// principal) or `.` (no place needed), in [`Operation::ALL`] order (start signal call read
    /// terminate lock share own), by principal × type × instance state.
    #[test]
    fn which_operations_need_a_place_as_the_table_says() {
        let mut policy = Policy::enforcing();
        policy.limits = [("Transfer".to_owned(), 3), ("Account".to_owned(), 0)].into();
        let alice = Some(Principal::new("alice", ["staff"]));
        let root = Some(Principal::new("root", ["admin"]));
        let transfer = InstanceId::orchestration("Transfer", "t1");
        let hello = InstanceId::orchestration("Hello", "h1");
        let account = InstanceId::entity("Account", "a1");
        let finished = OrchestrationStatus::Completed { output: Payload::null() };
        let rows: Vec<(&str, &Option<Principal>, &InstanceId, InstanceRecord, &str)> = vec![
            ("new orchestration", &alice, &transfer, record(&transfer, Body::Empty, None), "Q......."),
            ("new, admin", &root, &transfer, record(&transfer, Body::Empty, None), "........"),
            ("new, anonymous", &None, &transfer, record(&transfer, Body::Empty, None), "........"),
            ("new, type without limit", &alice, &hello, record(&hello, Body::Empty, None), "........"),
            (
                "running",
                &alice,
                &transfer,
                record(&transfer, orchestration(OrchestrationStatus::Running), Some("alice")),
                "........",
            ),
            ("finished (restart)", &alice, &transfer, record(&transfer, orchestration(finished), None), "Q......."),
            ("new entity (limit 0)", &alice, &account, record(&account, Body::Empty, None), ".QQ..Q.."),
            ("entity with state", &alice, &account, record(&account, entity(true, false), Some("alice")), "........"),
            ("deleted entity (revive)", &alice, &account, record(&account, entity(false, false), None), ".QQ..Q.."),
            ("locked, no state", &alice, &account, record(&account, entity(false, true), Some("bob")), "........"),
            ("charged, not live yet", &alice, &account, record(&account, Body::Empty, Some("alice")), "........"),
        ];
        let mut checked = 0;
        for (state, principal, target, record, verdicts) in rows {
            for (op, want) in Operation::ALL.into_iter().zip(verdicts.chars()) {
                let got = match needs_charge(&policy, principal.as_ref(), op, target, record.holds_place()) {
                    Some(user) => {
                        assert_eq!(Some(&user), principal.as_ref().map(|p| &p.user));
                        'Q'
                    }
                    None => '.',
                };
                assert_eq!(got, want, "{state}: {principal:?} {op} {target}");
                checked += 1;
            }
        }
        assert_eq!(checked, 88);
    }

    #[test]
    fn a_ledger_counts_each_instance_once_within_its_limit() {
        let mut l = Ledger::default();
        assert!(l.reserve("orch:T:1", Some(2)));
        assert!(l.reserve("orch:T:1", Some(2)), "a redelivered reservation is granted again");
        assert!(l.reserve("orch:T:2", Some(2)));
        assert!(!l.reserve("orch:T:3", Some(2)));
        l.release("orch:T:1");
        l.release("orch:T:1");
        assert!(l.reserve("orch:T:3", Some(2)));
        assert!(!l.reserve("orch:T:4", Some(2)));
        assert!(l.reserve("orch:T:4", None), "a type whose limit was lifted is not limited");
        assert!(!l.reserve("orch:T:5", Some(0)));
    }

    #[test]
    fn ledger_ids_name_the_type_and_the_user() {
        let id = ledger_of(&InstanceId::orchestration("Transfer", "t1"), "ali/ce:x");
        assert_eq!(id.canonical(), "entity:durable.quota:orch:Transfer/ali/ce:x");
        assert!(is_ledger(&id) && names_ledger(&id.canonical()));
        assert_eq!(ledger_subject(&id), Some((Kind::Orchestration, "Transfer", "ali/ce:x")));
        assert!(!names_ledger("entity:durable.quotas:x") && !names_ledger("orch:durable.quota:x"));
        assert_eq!(ledger_subject(&InstanceId::entity(LEDGER, "activity:X/u")), None);
        assert_eq!(ledger_subject(&InstanceId::entity(LEDGER, "entity:X/")), None);
    }
}
