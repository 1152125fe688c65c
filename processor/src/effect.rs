//! What leaves an instance after a commit.
//!
//! A step of the engine never performs I/O; it returns [`Effect`]s. The driver (the runtime, the
//! simulator or the test harness) commits the new state first and only then acts on them:
//! [`Effect::Emit`], [`Effect::StateChanged`] and [`Effect::DeadLetter`] are produced after the
//! commit succeeded,
//! [`Effect::Delay`] is parked in the partition's timer set *in the same atomic commit* as the
//! state. A failed commit throws all effects away.

use durable_schemas::{Envelope, Failure, Payload};
use serde::{Deserialize, Serialize};

/// One thing a step asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Produce this event (its `origin` is already stamped) after the commit.
    Emit(Envelope),
    /// Park this event until `fire_at` (ms since epoch); it is committed with the state and
    /// released by the partition's timer set, re-stamped with the timer stream's origin.
    Delay {
        /// When to release it.
        fire_at: i64,
        /// The event (no origin yet).
        envelope: Envelope,
    },
    /// Publish the new committed state for projections.
    StateChanged(StateChange),
    /// Produce this event to the dead-letter topic with the reason, after the commit. Only in
    /// a record's [`crate::history::Outbox`] (a step returns them as
    /// [`crate::engine::StepOutput::dead_letters`]): kept there like the emits, so a crash
    /// before they left sends them again and no dead letter is lost.
    DeadLetter {
        /// Its key: the target of the event that could not be applied.
        key: String,
        /// The encoded event, or its first [`durable_schemas::contract::dead_letter::MAX_COPY`]
        /// bytes (what the dead-letter topic carries; a refused large event costs the outbox
        /// no more than that).
        value: Vec<u8>,
        /// The encoded event's size when `value` is a truncated copy.
        truncated_from: Option<u64>,
        /// Why.
        reason: String,
    },
}

/// A record of an instance's committed state, for the `<prefix>.state` feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// Canonical instance id.
    pub instance: String,
    /// Strictly increasing per instance: an older version never overwrites a newer one.
    pub version: u64,
    /// Status word: `running`, `suspended`, `completed`, `failed`, `terminated` for
    /// orchestrations; `active` or `deleted` for entities; `purged` when the instance is gone
    /// (published as a tombstone: the key with a null value).
    pub status: String,
    /// Entity state, or orchestration output (JSON payload), if any.
    pub state: Option<Payload>,
    /// Orchestration custom status, if set.
    pub custom_status: Option<Payload>,
    /// Failure of a failed or terminated orchestration.
    pub failure: Option<Failure>,
    /// Logical time of the commit (ms since epoch).
    pub updated_at: i64,
}

impl StateChange {
    /// Whether this says the instance is gone.
    pub fn is_purge(&self) -> bool {
        self.status == durable_schemas::Status::Purged.as_str()
    }
}
