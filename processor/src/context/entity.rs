//! Entities: typed state plus named operations, and the [`EntityContext`] an operation sees.
//!
//! An operation runs to completion against the current state and either succeeds — its state
//! change and the messages it sent take effect — or fails, and then changes nothing. Operations
//! are synchronous on purpose: they are atomic state transitions; for I/O use an activity.

use std::collections::HashMap;
use std::marker::PhantomData;

use durable_schemas::{Event, Failure, Payload};
use serde::{de::DeserializeOwned, Serialize};

use crate::id::{InstanceId, Kind};

/// What an entity operation sees besides its state.
pub struct EntityContext {
    id: InstanceId,
    now: i64,
    caller: Option<String>,
    principal: Option<(String, Vec<String>)>,
    /// Messages sent by the operation: (target, body, fire_at).
    pub(crate) outgoing: Vec<(String, Event, Option<i64>)>,
    /// Whether the operation deleted the entity.
    pub(crate) deleted: bool,
}

impl EntityContext {
    pub(crate) fn new(
        id: InstanceId,
        now: i64,
        caller: Option<String>,
        principal: Option<(String, Vec<String>)>,
    ) -> Self {
        Self { id, now, caller, principal, outgoing: Vec::new(), deleted: false }
    }

    /// This entity's id.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Logical time of the operation (ms since the Unix epoch).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The instance (or client) that sent the operation, if known.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// The user and roles the operation was sent on behalf of (`WithPrincipal`), if any.
    pub fn principal(&self) -> Option<(&str, &[String])> {
        self.principal.as_ref().map(|(u, r)| (u.as_str(), r.as_slice()))
    }

    /// Send operation `op` to another entity after this operation commits.
    pub fn signal_entity<I: Serialize>(&mut self, entity: &InstanceId, op: &str, input: I) -> Result<(), Failure> {
        let input = Payload::json(&input).map_err(|e| Failure::new("SerializationError", e.to_string()))?;
        self.outgoing.push((entity.canonical(), Event::EntityOperation { operation: op.to_owned(), input }, None));
        Ok(())
    }

    /// Send operation `op` to an entity at `fire_at` (ms since the Unix epoch).
    pub fn signal_entity_at<I: Serialize>(
        &mut self,
        entity: &InstanceId,
        op: &str,
        input: I,
        fire_at: i64,
    ) -> Result<(), Failure> {
        self.signal_entity(entity, op, input)?;
        if let Some(last) = self.outgoing.last_mut() {
            last.2 = Some(fire_at);
        }
        Ok(())
    }

    /// Start orchestration `name` with `key` after this operation commits.
    pub fn start_orchestration<I: Serialize>(&mut self, name: &str, key: &str, input: I) -> Result<(), Failure> {
        let input = Payload::json(&input).map_err(|e| Failure::new("SerializationError", e.to_string()))?;
        let target =
            InstanceId::new(Kind::Orchestration, name, key).map_err(|e| Failure::new("InvalidId", e.to_string()))?;
        self.outgoing.push((target.canonical(), Event::StartOrchestration { input }, None));
        Ok(())
    }

    /// Delete this entity's state when the operation returns (the next operation starts from
    /// the default state).
    pub fn delete(&mut self) {
        self.deleted = true;
    }

    /// The messages the operation sent: `(target, body, fire_at)`.
    pub(crate) fn take_outgoing(&mut self) -> Vec<(String, Event, Option<i64>)> {
        std::mem::take(&mut self.outgoing)
    }
}

type Operation<S> = Box<dyn Fn(&mut S, &mut EntityContext, &Payload) -> Result<Payload, Failure> + Send + Sync>;

/// An entity type: state `S` and its operations by name.
///
/// ```
/// use durable_processor::EntityType;
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Counter { value: i64 }
/// let counter = EntityType::<Counter>::new()
///     .operation("add", |s, _ctx, n: i64| { s.value += n; Ok(()) })
///     .operation("get", |s, _ctx, (): ()| Ok(s.value));
/// # let _ = counter;
/// ```
pub struct EntityType<S> {
    operations: HashMap<String, Operation<S>>,
    _state: PhantomData<fn() -> S>,
}

impl<S> Default for EntityType<S>
where
    S: Serialize + DeserializeOwned + Default + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<S> EntityType<S>
where
    S: Serialize + DeserializeOwned + Default + 'static,
{
    /// An entity type with no operations yet.
    pub fn new() -> Self {
        Self { operations: HashMap::new(), _state: PhantomData }
    }

    /// Add operation `name`: it gets the state, the context and its typed input, and returns a
    /// typed result (sent to the caller of a call) or a failure (which changes nothing).
    pub fn operation<I, O, F>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(&mut S, &mut EntityContext, I) -> Result<O, Failure> + Send + Sync + 'static,
    {
        let op: Operation<S> = Box::new(move |state, ctx, input| {
            let input: I = input
                .decode()
                .map_err(|e| Failure::new("DeserializationError", format!("input of {}: {e}", ctx.id())))?;
            let out = f(state, ctx, input)?;
            Payload::json(&out).map_err(|e| Failure::new("SerializationError", e.to_string()))
        });
        self.operations.insert(name.to_owned(), op);
        self
    }
}

/// The failure kind for an operation the entity type does not have.
pub const UNKNOWN_OPERATION: &str = "UnknownOperation";

/// Object-safe view of an [`EntityType`], as the engine runs it.
pub(crate) trait EntityHandler: Send + Sync {
    /// Run `op`: the new state (`None` = deleted) and the result, or a failure.
    fn run(
        &self,
        state: Option<&Payload>,
        ctx: &mut EntityContext,
        op: &str,
        input: &Payload,
    ) -> Result<(Option<Payload>, Payload), Failure>;
}

impl<S> EntityHandler for EntityType<S>
where
    S: Serialize + DeserializeOwned + Default + 'static,
{
    fn run(
        &self,
        state: Option<&Payload>,
        ctx: &mut EntityContext,
        op: &str,
        input: &Payload,
    ) -> Result<(Option<Payload>, Payload), Failure> {
        let operation = self
            .operations
            .get(op)
            .ok_or_else(|| Failure::new(UNKNOWN_OPERATION, format!("{} has no operation {op:?}", ctx.id())))?;
        let mut value: S = match state {
            Some(p) => p.decode().map_err(|e| Failure::new("CorruptState", format!("state of {}: {e}", ctx.id())))?,
            None => S::default(),
        };
        let result = operation(&mut value, ctx, input)?;
        if ctx.deleted {
            return Ok((None, result));
        }
        let state = Payload::json(&value).map_err(|e| Failure::new("SerializationError", e.to_string()))?;
        Ok((Some(state), result))
    }
}
