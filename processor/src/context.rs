//! The Context layer: what application code sees. Pure: no I/O, no clock.
//!
//! - [`OrchestrationContext`]: deterministic futures for activities, sub-orchestrations,
//!   timers, external events, entity calls and signals, `continue_as_new`, custom status and
//!   replay-safe time, ids, random numbers and logging.
//! - [`when_all`], [`when_any`], [`when_any2`]: combinators decided by arrival order.
//! - [`EntityType`] and [`EntityContext`]: typed entity state and operations.
//! - [`ActivityContext`] and [`ActivityRequest`]: how an activity is invoked and answered.

pub mod activity;
pub mod combinators;
pub mod entity;
pub mod orchestration;
pub mod retry;

pub use activity::{ActivityContext, ActivityRequest};
pub use combinators::{when_all, when_any, when_any2, Either};
pub use entity::{EntityContext, EntityType, UNKNOWN_OPERATION};
pub use orchestration::{LockGuard, OrchestrationContext, LOCK_VIOLATION, NONDETERMINISM};
pub use retry::{ActivityOptions, RetryOn, RetryPolicy};
