//! The History layer: what is stored per instance, and duplicate detection. Pure: no I/O, no clock.
//!
//! An [`InstanceRecord`] is the whole stored state of one instance (one blob in the store): its
//! [`Dedup`] marks, the outbox of its last step, and its body — an orchestration's
//! [`OrchestrationHistory`] or an entity's [`EntityState`].
//!
//! # Duplicate detection
//!
//! Every delivery passes [`Dedup::admit`] before anything else looks at it. Four mechanisms, each
//! exact where Durable controls the sender, and each with state that stays bounded no matter how
//! many events an instance sees:
//!
//! 1. **Redelivered Kafka records** — an instance lives in exactly one partition, so the highest
//!    offset it applied (`applied_offset`, one number) identifies every redelivery exactly.
//! 2. **Replies** (activity, operation and sub-orchestration results, timers, lock grants) carry a
//!    correlation `generation.slot`; a slot completes once ([`OrchestrationHistory`]). Exact,
//!    bounded by the history itself; replies of an earlier generation are dropped.
//! 3. **Requests sent by Durable** (signals, calls, starts, lock messages) carry an
//!    [`Origin`](durable_schemas::Origin): the stream that emitted them (`p<N>`: the owner of
//!    partition N after a commit; `t<N>`: partition N's timer set) and a sequence number strictly
//!    increasing in the order that stream produces to any one partition. The receiver keeps one
//!    high-water mark per stream: at most two per partition of the events topic, whatever the
//!    number of senders. Exact, no time window, *provided* each stream produces in sequence order
//!    (the runtime produces a partition's outboxes in input-offset order and keeps an outbox
//!    until it is acknowledged; see `store`).
//! 4. **Events from outside producers** (no origin) are deduplicated by event id within a window
//!    of the last [`EXTERNAL_ID_WINDOW`] distinct ids per instance. A retry of an outside event
//!    after more than that many newer outside events reached the same instance is applied again.

use std::collections::{BTreeMap, VecDeque};

use durable_schemas::{Envelope, Event, Failure, Payload, Status};
use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::effect::{Effect, StateChange};
use crate::quota::Charge;

/// How many outside-producer event ids each instance remembers.
pub const EXTERNAL_ID_WINDOW: usize = 1000;

/// Current blob format version (first byte of a stored blob): 4 is the record, its [`Access`],
/// its [`Charge`], then its [`Guard`]; 3 (still read) has no guard, from before replay
/// protection; 2 (still read) has no charge either, from before creation limits; 1 (still read)
/// is the record alone, from before authorization.
const BLOB_FORMAT: u8 = 4;

/// The first byte of a delta frame ([`InstanceRecord::to_delta`]): what one step of a running
/// orchestration changed, appended to the stored blob instead of rewriting it whole. A stored
/// blob is one record frame followed by any number of delta frames, each saying its own format:
/// 0xD4 for a frame of format 4, 0xD3 (still read) for one of format 3 — a record a processor
/// wrote before format 4 gets format-4 deltas after an upgrade.
const DELTA_FORMAT: u8 = 0xD4;

/// The first byte of a delta frame of format 3.
const DELTA_FORMAT_3: u8 = 0xD3;

/// The whole stored state of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Canonical instance id.
    pub id: String,
    /// Incremented by every step that changed something; the version in state records.
    pub version: u64,
    /// Logical time of the first step.
    pub created_at: i64,
    /// Logical time of the last step.
    pub updated_at: i64,
    /// Duplicate detection marks.
    pub dedup: Dedup,
    /// What the last step emits after its commit; kept until it is known to be produced, so a
    /// crash after the commit re-sends it.
    pub outbox: Outbox,
    /// The kind-specific state.
    pub body: Body,
    /// Who may do what to it (stored after the record in the blob, see [`BLOB_FORMAT`]).
    #[serde(skip)]
    pub access: Access,
    /// Its standing with the creation limits (stored after its access, see [`BLOB_FORMAT`]).
    #[serde(skip)]
    pub quota: Charge,
    /// The events parked for it until a delay passes, as `(due, stored bytes)`, oldest first:
    /// those that came with a `WithDelay` from outside (not the timers its own code sets),
    /// counted against [`Limits::max_delayed`](crate::engine::Limits::max_delayed) and its
    /// buffered bytes until they are due. Stored in its [`Guard`], after its charge.
    #[serde(skip)]
    pub parked: Vec<(i64, u32)>,
}

/// What a record of format 4 stores after its charge: the seal times of the ids in its dedup
/// window and the newest one it forgot ([`Dedup::sealed_at`], [`Dedup::forgotten`]), and its
/// parked delays ([`InstanceRecord::parked`]). Written from the record's fields by reference
/// (`Guard<&_, &_>`), read into owned ones: one layout for both.
#[derive(Serialize, Deserialize)]
struct Guard<S = VecDeque<Option<i64>>, P = Vec<(i64, u32)>> {
    sealed_at: S,
    forgotten: Option<i64>,
    parked: P,
}

/// The effects of the last committed step that must leave after the commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// Highest input offset of the step that produced it.
    pub offset: Option<i64>,
    /// [`Effect::Emit`] and [`Effect::StateChanged`] effects, in order.
    pub effects: Vec<Effect>,
}

/// The kind-specific part of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Nothing applied yet (only dedup marks, e.g. after an event that was dead-lettered).
    Empty,
    /// An orchestration.
    Orchestration(Box<OrchestrationHistory>),
    /// An entity.
    Entity(EntityState),
}

/// Why a stored blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob's format byte is not one this version reads.
    #[error("unknown blob format {0}")]
    UnknownFormat(u8),
    /// The blob is empty or does not decode.
    #[error("corrupt blob: {0}")]
    Corrupt(String),
}

impl InstanceRecord {
    /// A record for an instance that has seen nothing yet.
    pub fn new(id: impl Into<String>, now: i64) -> Self {
        Self {
            id: id.into(),
            version: 0,
            created_at: now,
            updated_at: now,
            dedup: Dedup::default(),
            outbox: Outbox::default(),
            body: Body::Empty,
            access: Access::default(),
            quota: Charge::default(),
            parked: Vec::new(),
        }
    }

    /// Where it stands (`None` while nothing was applied to it).
    pub fn status(&self) -> Option<Status> {
        match &self.body {
            Body::Empty => None,
            Body::Orchestration(h) => Some(h.status.status()),
            Body::Entity(e) => Some(if e.state.is_some() { Status::Active } else { Status::Deleted }),
        }
    }

    /// Whether it is live: a running orchestration, or an entity with state, a lock or queued
    /// operations (what counts against a creation limit, and what retention keeps).
    pub fn is_live(&self) -> bool {
        match &self.body {
            Body::Empty => false,
            Body::Orchestration(h) => !h.status.is_finished(),
            Body::Entity(e) => e.state.is_some() || e.lock.is_some() || !e.queue.is_empty(),
        }
    }

    /// Whether it needs no new place against a creation limit: it is already charged, or live.
    pub fn holds_place(&self) -> bool {
        self.quota.charged.is_some() || self.is_live()
    }

    /// Its state-change record, for projections (`None` while nothing was applied to it).
    pub fn state_change(&self) -> Option<StateChange> {
        let status = self.status()?;
        let (state, custom_status, failure) = match &self.body {
            Body::Empty => return None,
            Body::Orchestration(h) => {
                let (state, failure) = match &h.status {
                    OrchestrationStatus::Completed { output } => (Some(output.clone()), None),
                    OrchestrationStatus::Failed { failure } => (None, Some(failure.clone())),
                    OrchestrationStatus::Terminated { reason } => {
                        (None, Some(Failure::new("Terminated", reason.clone())))
                    }
                    _ => (None, None),
                };
                let custom = (status != Status::Pending).then(|| h.custom_status.clone()).flatten();
                (state, custom, failure)
            }
            Body::Entity(e) => (e.state.clone(), None, None),
        };
        Some(StateChange {
            instance: self.id.clone(),
            version: self.version,
            status: status.as_str().to_owned(),
            state,
            custom_status,
            failure,
            updated_at: self.updated_at,
        })
    }

    /// The state change that says it was purged (published as a tombstone).
    pub fn purged_change(&self) -> StateChange {
        StateChange {
            instance: self.id.clone(),
            version: self.version,
            status: Status::Purged.as_str().to_owned(),
            state: None,
            custom_status: None,
            failure: None,
            updated_at: self.updated_at,
        }
    }

    /// Serialize for the store.
    pub fn to_blob(&self) -> Vec<u8> {
        let out = postcard::to_extend(self, vec![BLOB_FORMAT]).expect("records always serialize");
        let out = postcard::to_extend(&self.access, out).expect("access always serializes");
        let out = postcard::to_extend(&self.quota, out).expect("charges always serialize");
        let guard = Guard { sealed_at: &self.dedup.sealed_at, forgotten: self.dedup.forgotten, parked: &self.parked };
        postcard::to_extend(&guard, out).expect("guards always serialize")
    }

    /// A delta frame to append to this record's stored blob, when this record (an orchestration)
    /// differs from the stored one only by the commands from `commands_from` and the log entries
    /// from `log_from` appended, and by its small fields (status, outbox, marks, inbox …): the
    /// record as [`InstanceRecord::to_blob`] writes it, but with only those commands and entries.
    /// Reading the blob puts them after the ones before ([`InstanceRecord::from_blob`]). `None`
    /// if this is not an orchestration or has fewer commands or entries than that.
    pub fn to_delta(&mut self, commands_from: usize, log_from: usize) -> Option<Vec<u8>> {
        let Body::Orchestration(h) = &mut self.body else { return None };
        if h.commands.len() < commands_from || h.log.len() < log_from {
            return None;
        }
        let commands = std::mem::take(&mut h.commands);
        let log = std::mem::take(&mut h.log);
        h.commands = commands[commands_from..].to_vec();
        h.log = log[log_from..].to_vec();
        let mut delta = self.to_blob();
        delta[0] = DELTA_FORMAT;
        let Body::Orchestration(h) = &mut self.body else { unreachable!("matched above") };
        h.commands = commands;
        h.log = log;
        Some(delta)
    }

    /// Read a stored blob: a record frame, then any delta frames ([`InstanceRecord::to_delta`]).
    pub fn from_blob(blob: &[u8]) -> Result<Self, BlobError> {
        Self::from_blob_sized(blob).map(|(record, _)| record)
    }

    /// [`InstanceRecord::from_blob`], and how many of the blob's bytes the record written whole
    /// takes (the rest are deltas appended since).
    pub fn from_blob_sized(blob: &[u8]) -> Result<(Self, usize), BlobError> {
        let corrupt = |e: postcard::Error| BlobError::Corrupt(e.to_string());
        let (mut record, mut rest) = match blob.first() {
            Some(1) => postcard::take_from_bytes::<Self>(&blob[1..]).map_err(corrupt)?,
            Some(2) => {
                let (mut record, rest): (Self, _) = postcard::take_from_bytes(&blob[1..]).map_err(corrupt)?;
                let (access, rest) = postcard::take_from_bytes(rest).map_err(corrupt)?;
                record.access = access;
                (record, rest)
            }
            Some(3) => Self::frame(&blob[1..], false)?,
            Some(&BLOB_FORMAT) => Self::frame(&blob[1..], true)?,
            Some(&other) => return Err(BlobError::UnknownFormat(other)),
            None => return Err(BlobError::Corrupt("empty blob".into())),
        };
        let whole = blob.len() - rest.len();
        // Each delta frame says its own format: a record written by a processor before format 4
        // gets format-4 deltas appended once processors are upgraded.
        while let Some((&format, frame)) = rest.split_first() {
            if format != DELTA_FORMAT && format != DELTA_FORMAT_3 {
                return Err(BlobError::Corrupt(format!("a frame of format {format} after the record")));
            }
            let (mut delta, after) = Self::frame(frame, format == DELTA_FORMAT)?;
            match (&mut record.body, &mut delta.body) {
                (Body::Orchestration(before), Body::Orchestration(now)) => {
                    before.commands.append(&mut now.commands);
                    before.log.append(&mut now.log);
                    std::mem::swap(&mut before.commands, &mut now.commands);
                    std::mem::swap(&mut before.log, &mut now.log);
                }
                _ => return Err(BlobError::Corrupt("a delta frame for a record that is no orchestration".into())),
            }
            record = delta;
            rest = after;
        }
        if record.dedup.sealed_at.len() != record.dedup.recent_ids.len() {
            // Format 3 kept no seal times: ids it remembered count as sealed at no known time.
            record.dedup.sealed_at = record.dedup.recent_ids.iter().map(|_| None).collect();
        }
        Ok((record, whole))
    }

    /// One record frame of format 4 (`guarded`) or 3 (after its format byte), and what follows
    /// it.
    fn frame(bytes: &[u8], guarded: bool) -> Result<(Self, &[u8]), BlobError> {
        let corrupt = |e: postcard::Error| BlobError::Corrupt(e.to_string());
        let (mut record, rest): (Self, _) = postcard::take_from_bytes(bytes).map_err(corrupt)?;
        let (access, rest) = postcard::take_from_bytes(rest).map_err(corrupt)?;
        record.access = access;
        let (quota, mut rest) = postcard::take_from_bytes(rest).map_err(corrupt)?;
        record.quota = quota;
        if guarded {
            let (guard, after): (Guard, _) = postcard::take_from_bytes(rest).map_err(corrupt)?;
            record.dedup.sealed_at = guard.sealed_at;
            record.dedup.forgotten = guard.forgotten;
            record.parked = guard.parked;
            rest = after;
        }
        Ok((record, rest))
    }

    /// The orchestration history, if this is an orchestration.
    pub fn orchestration(&self) -> Option<&OrchestrationHistory> {
        match &self.body {
            Body::Orchestration(h) => Some(h),
            _ => None,
        }
    }

    /// The entity state, if this is an entity.
    pub fn entity(&self) -> Option<&EntityState> {
        match &self.body {
            Body::Entity(e) => Some(e),
            _ => None,
        }
    }
}

/// Duplicate detection marks (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dedup {
    /// Highest Kafka offset applied (all of an instance's events are in one partition).
    pub applied_offset: Option<i64>,
    /// Highest origin sequence number applied, per origin stream.
    pub watermarks: BTreeMap<String, i64>,
    /// 64-bit hashes of the last [`EXTERNAL_ID_WINDOW`] outside-producer event ids, oldest first.
    pub recent_ids: VecDeque<u64>,
    /// When a processor sealed each of `recent_ids` (its envelope's timestamp, inside the seal),
    /// in the same order; `None` for an unsealed one (its timestamp proves nothing). Stored
    /// in the record's [`Guard`].
    #[serde(skip)]
    pub sealed_at: VecDeque<Option<i64>>,
    /// The latest seal time of an id that left the window (`None`: none did): a sealed event
    /// sealed no later than this can no longer be told from a replay ([`Dedup::stale`]).
    #[serde(skip)]
    pub forgotten: Option<i64>,
}

/// The verdict of [`Dedup::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Apply it.
    New,
    /// This Kafka record was applied before (offset at or below the applied offset).
    Redelivered,
    /// The same logical event was applied before (origin watermark or external id window).
    Duplicate,
}

/// Whether an event is a reply to a slot (deduplicated by correlation, not by origin).
pub fn is_reply(event: &Event) -> bool {
    event.core().class() == durable_schemas::Class::Reply
}

/// FNV-1a, 64 bit: a stable hash (unlike `DefaultHasher`, fixed across Rust versions).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Dedup {
    /// Decide whether a delivery is new. Offsets and origin marks (which only records a
    /// processor sealed carry) are recorded at once; an outside event's id is only looked up:
    /// [`Dedup::remember`] records it once its sender was found allowed to send it, so that a
    /// refused producer can neither burn an id someone else will use nor push remembered ids out
    /// of the window.
    pub fn admit(&mut self, envelope: &Envelope, offset: Option<i64>) -> Admission {
        if let (Some(offset), Some(applied)) = (offset, self.applied_offset) {
            if offset <= applied {
                return Admission::Redelivered;
            }
        }
        let verdict = if is_reply(&envelope.body) {
            Admission::New // the slot decides
        } else if let Some(origin) = &envelope.origin {
            match self.watermarks.get(&origin.stream) {
                Some(&seen) if origin.seq <= seen => Admission::Duplicate,
                _ => {
                    self.watermarks.insert(origin.stream.clone(), origin.seq);
                    Admission::New
                }
            }
        } else if self.recent_ids.contains(&fnv64(envelope.id.as_bytes())) {
            Admission::Duplicate
        } else {
            Admission::New
        };
        if let Some(offset) = offset {
            self.applied_offset = Some(self.applied_offset.map_or(offset, |a| a.max(offset)));
        }
        verdict
    }

    /// Remember the id of an outside event ([`is_outside`]) that [`Dedup::admit`] just found new,
    /// as its [`fnv64`] hash, with when it was sealed if it was (the oldest id leaves a full
    /// window, and its seal time moves [`Dedup::forgotten`]). Only for an id just admitted: it is
    /// not in the window, so it is not looked for again.
    /// `window` is how many it keeps ([`EXTERNAL_ID_WINDOW`] but in simulations).
    pub fn remember(&mut self, h: u64, sealed_at: Option<i64>, window: usize) {
        while self.recent_ids.len() >= window.max(1) {
            self.recent_ids.pop_front();
            let left = self.sealed_at.pop_front().flatten();
            self.forgotten = self.forgotten.max(left);
        }
        self.recent_ids.push_back(h);
        self.sealed_at.push_back(sealed_at);
    }

    /// Why a sealed outside event, sealed at `at`, cannot be applied at `now` though its id is
    /// not in the window, if it cannot: a captured record sent again once its id has left the
    /// window would otherwise apply twice (and act for whoever the API sealed into it). It is
    /// refused when it is older than `max_age` (or as far in the future: the processors' clocks
    /// disagree), or sealed no later than an id the window forgot.
    pub fn stale(&self, at: i64, now: i64, max_age: i64) -> Option<String> {
        const REDRIVE: &str = "so it cannot be told from a replay (an operator's redrive sends it again, sealed anew)";
        if at < now.saturating_sub(max_age) || at > now.saturating_add(max_age) {
            return Some(format!(
                "it was sealed at {at} ms, further from this processor's clock than DURABLE_MAX_SEALED_AGE \
                 ({max_age} ms), {REDRIVE}"
            ));
        }
        if let Some(forgotten) = self.forgotten.filter(|&f| at <= f) {
            return Some(format!(
                "it was sealed at {at} ms, no later than an outside event this instance no longer remembers \
                 (sealed at {forgotten} ms), {REDRIVE}"
            ));
        }
        None
    }
}

/// Whether an event is deduplicated by its id in the window of outside ids: neither a reply
/// (its slot decides) nor stamped with an origin.
pub fn is_outside(envelope: &Envelope) -> bool {
    envelope.origin.is_none() && !is_reply(&envelope.body)
}

/// Where an orchestration sends its result when it finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyAddress {
    /// Canonical id of the waiting instance.
    pub address: String,
    /// Correlation to quote.
    pub correlation: String,
}

/// Lifecycle of an orchestration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchestrationStatus {
    /// Started and not finished.
    Running,
    /// Returned `Ok`.
    Completed {
        /// The output.
        output: Payload,
    },
    /// Returned `Err`, panicked, or diverged from its history (kind `Nondeterminism`).
    Failed {
        /// Why.
        failure: Failure,
    },
    /// Stopped by a `Terminate` event.
    Terminated {
        /// The reason given.
        reason: String,
    },
    /// Paused by a `Suspend` event: not finished, but nothing reaches the code until a
    /// `Resume`. (Last, so blobs written before it existed read unchanged.)
    Suspended {
        /// The reason given.
        reason: String,
        /// Every event that arrived since, in arrival order (admitted and authorized already):
        /// applied on `Resume`. Bounded by [`Limits::max_inbox`](crate::engine::Limits::max_inbox).
        held: Vec<Envelope>,
    },
    /// Not started yet, but events were raised on it: they wait in `inbox` and the start takes
    /// them over (signal-with-start). Only a `StartOrchestration`, more raised events, a
    /// `Purge` and a retention timer apply; the rest is dead-lettered, as for an orchestration
    /// that does not exist. (Last, so blobs written before it existed read unchanged.)
    Pending,
}

impl OrchestrationStatus {
    /// Where it stands, in the shared words.
    pub fn status(&self) -> Status {
        match self {
            OrchestrationStatus::Running => Status::Running,
            OrchestrationStatus::Completed { .. } => Status::Completed,
            OrchestrationStatus::Failed { .. } => Status::Failed,
            OrchestrationStatus::Terminated { .. } => Status::Terminated,
            OrchestrationStatus::Suspended { .. } => Status::Suspended,
            OrchestrationStatus::Pending => Status::Pending,
        }
    }

    /// The status word used in state records and the CLI.
    pub fn word(&self) -> &'static str {
        self.status().as_str()
    }

    /// Whether the orchestration has finished (completed, failed or terminated).
    pub fn is_finished(&self) -> bool {
        !matches!(
            self,
            OrchestrationStatus::Running | OrchestrationStatus::Suspended { .. } | OrchestrationStatus::Pending
        )
    }

    /// Whether the orchestration has not started yet (events wait for its start).
    pub fn is_pending(&self) -> bool {
        matches!(self, OrchestrationStatus::Pending)
    }
}

/// What a command slot asked for. Compared on replay: a different kind or name at the same slot
/// is nondeterminism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandKind {
    /// `call_activity`.
    CallActivity,
    /// `call_sub_orchestration`.
    CallSubOrchestration,
    /// `create_timer`.
    CreateTimer,
    /// `wait_for_event`.
    WaitForEvent,
    /// `call_entity`.
    CallEntity,
    /// `signal_entity` (no completion).
    SignalEntity,
    /// `start_orchestration` (fire and forget; no completion).
    StartOrchestration,
    /// `lock` (completion = the whole set is held).
    Lock,
}

impl CommandKind {
    /// Whether an answer comes back to the slot: not for a signal or a started orchestration,
    /// which are sent and done.
    pub fn is_answered(&self) -> bool {
        !matches!(self, Self::SignalEntity | Self::StartOrchestration)
    }
}

/// One command an orchestration issued, by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// What it asked for.
    pub kind: CommandKind,
    /// Activity or orchestration name, target id, event name or fire time: compared on replay.
    pub name: String,
}

/// The result delivered to a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completion {
    /// A value (activity result, event payload, operation result, sub-orchestration output).
    Value(Payload),
    /// A typed failure.
    Failure(Failure),
    /// A timer fired / a lock was granted.
    Done,
}

/// One delivery to the code, in the order the code saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The slot completed.
    pub slot: u32,
    /// With what.
    pub completion: Completion,
    /// Logical time of the delivery: what `now()` returns after it.
    pub at: i64,
}

/// The (generation, slot) of a reply's correlation `<generation>.<slot>`, if it is one.
pub fn parse_correlation(correlation: &str) -> Option<(u32, u32)> {
    let (generation, slot) = correlation.split_once('.')?;
    Some((generation.parse().ok()?, slot.parse().ok()?))
}

/// Everything an orchestration needs to be replayed, plus what waits for it.
///
/// Replay runs the code from the start, polls it, then delivers `log` entries one at a time in
/// order, polling after each: the code sees completions in exactly the order it first saw them,
/// so `when_any` picks the same winner. `commands[slot]` is checked against what the code asks
/// for at each slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestrationHistory {
    /// Lifecycle.
    pub status: OrchestrationStatus,
    /// Incremented by `continue_as_new` (and by a restart after finishing); part of every
    /// correlation, so replies to an earlier generation are recognised and dropped.
    pub generation: u32,
    /// Input of the current generation.
    pub input: Payload,
    /// Where to send the result.
    pub reply_to: Option<ReplyAddress>,
    /// Logical time the current generation started: `now()` before the first delivery.
    pub started_at: i64,
    /// Commands issued so far, by slot.
    pub commands: Vec<Command>,
    /// Deliveries so far, in delivery order.
    pub log: Vec<LogEntry>,
    /// Replies that arrived before the code issued their slot (buffered), in arrival order.
    pub early: Vec<(u32, Completion)>,
    /// External events no wait has taken yet, in arrival order (buffered; kept across
    /// `continue_as_new`).
    pub inbox: VecDeque<(String, Payload)>,
    /// Set by `set_custom_status`.
    pub custom_status: Option<Payload>,
    /// The lock set held, if the orchestration is inside a critical section.
    pub locks: Option<HeldLocks>,
}

/// A critical section's lock set, as seen by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLocks {
    /// Correlation of the lock request (`generation.slot`).
    pub correlation: String,
    /// Sorted canonical ids of the entities in the set.
    pub participants: Vec<String>,
    /// Whether the grant arrived.
    pub granted: bool,
}

impl OrchestrationHistory {
    /// A fresh generation.
    pub fn start(input: Payload, reply_to: Option<ReplyAddress>, generation: u32, now: i64) -> Self {
        Self {
            status: OrchestrationStatus::Running,
            generation,
            input,
            reply_to,
            started_at: now,
            commands: Vec::new(),
            log: Vec::new(),
            early: Vec::new(),
            inbox: VecDeque::new(),
            custom_status: None,
            locks: None,
        }
    }

    /// About how many bytes this history takes when stored: what
    /// [`Limits::max_history_bytes`](crate::engine::Limits::max_history_bytes) bounds. Counts the
    /// payloads, names and a fixed overhead per entry, without serializing.
    pub fn approx_bytes(&self) -> usize {
        fn completion(c: &Completion) -> usize {
            match c {
                Completion::Value(p) => p.data.len() + p.content_type.len(),
                Completion::Failure(f) => f.kind.len() + f.message.len() + f.details.as_ref().map_or(0, String::len),
                Completion::Done => 0,
            }
        }
        const ENTRY: usize = 16;
        self.input.data.len()
            + self.commands.iter().map(|c| c.name.len() + ENTRY).sum::<usize>()
            + self.log.iter().map(|e| completion(&e.completion) + ENTRY).sum::<usize>()
            + self.early.iter().map(|(_, c)| completion(c) + ENTRY).sum::<usize>()
            + self.inbox.iter().map(|(n, p)| n.len() + p.data.len() + ENTRY).sum::<usize>()
            + self.custom_status.as_ref().map_or(0, |p| p.data.len())
            + match &self.status {
                OrchestrationStatus::Suspended { held, .. } => held.iter().map(|e| e.encode().len() + ENTRY).sum(),
                _ => 0,
            }
    }

    /// Whether `slot` already has a delivery or a buffered reply.
    pub fn has_completion(&self, slot: u32) -> bool {
        self.early.iter().any(|(s, _)| *s == slot) || self.log.iter().any(|e| e.slot == slot)
    }
}

/// An entity's stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// The user state (JSON); `None` when never set or deleted.
    pub state: Option<Payload>,
    /// The orchestration holding this entity in a critical section, if any.
    pub lock: Option<EntityLock>,
    /// Operations and lock requests that arrived while locked by someone else, in arrival order.
    pub queue: VecDeque<Envelope>,
}

/// The holder of an entity's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityLock {
    /// Canonical id of the owning orchestration.
    pub owner: String,
    /// Correlation of its lock request.
    pub correlation: String,
}

#[cfg(test)]
mod tests {
    use durable_schemas::Origin;

    use super::*;

    fn signal(id: &str, origin: Option<(&str, i64)>) -> Envelope {
        let mut e = Envelope::new(
            id,
            "entity:Counter:c",
            0,
            Event::EntityOperation { operation: "add".into(), input: Payload::null() },
        );
        e.origin = origin.map(|(s, seq)| Origin { stream: s.into(), seq });
        e
    }

    #[test]
    fn redelivered_offsets_are_recognised_exactly() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(&signal("a", None), Some(5)), Admission::New);
        assert_eq!(d.admit(&signal("b", None), Some(5)), Admission::Redelivered);
        assert_eq!(d.admit(&signal("c", None), Some(3)), Admission::Redelivered);
        assert_eq!(d.admit(&signal("d", None), Some(6)), Admission::New);
    }

    #[test]
    fn origin_watermarks_are_per_stream() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(&signal("x1", Some(("p1", 10))), None), Admission::New);
        assert_eq!(d.admit(&signal("x2", Some(("p2", 3))), None), Admission::New);
        assert_eq!(d.admit(&signal("x1-again", Some(("p1", 10))), None), Admission::Duplicate);
        assert_eq!(d.admit(&signal("x3", Some(("p1", 11))), None), Admission::New);
        assert_eq!(d.admit(&signal("x4", Some(("t1", 1))), None), Admission::New);
        assert_eq!(d.watermarks.len(), 3);
    }

    #[test]
    fn external_ids_are_remembered_within_the_window_and_state_stays_bounded() {
        let mut d = Dedup::default();
        let admit = |d: &mut Dedup, id: &str| {
            let e = signal(id, None);
            let verdict = d.admit(&e, None);
            if verdict == Admission::New {
                d.remember(fnv64(e.id.as_bytes()), None, EXTERNAL_ID_WINDOW);
            }
            verdict
        };
        assert_eq!(admit(&mut d, "first"), Admission::New);
        assert_eq!(admit(&mut d, "first"), Admission::Duplicate);
        for i in 0..10 * EXTERNAL_ID_WINDOW {
            admit(&mut d, &format!("e{i}"));
            assert!(d.recent_ids.len() <= EXTERNAL_ID_WINDOW);
        }
        let last = format!("e{}", 10 * EXTERNAL_ID_WINDOW - 1);
        assert_eq!(admit(&mut d, &last), Admission::Duplicate);
        // Outside the window: documented to be applied again.
        assert_eq!(admit(&mut d, "first"), Admission::New);
    }

    /// The seal times of remembered ids travel with them; the newest one to leave the window is
    /// the line below which a sealed event cannot be told from a replay.
    #[test]
    fn ids_leaving_the_window_move_the_forgotten_seal_time() {
        let mut d = Dedup::default();
        let day = 86_400_000;
        assert_eq!(d.stale(1_000, 1_000, day), None);
        for i in 0..EXTERNAL_ID_WINDOW as i64 {
            d.remember(i as u64, Some(1_000 + i), EXTERNAL_ID_WINDOW);
        }
        assert_eq!(d.forgotten, None, "nothing left yet");
        d.remember(u64::MAX, None, EXTERNAL_ID_WINDOW); // unsealed: its time proves nothing
        assert_eq!(d.forgotten, Some(1_000), "the first id left");
        assert!(d.stale(1_000, 2_000, day).unwrap().contains("cannot be told from a replay"));
        assert_eq!(d.stale(1_001, 2_000, day), None);
        for i in 0..EXTERNAL_ID_WINDOW as u64 {
            d.remember(10_000 + i, None, EXTERNAL_ID_WINDOW);
        }
        assert_eq!(d.forgotten, Some(1_000 + EXTERNAL_ID_WINDOW as i64 - 1), "an unsealed id leaving moves nothing");
        assert!(d.stale(5_000, 5_000 + day + 1, day).unwrap().contains("DURABLE_MAX_SEALED_AGE"));
        assert_eq!((d.recent_ids.len(), d.sealed_at.len()), (EXTERNAL_ID_WINDOW, EXTERNAL_ID_WINDOW));
    }

    /// The stored format, byte for byte: a change to what a record stores must come with a new
    /// format byte (and reading the old one), or records already in Redis read wrong.
    #[test]
    fn the_blob_format_is_golden() {
        let mut r = InstanceRecord::new("entity:C:c", 5);
        r.dedup.remember(0x0102, Some(9), EXTERNAL_ID_WINDOW);
        r.parked.push((11, 3));
        let hex: String = r.to_blob().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_V4);
        assert_eq!(InstanceRecord::from_blob(&r.to_blob()).unwrap(), r);
    }

    const GOLDEN_V4: &str = "040a656e746974793a433a63000a0a000001820200000000000000000001011200011603";

    /// Admitting an outside event only looks its id up: until it is remembered (its sender was
    /// allowed), a second copy is new too.
    #[test]
    fn an_outside_id_counts_only_once_remembered() {
        let mut d = Dedup::default();
        let e = signal("x", None);
        assert_eq!(d.admit(&e, None), Admission::New);
        assert_eq!(d.admit(&e, None), Admission::New);
        assert!(d.recent_ids.is_empty());
        d.remember(fnv64(e.id.as_bytes()), None, EXTERNAL_ID_WINDOW);
        assert_eq!(d.admit(&e, None), Admission::Duplicate);
    }

    #[test]
    fn replies_pass_through_to_slot_dedup() {
        let mut d = Dedup::default();
        let mut reply = Envelope::new(
            "r",
            "orch:O:o",
            0,
            Event::ActivityCompleted { correlation: "0.1".into(), result: Payload::null() },
        );
        reply.origin = Some(Origin { stream: "p0".into(), seq: 1 });
        assert_eq!(d.admit(&reply, None), Admission::New);
        assert_eq!(d.admit(&reply, None), Admission::New);
        assert!(d.watermarks.is_empty());
    }

    #[test]
    fn blobs_round_trip_and_reject_garbage() {
        let mut r = InstanceRecord::new("entity:Counter:c", 7);
        r.body = Body::Entity(EntityState { state: Some(Payload::json(&3).unwrap()), ..Default::default() });
        r.dedup.admit(&signal("a", Some(("p1", 1))), Some(9));
        let blob = r.to_blob();
        assert_eq!(InstanceRecord::from_blob(&blob).unwrap(), r);
        assert!(matches!(InstanceRecord::from_blob(&[]), Err(BlobError::Corrupt(_))));
        assert!(matches!(InstanceRecord::from_blob(&[9, 1, 2]), Err(BlobError::UnknownFormat(9))));
        assert!(matches!(InstanceRecord::from_blob(&blob[..blob.len() / 2]), Err(BlobError::Corrupt(_))));
    }

    #[test]
    fn access_is_stored_with_the_record_and_blobs_from_before_it_still_read() {
        let mut r = InstanceRecord::new("orch:Transfer:t", 7);
        r.access.owners.insert("alice".into());
        r.access.users.insert("bob".into(), [crate::access::Operation::Read].into());
        r.access.run_as = Some(crate::access::Principal::new("alice", ["staff"]));
        r.quota.charged = Some("alice".into());
        r.quota.waiting = Some(crate::quota::Reservation {
            correlation: "c".into(),
            user: "alice".into(),
            events: [signal("a", None)].into(),
        });
        r.dedup.remember(7, Some(1_700_000_000_000), EXTERNAL_ID_WINDOW);
        r.dedup.forgotten = Some(1_699_999_999_999);
        r.parked.push((1_700_000_060_000, 321));
        let blob = r.to_blob();
        assert_eq!(blob[0], 4);
        assert_eq!(InstanceRecord::from_blob(&blob).unwrap(), r);
        // Format 3: no guard (what processors before replay protection wrote). Its remembered
        // ids count as sealed at no known time.
        let v3 = postcard::to_extend(
            &r.quota,
            postcard::to_extend(&r.access, postcard::to_extend(&r, vec![3]).unwrap()).unwrap(),
        )
        .unwrap();
        let old = InstanceRecord::from_blob(&v3).unwrap();
        assert_eq!((old.dedup.recent_ids.len(), &old.dedup.sealed_at), (1, &VecDeque::from([None])));
        assert_eq!((old.dedup.forgotten, old.parked.len(), &old.quota), (None, 0, &r.quota));
        // Format 2: the record and its access (what processors before creation limits wrote).
        let v2 = postcard::to_extend(&r.access, postcard::to_extend(&r, vec![2]).unwrap()).unwrap();
        let old = InstanceRecord::from_blob(&v2).unwrap();
        assert_eq!((&old.access, &old.quota), (&r.access, &crate::quota::Charge::default()));
        // Format 1: the record alone (what processors before authorization wrote).
        let mut v1 = postcard::to_extend(&r, vec![1]).unwrap();
        let old = InstanceRecord::from_blob(&v1).unwrap();
        assert_eq!(old.access, Access::default(), "no owner, no share");
        assert_eq!(old.id, r.id);
        v1.truncate(v1.len() - 1);
        assert!(matches!(InstanceRecord::from_blob(&v1), Err(BlobError::Corrupt(_))));
        assert!(matches!(InstanceRecord::from_blob(&blob[..blob.len() - 1]), Err(BlobError::Corrupt(_))));
    }
    /// A running orchestration's step is stored as a delta appended to the blob; reading the blob
    /// puts the delta's commands and entries after the stored ones and takes its small fields.
    #[test]
    fn deltas_append_to_a_stored_history_and_garbage_after_a_record_is_refused() {
        let mut r = InstanceRecord::new("orch:Hello:h", 7);
        let mut h = OrchestrationHistory::start(Payload::json(&"in").unwrap(), None, 2, 7);
        for slot in 0..3 {
            h.commands.push(Command { kind: CommandKind::CallActivity, name: format!("A{slot}") });
            h.log.push(LogEntry { slot, completion: Completion::Value(Payload::json(&slot).unwrap()), at: 8 });
        }
        r.body = Body::Orchestration(Box::new(h));
        r.access.owners.insert("alice".into());
        let mut blob = r.to_blob();
        // Two steps, each appended as a delta.
        for step in 3..5u32 {
            let (commands, log) = {
                let h = r.orchestration().unwrap();
                (h.commands.len(), h.log.len())
            };
            let Body::Orchestration(h) = &mut r.body else { unreachable!() };
            h.commands.push(Command { kind: CommandKind::CreateTimer, name: format!("T{step}") });
            h.log.push(LogEntry { slot: step, completion: Completion::Done, at: 9 });
            h.custom_status = Some(Payload::json(&step).unwrap());
            r.version += 1;
            let delta = r.to_delta(commands, log).expect("an orchestration");
            assert!(delta.len() < r.to_blob().len(), "a delta holds only the new entries");
            blob.extend(delta);
            assert_eq!(InstanceRecord::from_blob(&blob).unwrap(), r);
        }
        assert_eq!(r.orchestration().unwrap().log.len(), 5);
        // What may follow a record is a delta frame of an orchestration, nothing else.
        let mut garbage = blob.clone();
        garbage.extend([7, 1, 2]);
        assert!(matches!(InstanceRecord::from_blob(&garbage), Err(BlobError::Corrupt(_))));
        let mut entity = InstanceRecord::new("entity:Counter:c", 7);
        entity.body = Body::Entity(EntityState::default());
        let mut after_entity = entity.to_blob();
        after_entity.extend(r.clone().to_delta(0, 0).unwrap());
        assert!(matches!(InstanceRecord::from_blob(&after_entity), Err(BlobError::Corrupt(_))));
        assert_eq!(entity.to_delta(0, 0), None, "only an orchestration has a delta");
        assert!(matches!(InstanceRecord::from_blob(&blob[..blob.len() - 1]), Err(BlobError::Corrupt(_))));
    }

    /// A running orchestration stored by a processor before format 4 (a format-3 record and
    /// 0xD3 deltas) gets format-4 deltas appended after an upgrade: the blob still reads, and the
    /// last delta's guard counts.
    #[test]
    fn format_4_deltas_after_a_format_3_record_read() {
        let v3 = |r: &InstanceRecord, format: u8| {
            let out = postcard::to_extend(r, vec![format]).unwrap();
            postcard::to_extend(&r.quota, postcard::to_extend(&r.access, out).unwrap()).unwrap()
        };
        let timer = |name: &str| Command { kind: CommandKind::CreateTimer, name: name.into() };
        let mut r = InstanceRecord::new("orch:Hello:h", 7);
        let h = OrchestrationHistory::start(Payload::json(&"in").unwrap(), None, 2, 7);
        r.body = Body::Orchestration(Box::new(h));
        let mut blob = v3(&r, 3);
        // A format-3 delta with one more command.
        let Body::Orchestration(h) = &mut r.body else { unreachable!() };
        h.commands.push(timer("T0"));
        let mut old_delta = r.clone();
        let Body::Orchestration(h) = &mut old_delta.body else { unreachable!() };
        h.commands.clear();
        h.commands.push(timer("T0"));
        blob.extend(v3(&old_delta, DELTA_FORMAT_3));
        // After the upgrade: a format-4 delta with one more command and a guard.
        let Body::Orchestration(h) = &mut r.body else { unreachable!() };
        h.commands.push(timer("T1"));
        r.dedup.sealed_at = r.dedup.recent_ids.iter().map(|_| None).collect();
        r.dedup.remember(9, Some(1_700_000_000_000), EXTERNAL_ID_WINDOW);
        r.parked.push((1_700_000_001_000, 40));
        blob.extend(r.to_delta(1, 0).expect("an orchestration"));
        assert_eq!(InstanceRecord::from_blob(&blob).expect("a mixed blob reads"), r);
    }
}
