//! What the management API's writes accept, read without I/O: a write's path parts and body
//! become the target and the event to send, or a [`Refusal`] with a code and a message. Pure (the
//! API adds the HTTP status, the registry check and the producer), so it can be fuzzed.

use durable_schemas::{AccessChange, Action, Event, Payload};
use serde::Deserialize;
use serde_json::Value;

use crate::id::{InstanceId, Kind};

/// Why a request is refused: a stable code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `bad_body`, `bad_instance_id`, `not_an_orchestration` (400) or `not_registered` (404).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A write, with what its path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<'a> {
    /// `POST /v1/orchestrations/{name}`.
    Start {
        /// Orchestration name.
        name: &'a str,
    },
    /// `POST /v1/entities/{name}/{key}/{operation}`.
    Signal {
        /// Entity name.
        name: &'a str,
        /// Entity key.
        key: &'a str,
        /// Operation.
        operation: &'a str,
    },
    /// `POST /v1/instances/{id}/events/{event}`.
    Raise {
        /// The orchestration's id.
        id: &'a str,
        /// Event name.
        event: &'a str,
    },
    /// `POST /v1/instances/{id}/access`: share, revoke, transfer ownership, add an owner.
    Access {
        /// The instance's id.
        id: &'a str,
    },
    /// `POST /v1/instances/{id}/{action}`: an operator action ([`Action::OPERATOR`]) — a
    /// restart starts a finished orchestration again from its input (the API fills the input
    /// in from the stored record), a rewind runs a failed one on from the activity failure that
    /// ended it, a purge takes an orchestration or an entity.
    Operator {
        /// Which ([`Action::is_operator`]; another is refused).
        action: Action,
        /// The instance's id.
        id: &'a str,
    },
}

impl Write<'_> {
    /// The instance a write names in its path, if it names one.
    pub fn instance(&self) -> Option<&str> {
        match *self {
            Write::Start { .. } | Write::Signal { .. } => None,
            Write::Raise { id, .. } | Write::Access { id } | Write::Operator { id, .. } => Some(id),
        }
    }
}

/// A write read: where the event goes, its id if the client chose one, and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The target instance.
    pub target: InstanceId,
    /// The client's event id (makes a retry idempotent).
    pub event_id: Option<String>,
    /// The event.
    pub event: Event,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    key: Option<String>,
    input: Option<Value>,
    event_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    input: Option<Value>,
    event_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RaiseBody {
    payload: Option<Value>,
    event_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
    event_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIdBody {
    event_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    action: Option<String>,
    user: Option<String>,
    role: Option<String>,
    operations: Option<Vec<String>>,
    event_id: Option<String>,
}

impl AccessBody {
    /// The sharing event this body asks for.
    fn change(self) -> Result<AccessChange, Refusal> {
        let bad = |m: String| Refusal::new("bad_body", m);
        let action = self.action.ok_or_else(|| {
            bad("say what to do: {\"action\": \"share\" | \"revoke\" | \"transfer\" | \"add_owner\", ...}".into())
        })?;
        let operations = || -> Result<Vec<String>, Refusal> {
            let ops = self.operations.clone().unwrap_or_default();
            if ops.is_empty() {
                return Err(bad(format!("share needs operations, some of: {}", AccessChange::OPERATIONS.join(", "))));
            }
            match ops.iter().find(|o| !AccessChange::OPERATIONS.contains(&o.as_str())) {
                Some(o) => {
                    Err(bad(format!("unknown operation {o:?}; operations: {}", AccessChange::OPERATIONS.join(", "))))
                }
                None => Ok(ops),
            }
        };
        let only_user = |what: &str| -> Result<String, Refusal> {
            match (&self.user, &self.role) {
                (Some(user), None) => Ok(user.clone()),
                _ => Err(bad(format!("{what} names one user: {{\"action\": \"{what}\", \"user\": \"...\"}}"))),
            }
        };
        Ok(match action.as_str() {
            "share" => match (&self.user, &self.role) {
                (Some(user), None) => AccessChange::ShareWithUser { user: user.clone(), operations: operations()? },
                (None, Some(role)) => AccessChange::ShareWithRole { role: role.clone(), operations: operations()? },
                _ => return Err(bad("share with either a user or a role".into())),
            },
            "revoke" => match (&self.user, &self.role) {
                (Some(user), None) => AccessChange::RevokeUser { user: user.clone() },
                (None, Some(role)) => AccessChange::RevokeRole { role: role.clone() },
                _ => return Err(bad("revoke from either a user or a role".into())),
            },
            "transfer" => AccessChange::TransferOwnership { user: only_user("transfer")? },
            "add_owner" => AccessChange::AddOwner { user: only_user("add_owner")? },
            other => {
                return Err(bad(format!("unknown action {other:?}: share, revoke, transfer or add_owner")));
            }
        })
    }
}

/// A JSON body that may be absent or empty.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Refusal::new("bad_body", format!("the request body is not the expected JSON: {e}")))
}

fn payload(value: Option<Value>) -> Payload {
    Payload::json(&value.unwrap_or(Value::Null)).expect("a JSON value serializes")
}

/// An instance id from a path.
pub fn parse_id(id: &str) -> Result<InstanceId, Refusal> {
    InstanceId::parse(id).map_err(|e| {
        Refusal::new(
            "bad_instance_id",
            format!("{id:?} is not an instance id ({e}); ids look like orch:<name>:<key> or entity:<name>:<key>"),
        )
    })
}

/// The id of `name` and `key`; a name that is no valid name is not registered either.
fn named(kind: Kind, name: &str, key: impl Into<String>) -> Result<InstanceId, Refusal> {
    InstanceId::new(kind, name, key).map_err(|e| {
        let what = if kind == Kind::Entity { "entity" } else { "orchestration" };
        Refusal::new("not_registered", format!("no {what} named {name:?} is registered ({e})"))
    })
}

fn orchestration_id(id: &str) -> Result<InstanceId, Refusal> {
    let target = parse_id(id)?;
    if target.kind() != Kind::Orchestration {
        return Err(Refusal::new(
            "not_an_orchestration",
            format!("{id} is not an orchestration: events, terminate, suspend, resume and restart go to orch:<name>:<key> instances"),
        ));
    }
    Ok(target)
}

/// Read a write: `new_key` names a started orchestration whose body gives no key.
pub fn read(write: &Write<'_>, bytes: &[u8], new_key: impl FnOnce() -> String) -> Result<Request, Refusal> {
    Ok(match *write {
        Write::Start { name } => {
            let b: StartBody = body(bytes)?;
            let key = b.key.unwrap_or_else(new_key);
            let target = named(Kind::Orchestration, name, key)?;
            Request { target, event_id: b.event_id, event: Event::StartOrchestration { input: payload(b.input) } }
        }
        Write::Signal { name, key, operation } => {
            let b: SignalBody = body(bytes)?;
            let event = Event::EntityOperation { operation: operation.to_owned(), input: payload(b.input) };
            Request { target: named(Kind::Entity, name, key)?, event_id: b.event_id, event }
        }
        Write::Raise { id, event } => {
            let b: RaiseBody = body(bytes)?;
            let target = orchestration_id(id)?;
            let event = Event::RaiseEvent { name: event.to_owned(), payload: payload(b.payload) };
            Request { target, event_id: b.event_id, event }
        }
        Write::Operator { action, id } => operator(action, id, bytes)?,
        Write::Access { id } => {
            let mut b: AccessBody = body(bytes)?;
            let target = parse_id(id)?;
            if target.kind() == Kind::Activity {
                return Err(Refusal::new("bad_instance_id", format!("{id} is an activity call: it has no owners")));
            }
            let event_id = b.event_id.take();
            Request { target, event_id, event: Event::Access(b.change()?) }
        }
    })
}

/// Read an operator action's body (`{"reason"?, "event_id"?}`; a restart's takes no reason).
fn operator(action: Action, id: &str, bytes: &[u8]) -> Result<Request, Refusal> {
    let via = |what: &str| format!("{what} through the management API");
    if action == Action::Restart {
        let b: EventIdBody = body(bytes)?;
        let event = Event::StartOrchestration { input: Payload::null() };
        return Ok(Request { target: orchestration_id(id)?, event_id: b.event_id, event });
    }
    let b: ReasonBody = body(bytes)?;
    let (target, event) = match action {
        Action::Terminate => {
            (orchestration_id(id)?, Event::Terminate { reason: b.reason.unwrap_or_else(|| via("terminated")) })
        }
        Action::Suspend => {
            (orchestration_id(id)?, Event::Suspend { reason: b.reason.unwrap_or_else(|| via("suspended")) })
        }
        Action::Resume => (orchestration_id(id)?, Event::Resume { reason: b.reason.unwrap_or_default() }),
        Action::Rewind => (orchestration_id(id)?, Event::Rewind { reason: b.reason.unwrap_or_else(|| via("rewound")) }),
        Action::Purge => {
            let target = parse_id(id)?;
            if target.kind() == Kind::Activity {
                return Err(Refusal::new(
                    "bad_instance_id",
                    format!("{id} is an activity call: nothing is stored for it"),
                ));
            }
            (target, Event::Purge { reason: b.reason.unwrap_or_else(|| via("purged")) })
        }
        other => {
            let words: Vec<&str> = Action::OPERATOR.iter().map(|a| a.as_str()).collect();
            return Err(Refusal::new(
                "unknown_action",
                format!("{other} is no operator action: they are {}", words.join(", ")),
            ));
        }
    };
    Ok(Request { target, event_id: b.event_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_optional_strict_and_refused_with_a_code() {
        let start = read(&Write::Start { name: "Hello" }, b"  ", || "k1".into()).unwrap();
        assert_eq!(start.target.canonical(), "orch:Hello:k1");
        let start = read(&Write::Start { name: "Hello" }, br#"{"key":"a b","input":[1]}"#, || unreachable!()).unwrap();
        assert_eq!(start.target.canonical(), "orch:Hello:a%20b");
        let typo = read(&Write::Start { name: "Hello" }, br#"{"kee":"x"}"#, || "k".into()).unwrap_err();
        assert_eq!(typo.code, "bad_body");
        let wrong =
            read(&Write::Operator { action: Action::Terminate, id: "entity:C:1" }, b"", || "k".into()).unwrap_err();
        assert_eq!(wrong.code, "not_an_orchestration");
        let garbage = read(&Write::Raise { id: "garbage", event: "e" }, b"{}", || "k".into()).unwrap_err();
        assert_eq!(garbage.code, "bad_instance_id");
        let access = |body: &str| read(&Write::Access { id: "orch:T:1" }, body.as_bytes(), || "k".into());
        let share = access(r#"{"action":"share","role":"auditor","operations":["read"],"event_id":"e1"}"#).unwrap();
        assert_eq!(share.event_id.as_deref(), Some("e1"));
        assert_eq!(
            share.event,
            Event::Access(AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into()] })
        );
        let transfer = access(r#"{"action":"transfer","user":"bob"}"#).unwrap().event;
        assert_eq!(transfer, Event::Access(AccessChange::TransferOwnership { user: "bob".into() }));
        for (body, says) in [
            ("", "say what to do"),
            (r#"{"action":"share","user":"bob"}"#, "share needs operations"),
            (r#"{"action":"share","user":"bob","operations":["delete"]}"#, "unknown operation"),
            (r#"{"action":"share","user":"bob","role":"r","operations":["read"]}"#, "either a user or a role"),
            (r#"{"action":"transfer","role":"r"}"#, "names one user"),
            (r#"{"action":"give"}"#, "unknown action"),
        ] {
            let refused = access(body).unwrap_err();
            assert!(refused.message.contains(says), "{body}: {}", refused.message);
        }
        // Found by the api_request fuzz target: a name that is not a valid name used to panic.
        for name in ["", "a b", "\u{0}"] {
            let refused = read(&Write::Start { name }, b"", || "k".into()).unwrap_err();
            assert_eq!(refused.code, "not_registered", "{name:?}");
            let write = Write::Signal { name, key: "k", operation: "op" };
            assert_eq!(read(&write, b"", || "k".into()).unwrap_err().code, "not_registered");
        }
    }
}
