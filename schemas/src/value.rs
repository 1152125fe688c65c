//! The mapping between typed events and Avro values.
//!
//! Written by hand rather than through serde so that the wire shape is exactly the `.avsc`
//! (named unions, `timestamp-millis`, `bytes`) and so that decoding looks fields up by name: a
//! datum resolved from a newer writer schema with extra fields still maps.

use apache_avro::types::Value;
use apache_avro::Schema;

use crate::{AccessChange, DecodeError, Envelope, Event, Failure, Origin, Payload, Result};

/// Union branch names of `Envelope.body.event`, in index order.
pub(crate) fn event_branches(schema: &Schema) -> Vec<String> {
    let field = |schema: &Schema, name: &str| -> Schema {
        match schema {
            Schema::Record(r) => r
                .fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.schema.clone())
                .unwrap_or_else(|| panic!("envelope schema lacks field {name}")),
            other => panic!("expected a record, found {other:?}"),
        }
    };
    match field(&field(schema, "body"), "event") {
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| match v {
                Schema::Record(r) => r.name.name().to_owned(),
                other => panic!("event union holds a non-record {other:?}"),
            })
            .collect(),
        other => panic!("Event.event is not a union: {other:?}"),
    }
}

fn rec(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn opt_string(s: &Option<String>) -> Value {
    match s {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(string(s))),
    }
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| string(s)).collect())
}

fn payload(p: &Payload) -> Value {
    rec(vec![("content_type", string(&p.content_type)), ("data", Value::Bytes(p.data.clone()))])
}

fn failure(f: &Failure) -> Value {
    rec(vec![("kind", string(&f.kind)), ("message", string(&f.message)), ("details", opt_string(&f.details))])
}

pub(crate) fn envelope_to_value(e: &Envelope, branches: &[String]) -> Value {
    let origin = match &e.origin {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(o) => Value::Union(1, Box::new(rec(vec![("stream", string(&o.stream)), ("seq", Value::Long(o.seq))]))),
    };
    rec(vec![
        ("id", string(&e.id)),
        ("target", string(&e.target)),
        ("source", opt_string(&e.source)),
        ("origin", origin),
        ("timestamp", Value::Long(e.timestamp)),
        ("body", event_to_value(&e.body, branches)),
    ])
}

fn event_to_value(event: &Event, branches: &[String]) -> Value {
    let corr = |c: &str| ("correlation", string(c));
    let fields = match event {
        Event::StartOrchestration { input } => vec![("input", payload(input))],
        Event::ScheduleActivity { input, attempt, timeout_ms } => {
            let timeout = match timeout_ms {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(ms) => Value::Union(1, Box::new(Value::Long(*ms))),
            };
            vec![("input", payload(input)), ("attempt", Value::Int(*attempt)), ("timeout_ms", timeout)]
        }
        Event::ActivityCompleted { correlation, result } => vec![corr(correlation), ("result", payload(result))],
        Event::ActivityFailed { correlation, failure: f } => vec![corr(correlation), ("failure", failure(f))],
        Event::RaiseEvent { name, payload: p } => {
            vec![("name", string(name)), ("payload", payload(p))]
        }
        Event::EntityOperation { operation, input } => {
            vec![("operation", string(operation)), ("input", payload(input))]
        }
        Event::OperationResult { correlation, outcome } => {
            let outcome = match outcome {
                Ok(p) => Value::Union(0, Box::new(payload(p))),
                Err(f) => Value::Union(1, Box::new(failure(f))),
            };
            vec![corr(correlation), ("outcome", outcome)]
        }
        Event::OrchestrationCompleted { correlation, output } => {
            vec![corr(correlation), ("output", payload(output))]
        }
        Event::OrchestrationFailed { correlation, failure: f } => vec![corr(correlation), ("failure", failure(f))],
        Event::TimerFired { correlation } => vec![corr(correlation)],
        Event::Terminate { reason }
        | Event::Suspend { reason }
        | Event::Resume { reason }
        | Event::Purge { reason }
        | Event::Rewind { reason } => {
            vec![("reason", string(reason))]
        }
        Event::LockRequest { owner, correlation, participants, position } => vec![
            ("owner", string(owner)),
            corr(correlation),
            ("participants", strings(participants)),
            ("position", Value::Int(*position)),
        ],
        Event::LockGranted { correlation, participants } => {
            vec![corr(correlation), ("participants", strings(participants))]
        }
        Event::LockRelease { owner, correlation } => {
            vec![("owner", string(owner)), corr(correlation)]
        }
        Event::WithDelay { fire_at, inner } => {
            vec![("fire_at", Value::Long(*fire_at)), ("inner", event_to_value(inner, branches))]
        }
        Event::ReplyTo { address, correlation, inner } => {
            vec![("address", string(address)), corr(correlation), ("inner", event_to_value(inner, branches))]
        }
        Event::WithLock { owner, participants, inner } => vec![
            ("owner", string(owner)),
            ("participants", strings(participants)),
            ("inner", event_to_value(inner, branches)),
        ],
        Event::WithPrincipal { user, roles, inner } => {
            vec![("user", string(user)), ("roles", strings(roles)), ("inner", event_to_value(inner, branches))]
        }
        Event::Access(change) => access_fields(change),
    };
    let index = branches
        .iter()
        .position(|b| b == event.name())
        .unwrap_or_else(|| panic!("schema has no branch {}", event.name()));
    rec(vec![("event", Value::Union(index as u32, Box::new(rec(fields))))])
}

/// The fields of a sharing event.
fn access_fields(change: &AccessChange) -> Vec<(&'static str, Value)> {
    match change {
        AccessChange::ShareWithUser { user, operations } => {
            vec![("user", string(user)), ("operations", strings(operations))]
        }
        AccessChange::ShareWithRole { role, operations } => {
            vec![("role", string(role)), ("operations", strings(operations))]
        }
        AccessChange::RevokeUser { user }
        | AccessChange::TransferOwnership { user }
        | AccessChange::AddOwner { user } => vec![("user", string(user))],
        AccessChange::RevokeRole { role } => vec![("role", string(role))],
    }
}

/// Named access to a decoded record's fields.
struct Fields {
    what: &'static str,
    fields: Vec<(String, Value)>,
}

fn shape(msg: impl Into<String>) -> DecodeError {
    DecodeError::Shape(msg.into())
}

impl Fields {
    fn of(what: &'static str, value: Value) -> Result<Self> {
        match value {
            Value::Record(fields) => Ok(Self { what, fields }),
            other => Err(shape(format!("{what}: expected a record, found {other:?}"))),
        }
    }

    fn take(&mut self, name: &str) -> Result<Value> {
        let i = self
            .fields
            .iter()
            .position(|(k, _)| k == name)
            .ok_or_else(|| shape(format!("{}: missing field {name}", self.what)))?;
        Ok(self.fields.swap_remove(i).1)
    }

    fn string(&mut self, name: &str) -> Result<String> {
        match unwrap_union(self.take(name)?) {
            Value::String(s) => Ok(s),
            other => Err(shape(format!("{}.{name}: expected a string, found {other:?}", self.what))),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(shape(format!("{}.{name}: expected null or a string, found {other:?}", self.what))),
        }
    }

    fn long(&mut self, name: &str) -> Result<i64> {
        match unwrap_union(self.take(name)?) {
            Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
            Value::Int(n) => Ok(n.into()),
            other => Err(shape(format!("{}.{name}: expected a long, found {other:?}", self.what))),
        }
    }

    /// An optional `["null", "long"]` field; `None` also when the writer's schema lacks it.
    fn opt_long(&mut self, name: &str) -> Result<Option<i64>> {
        if !self.fields.iter().any(|(k, _)| k == name) {
            return Ok(None);
        }
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::Long(n) => Ok(Some(n)),
            other => Err(shape(format!("{}.{name}: expected null or a long, found {other:?}", self.what))),
        }
    }

    fn int(&mut self, name: &str) -> Result<i32> {
        match unwrap_union(self.take(name)?) {
            Value::Int(n) => Ok(n),
            other => Err(shape(format!("{}.{name}: expected an int, found {other:?}", self.what))),
        }
    }

    fn strings(&mut self, name: &str) -> Result<Vec<String>> {
        match self.take(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(shape(format!("{}.{name}: expected strings, found {other:?}", self.what))),
                })
                .collect(),
            other => Err(shape(format!("{}.{name}: expected an array, found {other:?}", self.what))),
        }
    }

    fn payload(&mut self, name: &str) -> Result<Payload> {
        payload_from(self.take(name)?)
    }

    fn failure(&mut self, name: &str) -> Result<Failure> {
        failure_from(self.take(name)?)
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn payload_from(v: Value) -> Result<Payload> {
    let mut f = Fields::of("Payload", unwrap_union(v))?;
    let content_type = f.string("content_type")?;
    let data = match f.take("data")? {
        Value::Bytes(b) => b,
        other => return Err(shape(format!("Payload.data: expected bytes, found {other:?}"))),
    };
    Ok(Payload { content_type, data })
}

fn failure_from(v: Value) -> Result<Failure> {
    let mut f = Fields::of("Failure", unwrap_union(v))?;
    Ok(Failure { kind: f.string("kind")?, message: f.string("message")?, details: f.opt_string("details")? })
}

pub(crate) fn envelope_from_value(v: Value, branches: &[String]) -> Result<Envelope> {
    let mut f = Fields::of("Envelope", v)?;
    let origin = match unwrap_union(f.take("origin")?) {
        Value::Null => None,
        other => {
            let mut o = Fields::of("Origin", other)?;
            Some(Origin { stream: o.string("stream")?, seq: o.long("seq")? })
        }
    };
    Ok(Envelope {
        id: f.string("id")?,
        target: f.string("target")?,
        source: f.opt_string("source")?,
        origin,
        timestamp: f.long("timestamp")?,
        body: event_from_value(f.take("body")?, branches)?,
    })
}

fn event_from_value(v: Value, branches: &[String]) -> Result<Event> {
    let mut outer = Fields::of("Event", v)?;
    let (index, inner) = match outer.take("event")? {
        Value::Union(i, inner) => (i as usize, *inner),
        other => return Err(shape(format!("Event.event: expected a union, found {other:?}"))),
    };
    let name = branches.get(index).ok_or_else(|| shape(format!("unknown event branch {index}")))?;
    let inner_event =
        |f: &mut Fields| -> Result<Box<Event>> { Ok(Box::new(event_from_value(f.take("inner")?, branches)?)) };
    let what: &'static str = "event";
    let mut f = Fields::of(what, inner)?;
    let event = match name.as_str() {
        "StartOrchestration" => Event::StartOrchestration { input: f.payload("input")? },
        "ScheduleActivity" => Event::ScheduleActivity {
            input: f.payload("input")?,
            attempt: f.int("attempt")?,
            // Absent from the first schema's data.
            timeout_ms: f.opt_long("timeout_ms")?,
        },
        "ActivityCompleted" => {
            Event::ActivityCompleted { correlation: f.string("correlation")?, result: f.payload("result")? }
        }
        "ActivityFailed" => {
            Event::ActivityFailed { correlation: f.string("correlation")?, failure: f.failure("failure")? }
        }
        "RaiseEvent" => Event::RaiseEvent { name: f.string("name")?, payload: f.payload("payload")? },
        "EntityOperation" => Event::EntityOperation { operation: f.string("operation")?, input: f.payload("input")? },
        "OperationResult" => {
            let correlation = f.string("correlation")?;
            let outcome = match f.take("outcome")? {
                Value::Union(0, p) => Ok(payload_from(*p)?),
                Value::Union(1, e) => Err(failure_from(*e)?),
                other => return Err(shape(format!("OperationResult.outcome: unexpected {other:?}"))),
            };
            Event::OperationResult { correlation, outcome }
        }
        "OrchestrationCompleted" => {
            Event::OrchestrationCompleted { correlation: f.string("correlation")?, output: f.payload("output")? }
        }
        "OrchestrationFailed" => {
            Event::OrchestrationFailed { correlation: f.string("correlation")?, failure: f.failure("failure")? }
        }
        "TimerFired" => Event::TimerFired { correlation: f.string("correlation")? },
        "Terminate" => Event::Terminate { reason: f.string("reason")? },
        "Suspend" => Event::Suspend { reason: f.string("reason")? },
        "Resume" => Event::Resume { reason: f.string("reason")? },
        "Purge" => Event::Purge { reason: f.string("reason")? },
        "Rewind" => Event::Rewind { reason: f.string("reason")? },
        "LockRequest" => Event::LockRequest {
            owner: f.string("owner")?,
            correlation: f.string("correlation")?,
            participants: f.strings("participants")?,
            position: f.int("position")?,
        },
        "LockGranted" => {
            Event::LockGranted { correlation: f.string("correlation")?, participants: f.strings("participants")? }
        }
        "LockRelease" => Event::LockRelease { owner: f.string("owner")?, correlation: f.string("correlation")? },
        "WithDelay" => Event::WithDelay { fire_at: f.long("fire_at")?, inner: inner_event(&mut f)? },
        "ReplyTo" => Event::ReplyTo {
            address: f.string("address")?,
            correlation: f.string("correlation")?,
            inner: inner_event(&mut f)?,
        },
        "WithLock" => Event::WithLock {
            owner: f.string("owner")?,
            participants: f.strings("participants")?,
            inner: inner_event(&mut f)?,
        },
        "WithPrincipal" => {
            Event::WithPrincipal { user: f.string("user")?, roles: f.strings("roles")?, inner: inner_event(&mut f)? }
        }
        other => match access_from(other, &mut f)? {
            Some(change) => Event::Access(change),
            None => return Err(shape(format!("event type {other} is not known to this version"))),
        },
    };
    Ok(event)
}

/// A sharing event of the branch `name` (`None`: no such branch).
fn access_from(name: &str, f: &mut Fields) -> Result<Option<AccessChange>> {
    Ok(Some(match name {
        "ShareWithUser" => {
            AccessChange::ShareWithUser { user: f.string("user")?, operations: f.strings("operations")? }
        }
        "ShareWithRole" => {
            AccessChange::ShareWithRole { role: f.string("role")?, operations: f.strings("operations")? }
        }
        "RevokeUser" => AccessChange::RevokeUser { user: f.string("user")? },
        "RevokeRole" => AccessChange::RevokeRole { role: f.string("role")? },
        "TransferOwnership" => AccessChange::TransferOwnership { user: f.string("user")? },
        "AddOwner" => AccessChange::AddOwner { user: f.string("user")? },
        _ => return Ok(None),
    }))
}
