//! The authorization table: principal × operation × resource state, each row written out.

use durable_schemas::AccessChange;

use super::*;

fn alice() -> Principal {
    Principal::new("alice", ["staff"])
}
fn bob() -> Principal {
    Principal::new("bob", Vec::<String>::new())
}
fn bob_auditor() -> Principal {
    Principal::new("bob", ["auditor"])
}
fn carol_teller() -> Principal {
    Principal::new("carol", ["teller"])
}
fn root() -> Principal {
    Principal::new("root", ["admin"])
}

fn orch() -> InstanceId {
    InstanceId::orchestration("Transfer", "t1")
}
fn entity() -> InstanceId {
    InstanceId::entity("Account", "a1")
}

fn owned_by(user: &str) -> Access {
    Access { owners: [user.to_owned()].into(), ..Access::default() }
}

fn apply(policy: &Policy, by: &Principal, target: &InstanceId, access: &mut Access, c: AccessChange) {
    change(policy, Some(by), target, access, &c).unwrap_or_else(|e| panic!("{c:?} by {by}: {e}"));
}

/// What each principal may do, written as the verdict for each operation in
/// [`Operation::ALL`] order (start signal call read terminate lock share own):
/// `C` creates (and owns), `A` allowed, `-` refused.
struct Row {
    state: &'static str,
    policy: Policy,
    target: InstanceId,
    access: Access,
    exists: bool,
    principal: Option<Principal>,
    verdicts: &'static str,
}

fn rows() -> Vec<Row> {
    let enforcing = Policy::enforcing();
    let teller_only = Policy {
        creation: [("Transfer".to_owned(), Creation::Roles(["teller".to_owned()].into()))].into(),
        ..Policy::enforcing()
    };
    let admins_only = Policy { default_creation: Creation::Nobody, ..Policy::enforcing() };
    let shared_with_bob = {
        let mut a = owned_by("alice");
        let c = AccessChange::ShareWithUser { user: "bob".into(), operations: vec!["read".into(), "signal".into()] };
        apply(&enforcing, &alice(), &orch(), &mut a, c);
        a
    };
    let shared_with_auditors = {
        let mut a = owned_by("alice");
        let c = AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into()] };
        apply(&enforcing, &alice(), &orch(), &mut a, c);
        a
    };
    let revoked = {
        let mut a = shared_with_bob.clone();
        apply(&enforcing, &alice(), &orch(), &mut a, AccessChange::RevokeUser { user: "bob".into() });
        a
    };
    let role_revoked = {
        let mut a = shared_with_auditors.clone();
        apply(&enforcing, &alice(), &orch(), &mut a, AccessChange::RevokeRole { role: "auditor".into() });
        a
    };
    let transferred = {
        let mut a = owned_by("alice");
        apply(&enforcing, &alice(), &orch(), &mut a, AccessChange::TransferOwnership { user: "bob".into() });
        a
    };
    let co_owned = {
        let mut a = owned_by("alice");
        apply(&enforcing, &alice(), &orch(), &mut a, AccessChange::AddOwner { user: "bob".into() });
        a
    };
    let row = |state, policy: &Policy, target: InstanceId, access: &Access, exists, principal, verdicts| Row {
        state,
        policy: policy.clone(),
        target,
        access: access.clone(),
        exists,
        principal,
        verdicts,
    };
    let none = Access::default();
    let alice_owns = owned_by("alice");
    vec![
        // A new orchestration: anyone authenticated may start (and so own) it; nothing else.
        row("new orchestration", &enforcing, orch(), &none, false, Some(alice()), "C-------"),
        row("new orchestration", &enforcing, orch(), &none, false, Some(bob()), "C-------"),
        row("new orchestration", &enforcing, orch(), &none, false, Some(root()), "CAAAAAAA"),
        row("new orchestration", &enforcing, orch(), &none, false, None, "--------"),
        // A new entity: created by its first signal, call or lock.
        row("new entity", &enforcing, entity(), &none, false, Some(bob()), "-CC--C--"),
        row("new entity", &enforcing, entity(), &none, false, None, "--------"),
        // Owned by alice.
        row("owned by alice", &enforcing, orch(), &alice_owns, true, Some(alice()), "AAAAAAAA"),
        row("owned by alice", &enforcing, orch(), &alice_owns, true, Some(bob()), "--------"),
        row("owned by alice", &enforcing, orch(), &alice_owns, true, Some(bob_auditor()), "--------"),
        row("owned by alice", &enforcing, orch(), &alice_owns, true, Some(root()), "AAAAAAAA"),
        row("owned by alice", &enforcing, orch(), &alice_owns, true, None, "--------"),
        row("owned by alice, entity", &enforcing, entity(), &alice_owns, true, Some(bob()), "--------"),
        // An owned instance that no longer exists is still owned (nobody else re-creates it).
        row("owned, deleted", &enforcing, entity(), &alice_owns, false, Some(bob()), "--------"),
        row("owned, deleted", &enforcing, entity(), &alice_owns, false, Some(alice()), "AAAAAAAA"),
        // Existing with no owner (made anonymously, or before authorization): admins only.
        row("ownerless", &enforcing, orch(), &none, true, Some(alice()), "--------"),
        row("ownerless", &enforcing, orch(), &none, true, Some(root()), "AAAAAAAA"),
        // Shares.
        row("shared read+signal with bob", &enforcing, orch(), &shared_with_bob, true, Some(bob()), "-A-A----"),
        row(
            "shared read+signal with bob",
            &enforcing,
            orch(),
            &shared_with_bob,
            true,
            Some(carol_teller()),
            "--------",
        ),
        row(
            "shared read with auditors",
            &enforcing,
            orch(),
            &shared_with_auditors,
            true,
            Some(bob_auditor()),
            "---A----",
        ),
        row("shared read with auditors", &enforcing, orch(), &shared_with_auditors, true, Some(bob()), "--------"),
        row("revoked from bob", &enforcing, orch(), &revoked, true, Some(bob()), "--------"),
        row("revoked from bob", &enforcing, orch(), &revoked, true, Some(alice()), "AAAAAAAA"),
        row("revoked from auditors", &enforcing, orch(), &role_revoked, true, Some(bob_auditor()), "--------"),
        // Ownership moves.
        row("transferred to bob", &enforcing, orch(), &transferred, true, Some(bob()), "AAAAAAAA"),
        row("transferred to bob", &enforcing, orch(), &transferred, true, Some(alice()), "--------"),
        row("alice added bob", &enforcing, orch(), &co_owned, true, Some(bob()), "AAAAAAAA"),
        row("alice added bob", &enforcing, orch(), &co_owned, true, Some(alice()), "AAAAAAAA"),
        // Anonymous access on: no principal may do everything; principals are still checked.
        row("anonymous mode, owned", &Policy::open(), orch(), &alice_owns, true, None, "AAAAAAAA"),
        row("anonymous mode, owned", &Policy::open(), orch(), &alice_owns, true, Some(bob()), "--------"),
        row("anonymous mode, new", &Policy::open(), orch(), &none, false, None, "AAAAAAAA"),
        // Creation policies.
        row("tellers create transfers", &teller_only, orch(), &none, false, Some(alice()), "--------"),
        row("tellers create transfers", &teller_only, orch(), &none, false, Some(carol_teller()), "C-------"),
        row("tellers create transfers", &teller_only, orch(), &none, false, Some(root()), "CAAAAAAA"),
        row("tellers create transfers, other type", &teller_only, entity(), &none, false, Some(bob()), "-CC--C--"),
        row("admins create", &admins_only, entity(), &none, false, Some(alice()), "--------"),
        row("admins create", &admins_only, entity(), &none, false, Some(root()), "ACCAACAA"),
    ]
}

#[test]
fn every_principal_operation_and_state_as_the_table_says() {
    let mut checked = 0;
    for r in rows() {
        assert_eq!(r.verdicts.len(), Operation::ALL.len(), "{}: one verdict per operation", r.state);
        for (op, want) in Operation::ALL.into_iter().zip(r.verdicts.chars()) {
            let got = match decide(&r.policy, r.principal.as_ref(), op, &r.target, &r.access, r.exists) {
                Ok(Grant::Creates) => 'C',
                Ok(Grant::Allowed) => 'A',
                Err(reason) => {
                    assert!(reason.starts_with("Forbidden: "), "{reason}");
                    '-'
                }
            };
            let who = r.principal.as_ref().map_or("anonymous".to_owned(), |p| format!("{p} {:?}", p.roles));
            assert_eq!(got, want, "{}: {who} {op} {}", r.state, r.target);
            checked += 1;
        }
    }
    assert!(checked >= 250, "{checked} cases");
}

#[test]
fn sharing_needs_share_and_grants_only_what_the_sharer_holds() {
    let policy = Policy::enforcing();
    let mut access = owned_by("alice");
    let share = |ops: &[&str]| AccessChange::ShareWithUser {
        user: "carol".into(),
        operations: ops.iter().map(|o| o.to_string()).collect(),
    };
    // bob holds nothing: he cannot share.
    let err = change(&policy, Some(&bob()), &orch(), &mut access, &share(&["read"])).unwrap_err();
    assert_eq!(err, "Forbidden: bob may not share orch:Transfer:t1 (ShareWithUser)");
    // alice shares read+share with bob; bob may pass on read, not signal or own.
    let c = AccessChange::ShareWithUser { user: "bob".into(), operations: vec!["read".into(), "share".into()] };
    apply(&policy, &alice(), &orch(), &mut access, c);
    let before = access.clone();
    change(&policy, Some(&bob()), &orch(), &mut access, &share(&["read"])).unwrap();
    assert_eq!(access.users["carol"], [Operation::Read].into());
    let err = change(&policy, Some(&bob()), &orch(), &mut access, &share(&["signal"])).unwrap_err();
    assert!(err.contains("bob cannot grant signal, which it does not hold"), "{err}");
    let err = change(&policy, Some(&bob()), &orch(), &mut access, &share(&["own"])).unwrap_err();
    assert!(err.contains("cannot grant own"), "{err}");
    // Ownership changes need own, which share does not give.
    let err = change(&policy, Some(&bob()), &orch(), &mut access, &AccessChange::AddOwner { user: "bob".into() })
        .unwrap_err();
    assert!(err.contains("bob may not own"), "{err}");
    let err =
        change(&policy, Some(&bob()), &orch(), &mut access, &AccessChange::TransferOwnership { user: "bob".into() })
            .unwrap_err();
    assert!(err.contains("bob may not own"), "{err}");
    assert_eq!(access.owners, before.owners, "a refused change changes nothing");
    // Unknown operations and bad names are refused with the reason.
    let err = change(&policy, Some(&alice()), &orch(), &mut access, &share(&["delete"])).unwrap_err();
    assert!(err.contains("unknown operation \"delete\""), "{err}");
    let long = AccessChange::AddOwner { user: "x".repeat(MAX_NAME_BYTES + 1) };
    assert!(change(&policy, Some(&alice()), &orch(), &mut access, &long).is_err());
    let empty = AccessChange::ShareWithRole { role: String::new(), operations: vec!["read".into()] };
    assert!(change(&policy, Some(&alice()), &orch(), &mut access, &empty).is_err());
}

#[test]
fn a_transfer_really_transfers_and_revokes_drop_every_share() {
    let policy = Policy::enforcing();
    let mut access = owned_by("alice");
    apply(&policy, &alice(), &orch(), &mut access, AccessChange::AddOwner { user: "dave".into() });
    apply(&policy, &alice(), &orch(), &mut access, AccessChange::TransferOwnership { user: "bob".into() });
    assert_eq!(access.owners, ["bob".to_owned()].into(), "every previous owner lost ownership");
    assert!(
        change(&policy, Some(&alice()), &orch(), &mut access, &AccessChange::RevokeUser { user: "x".into() }).is_err()
    );
    let share = AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into(), "call".into()] };
    apply(&policy, &bob(), &orch(), &mut access, share);
    assert_eq!(access.readers(), ["user:bob", "role:auditor"]);
    apply(&policy, &bob(), &orch(), &mut access, AccessChange::RevokeRole { role: "auditor".into() });
    assert!(access.roles.is_empty());
    // An admin may change anything, anonymous access only when on.
    apply(&policy, &root(), &orch(), &mut access, AccessChange::TransferOwnership { user: "erin".into() });
    assert!(change(&policy, None, &orch(), &mut access, &AccessChange::AddOwner { user: "x".into() }).is_err());
    assert!(change(&Policy::open(), None, &orch(), &mut access, &AccessChange::AddOwner { user: "x".into() }).is_ok());
}

#[test]
fn shares_and_owners_are_bounded() {
    let policy = Policy::enforcing();
    let mut access = owned_by("alice");
    for i in 0..MAX_SHARES {
        let c = AccessChange::ShareWithUser { user: format!("u{i}"), operations: vec!["read".into()] };
        apply(&policy, &alice(), &orch(), &mut access, c);
    }
    let one_more = AccessChange::ShareWithRole { role: "r".into(), operations: vec!["read".into()] };
    assert!(change(&policy, Some(&alice()), &orch(), &mut access, &one_more).unwrap_err().contains("256"));
    // Adding to an existing share still works at the bound.
    let again = AccessChange::ShareWithUser { user: "u0".into(), operations: vec!["signal".into()] };
    apply(&policy, &alice(), &orch(), &mut access, again);
    for i in 1..MAX_OWNERS {
        apply(&policy, &alice(), &orch(), &mut access, AccessChange::AddOwner { user: format!("o{i}") });
    }
    let err = change(&policy, Some(&alice()), &orch(), &mut access, &AccessChange::AddOwner { user: "z".into() });
    assert!(err.unwrap_err().contains("64 owners"));
    // A principal with too many roles or an empty user is refused outright.
    let many = Principal::new("m", (0..=MAX_ROLES).map(|i| format!("r{i}")));
    assert!(decide(&policy, Some(&many), Operation::Read, &orch(), &access, true).is_err());
    assert!(decide(&policy, Some(&Principal::new("", ["admin"])), Operation::Read, &orch(), &access, true).is_err());
}

#[test]
fn a_search_filter_names_the_user_and_its_roles_and_admins_get_none() {
    let policy = Policy::enforcing();
    assert_eq!(
        search_filter(&policy, &Principal::new("bob", ["auditor"])).unwrap().as_deref(),
        Some("readers:=[`user:bob`,`role:auditor`]")
    );
    assert_eq!(search_filter(&policy, &root()).unwrap(), None);
    assert!(search_filter(&policy, &Principal::new("x`||readers:*", Vec::<String>::new())).is_err());
    // The filter matches exactly what Access::readers lists for a reader.
    let mut access = owned_by("alice");
    let c = AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into()] };
    apply(&policy, &alice(), &orch(), &mut access, c);
    assert!(access.readers().contains(&"role:auditor".to_owned()));
    assert!(access.readers().contains(&"user:alice".to_owned()));
}

#[test]
fn reading_from_the_readers_list_agrees_with_holds_read() {
    let policy = Policy::enforcing();
    let mut access = owned_by("alice");
    let c = AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into()] };
    apply(&policy, &alice(), &orch(), &mut access, c);
    let c = AccessChange::ShareWithUser { user: "carol".into(), operations: vec!["signal".into()] };
    apply(&policy, &alice(), &orch(), &mut access, c);
    let readers = access.readers();
    for p in [alice(), bob(), bob_auditor(), carol_teller(), root()] {
        assert_eq!(
            reads(&policy, Some(&p), &readers),
            holds(&policy, Some(&p), &access, Operation::Read),
            "{p} {:?}",
            p.roles
        );
    }
    assert!(!reads(&policy, None, &readers));
    assert!(reads(&Policy::open(), None, &[]));
}
