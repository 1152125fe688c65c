//! The Infrastructure layer's authorization: who may do what to an instance. Pure: no I/O, no
//! clock — the engine decides every event with it, the management API every read, and the
//! simulator checks it against adversaries.
//!
//! # The model
//! - A [`Principal`] is a user id and roles. Events carry theirs in a `WithPrincipal` wrapper:
//!   the management API writes the one its bearer token proves, the partition core the one the
//!   deployment configured for outside Kafka producers ([`Policy::ingress`]), and every event an
//!   instance sends carries the principal it acts for (its [`Access::run_as`]). An event with no
//!   principal is anonymous: it may do everything when the deployment allows anonymous access
//!   ([`Policy::anonymous`], what `durable dev` runs), nothing otherwise.
//! - Every instance has an [`Access`] in its stored record, committed with it: its **owners**
//!   (may do everything) and what is **shared** with users and with roles ([`Operation`]s).
//! - The first principal to create an instance owns it — orchestrations are created by `start`,
//!   entities by their first `signal`, `call` or `lock` — when the type's [`Creation`] rule lets
//!   that principal create it. An instance that exists with no owner (created anonymously, or
//!   before authorization was on) is reachable by admins (and anonymous access) only.
//! - A principal with the admin role ([`Policy::admin_role`]) may do everything.
//! - Sharing ([`durable_schemas::AccessChange`]) needs `share` (and a sharer grants only what it
//!   holds); transferring or adding ownership needs `own`.
//!
//! Everything not granted is refused: [`decide`] says why, the engine dead-letters the event as
//! `Forbidden` (and answers a call with a `Forbidden` failure), and nothing about the target
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use durable_schemas::{AccessChange, Event};
use serde::{Deserialize, Serialize};

use crate::id::{InstanceId, Kind};

/// The failure kind of a refused event or call.
pub const FORBIDDEN: &str = "Forbidden";

/// Most owners one instance has.
pub const MAX_OWNERS: usize = 64;
/// Most users plus roles one instance is shared with.
pub const MAX_SHARES: usize = 256;
/// Longest user or role name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most roles a principal carries.
pub const MAX_ROLES: usize = 64;

/// What a principal may do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Start (or restart) an orchestration.
    Start,
    /// Signal an entity, raise an event on an orchestration.
    Signal,
    /// Call an entity (an operation that answers).
    Call,
    /// Read its state and history.
    Read,
    /// Terminate an orchestration.
    Terminate,
    /// Take an entity into a critical section.
    Lock,
    /// Share it with users and roles, revoke shares.
    Share,
    /// Transfer ownership, add owners.
    Own,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 8] = [
        Operation::Start,
        Operation::Signal,
        Operation::Call,
        Operation::Read,
        Operation::Terminate,
        Operation::Lock,
        Operation::Share,
        Operation::Own,
    ];

    /// Its name on the wire and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Signal => "signal",
            Operation::Call => "call",
            Operation::Read => "read",
            Operation::Terminate => "terminate",
            Operation::Lock => "lock",
            Operation::Share => "share",
            Operation::Own => "own",
        }
    }

    /// The operation named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who an event acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// The user id (a token's `sub`).
    pub user: String,
    /// Its roles.
    pub roles: Vec<String>,
}

impl Principal {
    /// A principal with `user` and `roles`.
    pub fn new(user: impl Into<String>, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { user: user.into(), roles: roles.into_iter().map(Into::into).collect() }
    }

    /// Whether it is well-formed: a non-empty user, names within [`MAX_NAME_BYTES`], at most
    /// [`MAX_ROLES`] roles.
    pub fn check(&self) -> Result<(), String> {
        if self.user.is_empty() {
            return Err("a principal needs a user".into());
        }
        if self.roles.len() > MAX_ROLES {
            return Err(format!("a principal carries at most {MAX_ROLES} roles"));
        }
        match std::iter::once(&self.user).chain(&self.roles).find(|n| n.len() > MAX_NAME_BYTES) {
            Some(_) => Err(format!("user and role names are at most {MAX_NAME_BYTES} bytes")),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}

/// `body` sent on behalf of `principal`: wrapped in `WithPrincipal`, beneath any `WithDelay`
/// (so the delay is still seen first and the principal travels with the delayed event).
pub fn with_principal(body: Event, principal: &Principal) -> Event {
    match body {
        Event::WithDelay { fire_at, inner } => {
            Event::WithDelay { fire_at, inner: Box::new(with_principal(*inner, principal)) }
        }
        other => Event::WithPrincipal {
            user: principal.user.clone(),
            roles: principal.roles.clone(),
            inner: Box::new(other),
        },
    }
}

/// Send `envelope` on behalf of `principal`: its body wrapped by [`with_principal`].
pub fn send_as(envelope: &mut durable_schemas::Envelope, principal: &Principal) {
    let body = std::mem::replace(&mut envelope.body, Event::Terminate { reason: String::new() });
    envelope.body = with_principal(body, principal);
}

/// Who may do what to one instance; stored in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Users who may do everything.
    pub owners: BTreeSet<String>,
    /// What is shared with each user.
    pub users: BTreeMap<String, BTreeSet<Operation>>,
    /// What is shared with each role.
    pub roles: BTreeMap<String, BTreeSet<Operation>>,
    /// The principal an orchestration acts for (who started its current run): every event it
    /// sends carries it. Entities act for the caller of each operation instead.
    pub run_as: Option<Principal>,
}

impl Access {
    /// Whether nothing is recorded (the default: no owner, no share).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.users.is_empty() && self.roles.is_empty() && self.run_as.is_none()
    }

    /// Who may read the instance, for search: `user:<id>` of owners and users shared `read`,
    /// `role:<name>` of roles shared `read` (admins read everything; see [`Policy`]).
    pub fn readers(&self) -> Vec<String> {
        let users = self
            .owners
            .iter()
            .chain(self.users.iter().filter(|(_, ops)| ops.contains(&Operation::Read)).map(|(u, _)| u))
            .map(|u| format!("user:{u}"))
            .collect::<BTreeSet<_>>();
        let roles =
            self.roles.iter().filter(|(_, ops)| ops.contains(&Operation::Read)).map(|(r, _)| format!("role:{r}"));
        users.into_iter().chain(roles).collect()
    }
}

/// The Typesense filter that limits a search to the documents `principal` may read (`None`:
/// an admin, who reads everything), or why no filter can be made (a name with a backtick).
pub fn search_filter(policy: &Policy, principal: &Principal) -> Result<Option<String>, String> {
    if policy.is_admin(principal) {
        return Ok(None);
    }
    let names = std::iter::once(format!("user:{}", principal.user))
        .chain(principal.roles.iter().map(|r| format!("role:{r}")))
        .collect::<Vec<_>>();
    if names.iter().any(|n| n.contains('`')) {
        return Err("user and role names with a backtick cannot be searched for".into());
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    Ok(Some(format!("readers:=[{}]", quoted.join(","))))
}

/// Who may create instances of a type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Creation {
    /// Any authenticated principal (the default).
    Anyone,
    /// Principals with one of these roles.
    Roles(BTreeSet<String>),
    /// Admins only.
    Nobody,
}

/// The deployment's authorization settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whether events with no principal may do everything (development; `durable dev`).
    pub anonymous: bool,
    /// The role that may do everything.
    pub admin_role: String,
    /// Who may create instances, by orchestration or entity name; unlisted names follow
    /// `default_creation`.
    pub creation: BTreeMap<String, Creation>,
    /// Who may create instances of an unlisted type.
    pub default_creation: Creation,
    /// The principal events from outside Kafka producers act as (`None`: anonymous).
    pub ingress: Option<Principal>,
    /// Most live instances one user may have created, by orchestration or entity name
    /// (unlisted names: no limit); enforced by [`crate::quota`].
    pub limits: BTreeMap<String, u32>,
}

impl Policy {
    /// Anonymous access allowed: what embedded and test engines run unless told otherwise.
    pub fn open() -> Self {
        Self {
            anonymous: true,
            admin_role: "admin".into(),
            creation: BTreeMap::new(),
            default_creation: Creation::Anyone,
            ingress: None,
            limits: BTreeMap::new(),
        }
    }

    /// Authorization on: no anonymous access, anyone authenticated may create.
    pub fn enforcing() -> Self {
        Self { anonymous: false, ..Self::open() }
    }

    /// Whether `principal` may run the deployment's own operations (accept a loss of state …):
    /// an admin, or anyone when anonymous access is on and there is no principal.
    pub fn may_administer(&self, principal: Option<&Principal>) -> bool {
        principal.map_or(self.anonymous, |p| self.is_admin(p))
    }

    fn is_admin(&self, principal: &Principal) -> bool {
        principal.roles.contains(&self.admin_role)
    }

    fn may_create(&self, principal: &Principal, name: &str) -> bool {
        match self.creation.get(name).unwrap_or(&self.default_creation) {
            Creation::Anyone => true,
            Creation::Roles(roles) => principal.roles.iter().any(|r| roles.contains(r)),
            Creation::Nobody => false,
        }
    }
}

/// Whether `principal` holds `op` on an instance with `access` (admin, owner, or shared with its
/// user or one of its roles; anything when anonymous access is on and there is no principal).
pub fn holds(policy: &Policy, principal: Option<&Principal>, access: &Access, op: Operation) -> bool {
    let Some(p) = principal else { return policy.anonymous };
    policy.is_admin(p)
        || access.owners.contains(&p.user)
        || access.users.get(&p.user).is_some_and(|ops| ops.contains(&op))
        || p.roles.iter().any(|r| access.roles.get(r).is_some_and(|ops| ops.contains(&op)))
}

/// Whether `principal` may read an instance whose readers ([`Access::readers`]) are `readers`:
/// what [`holds`] says of `read`, from the list the index and search keep.
pub fn reads(policy: &Policy, principal: Option<&Principal>, readers: &[String]) -> bool {
    let Some(p) = principal else { return policy.anonymous };
    policy.is_admin(p)
        || readers.iter().any(|r| {
            r.strip_prefix("user:").is_some_and(|u| *u == p.user)
                || r.strip_prefix("role:").is_some_and(|role| p.roles.iter().any(|mine| mine == role))
        })
}

/// What [`decide`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Go ahead.
    Allowed,
    /// Go ahead: this creates the instance, and the principal becomes its owner.
    Creates,
}

/// The operation an event asks of its target (`call`: it is an entity operation that expects a
/// reply), `None` for the protocol's own messages (replies, releases, activity invocations),
/// which their parties' checks cover ([`crate::trust`]), and for sharing events, which
/// [`change`] decides.
pub fn operation(core: &Event, call: bool) -> Option<Operation> {
    Some(match core {
        // A rewind runs a failed orchestration on, as a restart runs it again.
        Event::StartOrchestration { .. } | Event::Rewind { .. } => Operation::Start,
        Event::RaiseEvent { .. } => Operation::Signal,
        Event::EntityOperation { .. } if call => Operation::Call,
        Event::EntityOperation { .. } => Operation::Signal,
        // Suspending, resuming and purging stop or end an instance as terminating does.
        Event::Terminate { .. } | Event::Suspend { .. } | Event::Resume { .. } | Event::Purge { .. } => {
            Operation::Terminate
        }
        Event::LockRequest { .. } => Operation::Lock,
        _ => return None,
    })
}

/// The operation `core` asks of `target`, which `exists` (has a body) or not: [`operation`],
/// except that an event raised on an orchestration that does not exist yet asks to start it —
/// it is kept for the start (signal-with-start), and its sender becomes the owner.
pub fn asks(core: &Event, call: bool, target: &InstanceId, exists: bool) -> Option<Operation> {
    match operation(core, call)? {
        Operation::Signal if !exists && target.kind() == Kind::Orchestration => Some(Operation::Start),
        op => Some(op),
    }
}

/// Whether the operation `op` creates an instance of `kind` (or revives one that is not live:
/// see [`crate::quota`]).
pub(crate) fn creates(kind: Kind, op: Operation) -> bool {
    match kind {
        Kind::Orchestration => op == Operation::Start,
        Kind::Entity => matches!(op, Operation::Signal | Operation::Call | Operation::Lock),
        Kind::Activity => false,
    }
}

/// Decide whether `principal` may do `op` to `target`, whose stored access is `access` and which
/// `exists` (has a body) or not. `Err` says why not.
pub fn decide(
    policy: &Policy,
    principal: Option<&Principal>,
    op: Operation,
    target: &InstanceId,
    access: &Access,
    exists: bool,
) -> Result<Grant, String> {
    let Some(p) = principal else {
        return if policy.anonymous {
            Ok(Grant::Allowed)
        } else {
            Err(format!("{FORBIDDEN}: anonymous {op} of {target} refused: this deployment requires a principal"))
        };
    };
    p.check().map_err(|e| format!("{FORBIDDEN}: {e}"))?;
    let new = !exists && access.owners.is_empty();
    if new && creates(target.kind(), op) && (policy.is_admin(p) || policy.may_create(p, target.name())) {
        return Ok(Grant::Creates);
    }
    if holds(policy, Some(p), access, op) {
        return Ok(Grant::Allowed);
    }
    if new && creates(target.kind(), op) {
        return Err(format!("{FORBIDDEN}: {p} may not create a {} ({target})", target.name()));
    }
    Err(format!("{FORBIDDEN}: {p} may not {op} {target}"))
}

/// What applying a sharing event takes: `share`, or `own` for ownership changes.
pub fn needed(change: &AccessChange) -> Operation {
    match change {
        AccessChange::TransferOwnership { .. } | AccessChange::AddOwner { .. } => Operation::Own,
        _ => Operation::Share,
    }
}

/// Apply a sharing event sent by `principal` to `access` (of `target`), or say why not (nothing
/// changes then). A sharer grants only operations it holds itself.
pub fn change(
    policy: &Policy,
    principal: Option<&Principal>,
    target: &InstanceId,
    access: &mut Access,
    change: &AccessChange,
) -> Result<(), String> {
    let op = needed(change);
    if !holds(policy, principal, access, op) {
        let who = principal.map_or_else(|| "anonymous".to_owned(), |p| p.user.clone());
        return Err(format!("{FORBIDDEN}: {who} may not {op} {target} ({})", change.name()));
    }
    if let Some(p) = principal {
        p.check().map_err(|e| format!("{FORBIDDEN}: {e}"))?;
    }
    let name_ok = |n: &str| {
        if n.is_empty() || n.len() > MAX_NAME_BYTES {
            Err(format!("{}: a user or role name is 1 to {MAX_NAME_BYTES} bytes", change.name()))
        } else {
            Ok(())
        }
    };
    let operations = |names: &[String]| -> Result<BTreeSet<Operation>, String> {
        let mut ops = BTreeSet::new();
        for n in names {
            let op = Operation::parse(n).ok_or_else(|| {
                format!(
                    "{}: unknown operation {n:?} (operations: {})",
                    change.name(),
                    AccessChange::OPERATIONS.join(", ")
                )
            })?;
            if !holds(policy, principal, access, op) {
                return Err(format!("{FORBIDDEN}: {} cannot grant {op}, which it does not hold", who(principal)));
            }
            ops.insert(op);
        }
        Ok(ops)
    };
    let shares = access.users.len() + access.roles.len();
    // Add `ops` to what `grantee` holds in `map` (users or roles), within the bound on shares.
    let share = |map: &mut BTreeMap<String, BTreeSet<Operation>>, grantee: &String, ops| {
        if !map.contains_key(grantee) && shares >= MAX_SHARES {
            return Err(format!("{target} is shared with {MAX_SHARES} users and roles already"));
        }
        map.entry(grantee.clone()).or_default().extend(ops);
        Ok(())
    };
    match change {
        AccessChange::ShareWithUser { user, operations: names } => {
            name_ok(user)?;
            let ops = operations(names)?;
            share(&mut access.users, user, ops)?;
        }
        AccessChange::ShareWithRole { role, operations: names } => {
            name_ok(role)?;
            let ops = operations(names)?;
            share(&mut access.roles, role, ops)?;
        }
        AccessChange::RevokeUser { user } => {
            access.users.remove(user);
        }
        AccessChange::RevokeRole { role } => {
            access.roles.remove(role);
        }
        AccessChange::TransferOwnership { user } => {
            name_ok(user)?;
            access.owners = BTreeSet::from([user.clone()]);
        }
        AccessChange::AddOwner { user } => {
            name_ok(user)?;
            if !access.owners.contains(user) && access.owners.len() >= MAX_OWNERS {
                return Err(format!("{target} has {MAX_OWNERS} owners already"));
            }
            access.owners.insert(user.clone());
        }
    }
    Ok(())
}

fn who(principal: Option<&Principal>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.user.clone())
}

#[cfg(test)]
mod tests;
