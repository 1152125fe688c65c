//! The handlers an application registers: orchestrations, entities and activities, by name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use durable_schemas::{Failure, Payload};
use serde::{de::DeserializeOwned, Serialize};

use crate::context::entity::EntityHandler;
use crate::context::{ActivityContext, EntityType, OrchestrationContext};
use crate::id::validate_name;

/// The future of one orchestration execution, polled by the engine's executor. It is `Send`: a
/// live orchestration's future stays in memory between steps, which may run on different threads.
pub type OrchestrationFuture = Pin<Box<dyn Future<Output = Result<Payload, Failure>> + Send>>;
/// The future of one activity run (run by the runtime, may do I/O).
pub type ActivityFuture = Pin<Box<dyn Future<Output = Result<Payload, Failure>> + Send>>;

type OrchestrationFn = Arc<dyn Fn(OrchestrationContext, Payload) -> OrchestrationFuture + Send + Sync>;
type ActivityFn = Arc<dyn Fn(ActivityContext, Payload) -> ActivityFuture + Send + Sync>;

/// Handlers by name. Build it once with the builder methods and share it (`Arc`).
///
/// Names must be 1–128 characters from `A-Z a-z 0-9 _ . -`, not starting with `durable.`
/// (Durable's own, such as the ledgers of [`crate::quota`]); registering an invalid name panics
/// (it is a programming error, found at start-up).
#[derive(Clone, Default)]
pub struct Registry {
    orchestrations: HashMap<String, OrchestrationFn>,
    entities: HashMap<String, Arc<dyn EntityHandler>>,
    activities: HashMap<String, ActivityFn>,
}

fn decode_input<I: DeserializeOwned>(what: &str, input: &Payload) -> Result<I, Failure> {
    input
        .decode()
        .map_err(|e| Failure::new("DeserializationError", format!("input of {what}: {e} (payload {input:?})")))
}

fn encode_output<O: Serialize>(output: &O) -> Result<Payload, Failure> {
    Payload::json(output).map_err(|e| Failure::new("SerializationError", e.to_string()))
}

fn checked(name: &str) -> String {
    if let Err(e) = validate_name(name) {
        panic!("cannot register handler: {e}");
    }
    if name.starts_with("durable.") {
        panic!("cannot register handler {name:?}: names starting with \"durable.\" are Durable's own");
    }
    name.to_owned()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register orchestration `name`: an `async fn(ctx, input) -> Result<output, Failure>`.
    pub fn orchestration<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let f = Arc::new(f);
        let label = format!("orchestration {name}");
        let handler: OrchestrationFn = Arc::new(move |ctx, input| {
            let f = f.clone();
            let label = label.clone();
            Box::pin(async move {
                let input = decode_input::<I>(&label, &input)?;
                encode_output(&f(ctx, input).await?)
            })
        });
        self.orchestrations.insert(checked(name), handler);
        self
    }

    /// Register activity `name`: an `async fn(input) -> Result<output, Failure>`.
    pub fn activity<I, O, F, Fut>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.activity_with_context(name, move |_ctx: ActivityContext, input: I| f(input))
    }

    /// Register activity `name` that also gets its [`ActivityContext`] (id, attempt, caller).
    pub fn activity_with_context<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: ActivityFn = Arc::new(move |ctx, input| {
            let decoded = decode_input::<I>(&format!("activity {}", ctx.id), &input);
            match decoded {
                Ok(input) => {
                    let fut = f(ctx, input);
                    Box::pin(async move { encode_output(&fut.await?) })
                }
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        });
        self.activities.insert(checked(name), handler);
        self
    }

    /// Register entity type `name`.
    pub fn entity<S>(mut self, name: &str, entity: EntityType<S>) -> Self
    where
        S: Serialize + DeserializeOwned + Default + 'static,
    {
        self.entities.insert(checked(name), Arc::new(entity));
        self
    }

    pub(crate) fn orchestration_handler(&self, name: &str) -> Option<&OrchestrationFn> {
        self.orchestrations.get(name)
    }

    pub(crate) fn entity_handler(&self, name: &str) -> Option<&Arc<dyn EntityHandler>> {
        self.entities.get(name)
    }

    /// Start running activity `name` (the runtime awaits the future), or `None` if no activity
    /// of that name is registered.
    pub fn run_activity(&self, name: &str, ctx: ActivityContext, input: Payload) -> Option<ActivityFuture> {
        self.activities.get(name).map(|f| f(ctx, input))
    }

    /// Whether an activity named `name` is registered.
    pub fn has_activity(&self, name: &str) -> bool {
        self.activities.contains_key(name)
    }

    /// Registered names: (orchestrations, entities, activities), sorted.
    pub fn names(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        (
            sorted(self.orchestrations.keys().cloned().collect()),
            sorted(self.entities.keys().cloned().collect()),
            sorted(self.activities.keys().cloned().collect()),
        )
    }
}
