//! Durable's engine: the pure History and Context layers, the handler registry, the test harness
//! and the storage seam.
//!
//! Application code is ordinary async Rust: orchestrations (`async fn(ctx, input)`, replayed
//! deterministically), entities (typed state plus operations) and activities (`async fn(input)`
//! with side effects). [`Engine::step`] turns a stored [`InstanceRecord`] and new events into the
//! next record and a list of [`Effect`]s, with no I/O and no clock: that is what lets tests inject
//! events in any order, duplicate or drop them, and check the outcome deterministically.
//!
//! # Layout
//! - [`id`]: instance ids, their canonical string form, Kafka's murmur2 partitioner.
//! - [`history`] (pure): the stored record, duplicate detection, orchestration history.
//! - [`context`] (pure): what application code calls — [`OrchestrationContext`],
//!   [`when_all`]/[`when_any`], [`EntityType`]/[`EntityContext`], activities.
//! - [`engine`] (pure): one step of one instance; the orchestration executor and replay.
//! - [`critical_sections`]: the lock protocol (documentation).
//! - [`partition`] (pure): the commit protocol of one partition as a state machine — grouping,
//!   the record cache, partial reruns, resends, local rounds, output order — driven by the
//!   runtime's workers and by the simulator alike.
//! - [`requests`] (pure): the management API's writes, read from their path and body.
//! - [`trust`] (pure): what an event may do when no processor sealed it.
//! - [`error`]: errors with kinds (transient, corrupt, fatal).
//! - [`effect`]: what leaves after a commit.
//! - [`registry`]: handlers by name.
//! - [`harness`]: the test harness for application code.
//! - [`store`]: the storage trait (etag compare-and-set, timers) and [`MemoryStore`].
//! - [`examples`]: the bundled example applications.
//! - `runtime` (edge, feature `runtime`, on by default): the engine on Kafka and Redis — the
//!   workers that drive the partition core, timers, the management API, `/metrics`; `config` and
//!   `metrics` belong to it. The `processor` binary calls `runtime::main`. Without the feature
//!   the crate builds with none of the edge's dependencies.
#![warn(missing_docs)]

pub mod access;
#[cfg(feature = "runtime")]
pub mod config;
pub mod context;
pub mod critical_sections;
pub mod effect;
pub mod engine;
pub mod error;
pub mod examples;
pub mod harness;
pub mod history;
pub mod id;
pub mod index;
pub mod letter;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod partition;
pub mod quota;
pub mod registry;
pub mod requests;
pub mod retention;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod store;
#[cfg(feature = "auth")]
pub mod token;
pub mod trust;

pub use context::{
    when_all, when_any, when_any2, ActivityContext, ActivityOptions, Either, EntityContext, EntityType,
    OrchestrationContext, RetryPolicy,
};
pub use durable_schemas::{Envelope, Event, Failure, Payload};
pub use effect::{Effect, StateChange};
pub use engine::{DeadLetter, Delivery, DropReason, Engine, Limits, StepInput, StepOutput};
pub use harness::Harness;
pub use history::{InstanceRecord, OrchestrationStatus};
pub use id::{InstanceId, Kind};
pub use registry::Registry;
pub use store::{MemoryStore, Store};

/// The README's code blocks, compiled and run as doctests so the README stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
