//! One step of one instance: `(stored record, new deliveries, now) → (record', effects)`.
//!
//! [`Engine::step`] is pure and deterministic: it does no I/O, reads no clock, and gives the same
//! output for the same input (event ids of everything it emits are derived from the instance,
//! its generation and slot, or its version — never random).
//!
//! # Call order (for drivers: the runtime, the simulator, the harness)
//! 1. Load the record (and its etag) of the target instance.
//! 2. Call [`Engine::step`] with the deliveries for that instance, in log order.
//! 3. If [`StepOutput::changed`], commit `record.to_blob()` plus the [`Effect::Delay`]s
//!    atomically, only if the etag is unchanged. On a conflict, discard the output and go to 1.
//! 4. After the commit, produce `record.outbox` (emits and the state change) in order, then
//!    acknowledge the input offsets. Produce outboxes of one partition in input-offset order:
//!    the origin stamps (see `history`) rely on it.
//! 5. If [`StepOutput::resend`] is set, these records were committed before but that commit's
//!    outbox may not have left: produce it again, at its offset (receivers drop duplicates). If
//!    the step is also [`StepOutput::changed`], do not commit it: its commit would replace that
//!    outbox before it left. End the batch before [`StepOutput::end_before`], produce the
//!    resend, and step the rest in the next batch.
//!
//! Dead letters ([`StepOutput::dead_letters`]) are produced to the dead-letter topic after the
//! commit; the event counts as applied, so it is never retried.

mod entity;
mod ledger;
mod orchestration;
mod reservation;
#[cfg(feature = "runtime")]
pub(crate) use orchestration::rewind_refusal;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use durable_schemas::{Envelope, Event, Origin};

use crate::access::{self, Grant, Policy, Principal, FORBIDDEN};
use crate::effect::Effect;
use crate::history::{fnv64, is_outside, Admission, Body, InstanceRecord, OrchestrationStatus, Outbox};
use crate::id::{InstanceId, Kind};
use crate::quota;
use crate::registry::Registry;
use crate::retention::{self, Retention};

/// One event to apply, with its position in the instance's partition (if it came from one).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event.
    pub envelope: Envelope,
    /// Kafka offset in the instance's partition; `None` when not delivered through a log.
    pub offset: Option<i64>,
    /// Whether a processor sealed it ([`crate::trust`]): then its timestamp is a processor's
    /// clock, and an outside event's freshness is checked by it ([`Dedup::stale`](crate::history::Dedup::stale)).
    pub sealed: bool,
}

/// The input of a step besides the stored record.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// Deliveries, in log order.
    pub deliveries: Vec<Delivery>,
    /// Logical time of this step (ms since the Unix epoch).
    pub now: i64,
    /// The partition this instance lives in, to stamp emitted events with origin `p<N>`;
    /// `None` emits without origin (dedup by event id at the receiver).
    pub partition: Option<u32>,
    /// For a step whose deliveries did not come from the log (activity replies applied in
    /// process right after the commit that scheduled the activities): the offset of a record
    /// that will be read again if this step's outbox may not have left — the runtime gives the
    /// offset the stored outbox answers to, a record of the group not yet acknowledged. The
    /// outbox records it, and when that record arrives again it is a duplicate, but this step's
    /// outbox is sent again ([`StepOutput::resend`]): that is how an outbox whose committer
    /// crashed before sending it still leaves.
    pub trigger: Option<i64>,
}

/// Why a delivery was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A Kafka record at or below the applied offset.
    Redelivered,
    /// The same logical event was applied before.
    Duplicate,
    /// A reply to a slot that already has its completion.
    SlotAlreadyCompleted,
    /// A reply for an earlier generation (before `continue_as_new` or a restart).
    StaleGeneration,
    /// An event for an orchestration that has finished.
    Finished,
    /// A start for an orchestration that is already running.
    AlreadyRunning,
    /// A lock grant the owner no longer wants (answered with a release).
    UnwantedGrant,
    /// A `Suspend` for a suspended orchestration, or a `Resume` for one that is not.
    NoChange,
}

/// A delivery that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its event id.
    pub event_id: String,
    /// Why.
    pub reason: DropReason,
}

/// An event that cannot be applied: it goes to the dead-letter topic with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event.
    pub envelope: Envelope,
    /// Human-readable reason.
    pub reason: String,
}

/// The result of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The new record (its `outbox` holds what to produce after the commit).
    pub record: InstanceRecord,
    /// Every effect of this step, in order: emits, delays and the state change.
    pub effects: Vec<Effect>,
    /// Events that cannot be applied.
    pub dead_letters: Vec<DeadLetter>,
    /// Deliveries not applied (duplicates, redeliveries, stale replies …).
    pub dropped: Vec<Dropped>,
    /// Whether anything was applied (else there is nothing to commit).
    pub changed: bool,
    /// The outbox of an earlier commit of these same records (some were redelivered): produce
    /// it again, at `resend.offset`, since the crash that caused the redelivery may have come
    /// before it left.
    pub resend: Option<Outbox>,
    /// Set when the step both resends and changed the record: do not commit it (the commit
    /// would replace an outbox that may not have left); end the batch before this offset, the
    /// instance's first record above its stored `applied_offset`, and step the rest later.
    pub end_before: Option<i64>,
}

impl StepOutput {
    /// Whether some delivery was a redelivered record (the outbox should be produced again).
    pub fn redelivered(&self) -> bool {
        self.dropped.iter().any(|d| d.reason == DropReason::Redelivered)
    }

    /// Whether the step changed the record and sends nothing but activity invocations and its
    /// state: nothing that needs an origin stamp, so a local round may commit it.
    pub fn stays_local(&self) -> bool {
        self.changed
            && self.dead_letters.is_empty()
            && self.record.outbox.effects.iter().all(|e| match e {
                Effect::Emit(e) => Kind::Activity.owns(&e.target),
                _ => true,
            })
    }

    /// The emitted events, in order.
    pub fn emitted(&self) -> impl Iterator<Item = &Envelope> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Emit(e) => Some(e),
            _ => None,
        })
    }

    /// The delayed events, in order: `(fire_at, envelope)`.
    pub fn delayed(&self) -> impl Iterator<Item = (i64, &Envelope)> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Delay { fire_at, envelope } => Some((*fire_at, envelope)),
            _ => None,
        })
    }
}

/// What a step accumulates.
struct Collector {
    effects: Vec<Effect>,
    dead_letters: Vec<DeadLetter>,
    dropped: Vec<Dropped>,
    /// Prefix for ids of events not tied to a slot: `<instance>@<new version>`.
    id_prefix: String,
    /// Counter for those ids.
    next_id: u32,
    now: i64,
    limits: Limits,
    /// Set by a `Purge` that emptied the record; a later event of the step may fill it again.
    purged: bool,
    /// Set when the record changed though the step may show nothing for it (a resume whose kept
    /// events were all dropped): it is committed even if every delivery looks dropped.
    altered: bool,
    /// The target type's retention period, if any.
    retention: Option<i64>,
    /// Bytes of events the instance keeps waiting, counted at the first buffering of the step
    /// ([`Collector::buffer`]) and raised by each one after.
    buffered: Option<usize>,
}

impl Collector {
    fn drop(&mut self, envelope: &Envelope, reason: DropReason) {
        self.dropped.push(Dropped { event_id: envelope.id.clone(), reason });
    }

    fn dead(&mut self, envelope: Envelope, reason: impl Into<String>) {
        self.dead_letters.push(DeadLetter { envelope, reason: reason.into() });
    }

    /// Make room for `more` bytes of events the instance keeps waiting, `held` counting what it
    /// keeps already (asked once a step); or why there is none (see
    /// [`Limits::max_buffered_bytes`]).
    fn buffer(&mut self, held: impl FnOnce() -> usize, more: usize) -> Result<(), String> {
        let now = *self.buffered.get_or_insert_with(held);
        let limit = self.limits.max_buffered_bytes;
        if now + more > limit {
            return Err(format!(
                "it keeps {now} bytes of events waiting already, and {more} more would pass the limit of {limit} (DURABLE_MAX_BUFFERED_BYTES)"
            ));
        }
        self.buffered = Some(now + more);
        Ok(())
    }

    /// Whether what the instance keeps waiting was counted already this step (then
    /// [`Collector::buffer`] does not ask again).
    fn buffer_counted(&self) -> bool {
        self.buffered.is_some()
    }

    /// A fresh deterministic event id.
    fn event_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}.{}", self.id_prefix, self.next_id)
    }
}

/// The wrappers the infrastructure and context layers read, peeled off an event.
#[derive(Debug, Clone, Default)]
pub(crate) struct Unwrapped {
    /// `WithPrincipal`: who the event acts for.
    pub principal: Option<Principal>,
    /// `ReplyTo`: (address, correlation).
    pub reply_to: Option<(String, String)>,
    /// `WithLock`: (owner, participants).
    pub lock: Option<(String, Vec<String>)>,
}

/// Peel `WithPrincipal`, `ReplyTo` and `WithLock` (in any nesting) off `event`.
pub(crate) fn unwrap(event: &Event) -> (Unwrapped, &Event) {
    let mut w = Unwrapped::default();
    let mut e = event;
    loop {
        match e {
            Event::WithPrincipal { user, roles, inner } => {
                w.principal.get_or_insert_with(|| Principal::new(user.clone(), roles.clone()));
                e = inner;
            }
            Event::ReplyTo { address, correlation, inner } => {
                w.reply_to.get_or_insert_with(|| (address.clone(), correlation.clone()));
                e = inner;
            }
            Event::WithLock { owner, participants, inner } => {
                w.lock.get_or_insert_with(|| (owner.clone(), participants.clone()));
                e = inner;
            }
            other => return (w, other),
        }
    }
}

/// The principal an event acts for, if it names one (its outermost `WithPrincipal`).
pub fn unwrap_principal(event: &Event) -> Option<Principal> {
    unwrap(event).0.principal
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Run `f`, turning a panic into `Err(message)`.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

/// Bounds on what one instance may hold and do. Hitting one fails that instance or
/// dead-letters that event with the reason — never the partition. The runtime sets them from
/// `DURABLE_MAX_*` ([`crate::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest entity state, orchestration output or custom status, in bytes: each travels in a
    /// state record, which must fit in one Kafka record. An operation that would store more
    /// fails with kind `StateTooLarge` and changes nothing; an orchestration fails with it.
    pub max_state_bytes: usize,
    /// Largest orchestration history (the current generation's log, commands and buffers, in
    /// approximate stored bytes): past it the orchestration fails with kind `HistoryTooLarge`.
    /// A long-running orchestration keeps its history small with `continue_as_new`.
    pub max_history_bytes: usize,
    /// Most external events an orchestration buffers before a `wait_for_event` takes them;
    /// further ones are dead-lettered.
    pub max_inbox: usize,
    /// Most operations waiting at a locked entity; further ones are dead-lettered (a call is
    /// answered with kind `QueueFull`).
    pub max_entity_queue: usize,
    /// Most new commands (activity calls, timers, messages …) one orchestration issues in one
    /// step: past it the orchestration fails with kind `FanOutTooLarge`.
    pub max_fan_out: usize,
    /// Longest delay a `WithDelay` may ask for, in ms past the time it arrives: one asking for
    /// more is dead-lettered (parked timers live in Redis until they are due).
    pub max_delay_ms: i64,
    /// Most bytes of events one instance keeps waiting in its record — for its start (raised
    /// before it), its resume (while suspended), a `wait_for_event`, its creation limit's ledger,
    /// or a lock (an entity's queue) — together: the event that would pass it is dead-lettered
    /// (a call is answered with `QueueFull`). With the history and state bounds it bounds the
    /// stored record, so no tenant can grow one past what a commit writes.
    pub max_buffered_bytes: usize,
    /// Most events delivered inside a `WithDelay` (from a client or an outside producer) that
    /// wait parked for one instance at a time: the one past it is dead-lettered. Their bytes
    /// count against `max_buffered_bytes` until they are due.
    pub max_delayed: usize,
    /// How far from the processor's clock the seal time of an event the API sealed may be when
    /// it is applied, in ms: one further away is dead-lettered, as a captured record sent again
    /// after its id left the dedup window could not be told from the first.
    pub max_sealed_age_ms: i64,
    /// How many outside event ids each instance remembers to recognise a copy
    /// ([`EXTERNAL_ID_WINDOW`](crate::history::EXTERNAL_ID_WINDOW); simulations shrink it to
    /// turn it over quickly).
    pub dedup_window: usize,
}

impl Limits {
    /// The longest delay by default: a year and a day.
    pub const MAX_DELAY_MS: i64 = 366 * 24 * 3_600_000;
    /// The longest a sealed event may take to be applied, by default: a day.
    pub const MAX_SEALED_AGE_MS: i64 = 24 * 3_600_000;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_state_bytes: 512 * 1024,
            max_history_bytes: 8 * 1024 * 1024,
            max_inbox: 10_000,
            max_entity_queue: 10_000,
            max_fan_out: 10_000,
            max_delay_ms: Self::MAX_DELAY_MS,
            max_buffered_bytes: 8 << 20,
            max_delayed: 1_000,
            max_sealed_age_ms: Self::MAX_SEALED_AGE_MS,
            dedup_window: crate::history::EXTERNAL_ID_WINDOW,
        }
    }
}

/// The pure engine. Cheap to clone; shares its [`Registry`].
#[derive(Clone)]
pub struct Engine {
    registry: Arc<Registry>,
    limits: Limits,
    policy: Arc<Policy>,
    retention: Arc<Retention>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (orchestrations, entities, activities) = self.registry.names();
        f.debug_struct("Engine")
            .field("orchestrations", &orchestrations)
            .field("entities", &entities)
            .field("activities", &activities)
            .finish()
    }
}

impl Engine {
    /// An engine running the handlers of `registry`.
    pub fn new(registry: Registry) -> Self {
        Self::with_registry(Arc::new(registry))
    }

    /// An engine sharing an existing registry.
    pub fn with_registry(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            limits: Limits::default(),
            policy: Arc::new(Policy::open()),
            retention: Arc::new(Retention::default()),
        }
    }

    /// This engine with a [`Retention`] (the default keeps everything).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = Arc::new(retention);
        self
    }

    /// This engine with another authorization [`Policy`] (the default is [`Policy::open`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The authorization policy it enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// This engine with other [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The handlers.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Apply `input.deliveries` to the instance `target` whose stored record is `record`.
    pub fn step(&self, target: &InstanceId, record: Option<InstanceRecord>, input: StepInput) -> StepOutput {
        self.step_live(target, record, input, None).0
    }

    /// The fingerprint ([`Live::fingerprint`]) of the code of `record`, a running orchestration,
    /// replayed from its history: what the live code kept after the step that made `record` must
    /// equal. `None` if it is not a running orchestration or its replay ends the code.
    pub fn replayed_code(&self, target: &InstanceId, record: &InstanceRecord) -> Option<String> {
        let Body::Orchestration(h) = &record.body else { return None };
        orchestration::replayed(&self.registry, target, h, self.limits).map(|exec| exec.fingerprint())
    }

    /// The infrastructure layer's delays: an event due later is parked (its envelope without
    /// the wrapper and the origin) if its sender may send it and the delay is within the
    /// longest, else refused; `None` either way. Anything else is returned to pass inward.
    fn delay(
        &self,
        target: &InstanceId,
        record: &mut InstanceRecord,
        mut envelope: Envelope,
        now: i64,
        out: &mut Collector,
    ) -> Option<Envelope> {
        match envelope.body {
            Event::WithDelay { fire_at, inner } if fire_at > now => {
                // As it waits parked: its envelope without the wrapper and the origin.
                envelope.body = *inner;
                let origin = envelope.origin.take();
                let bytes = envelope.encode().len();
                let refusal = self.delay_refusal(target, record, &envelope.body, fire_at, now).or_else(|| {
                    let max = self.limits.max_delayed;
                    if record.parked.len() >= max {
                        return Some(format!(
                            "it has {} delayed events parked already, the most one instance may have (DURABLE_MAX_DELAYED)",
                            record.parked.len()
                        ));
                    }
                    out.buffer(|| buffered_bytes(record), bytes).err()
                });
                if let Some(reason) = refusal {
                    let (wrappers, core) = unwrap(&envelope.body);
                    let core = core.clone();
                    let body = Event::WithDelay { fire_at, inner: Box::new(envelope.body) };
                    refuse(target, &wrappers, &core, Envelope { body, origin, ..envelope }, reason, out);
                    return None;
                }
                record.parked.push((fire_at, bytes.min(u32::MAX as usize) as u32));
                out.effects.push(Effect::Delay { fire_at, envelope });
                None
            }
            Event::WithDelay { inner, .. } => {
                envelope.body = *inner;
                Some(envelope)
            }
            _ => Some(envelope),
        }
    }

    /// Why a delayed event may not be parked, if it may not: it asks for more than the longest
    /// delay, or its sender may not send what it holds to `target` as `target` is now (decided
    /// again when it is due).
    fn delay_refusal(
        &self,
        target: &InstanceId,
        record: &InstanceRecord,
        inner: &Event,
        fire_at: i64,
        now: i64,
    ) -> Option<String> {
        let allowed = if quota::is_ledger(target) {
            Ok(())
        } else {
            let (wrappers, core) = unwrap(inner);
            let principal = wrappers.principal.as_ref();
            let exists = !matches!(record.body, Body::Empty);
            match core {
                Event::Access(change) => {
                    access::change(&self.policy, principal, target, &mut record.access.clone(), change)
                }
                _ => match access::asks(core, wrappers.reply_to.is_some(), target, exists) {
                    Some(op) => access::decide(&self.policy, principal, op, target, &record.access, exists).map(|_| ()),
                    None => Ok(()),
                },
            }
        };
        let delay = fire_at.saturating_sub(now);
        match allowed {
            Err(reason) => Some(reason),
            Ok(()) if delay > self.limits.max_delay_ms => Some(format!(
                "a delay of {delay} ms is over the longest of {} ms (DURABLE_MAX_DELAY)",
                self.limits.max_delay_ms
            )),
            Ok(()) => None,
        }
    }

    /// Stage 1, admit: each delivery in order — duplicate detection, a sealed outside event's
    /// freshness, then the infrastructure layer (delays parked only once their sender is found
    /// allowed to send what they hold), then authorization and creation limits (sharing events
    /// end there) — and only then is an outside event's id remembered, so that a refused one
    /// leaves nothing behind and a later copy in the same step is recognised. Returns how many
    /// were new and the events to apply.
    fn admit(
        &self,
        target: &InstanceId,
        record: &mut InstanceRecord,
        deliveries: Vec<Delivery>,
        now: i64,
        out: &mut Collector,
    ) -> (usize, Vec<Envelope>) {
        let mut admitted = 0;
        let mut ready = Vec::with_capacity(deliveries.len());
        // Delayed events that are due no longer wait parked.
        record.parked.retain(|&(due, _)| due > now);
        for Delivery { envelope, offset, sealed } in deliveries {
            match record.dedup.admit(&envelope, offset) {
                Admission::New if envelope.target != record.id => {
                    let reason = format!("event for {} delivered to {}", envelope.target, record.id);
                    out.dead(envelope, reason);
                }
                Admission::New => {
                    admitted += 1;
                    let outside = is_outside(&envelope).then(|| fnv64(envelope.id.as_bytes()));
                    let sealed_at = sealed.then_some(envelope.timestamp);
                    if let (Some(_), Some(at)) = (outside, sealed_at) {
                        if let Some(reason) = record.dedup.stale(at, now, self.limits.max_sealed_age_ms) {
                            out.dead(envelope, reason);
                            continue;
                        }
                    }
                    let refusals_from = out.dead_letters.len();
                    if let Some(envelope) = self.delay(target, record, envelope, now, out) {
                        if quota::is_ledger(target) {
                            ready.push(envelope);
                        } else {
                            authorize(&self.policy, target, record, envelope, out, &mut ready);
                        }
                    }
                    if let Some(id) = outside {
                        let refused =
                            out.dead_letters[refusals_from..].iter().any(|d| fnv64(d.envelope.id.as_bytes()) == id);
                        if !refused {
                            record.dedup.remember(id, sealed_at, self.limits.dedup_window);
                        }
                    }
                }
                Admission::Redelivered => out.drop(&envelope, DropReason::Redelivered),
                Admission::Duplicate => out.drop(&envelope, DropReason::Duplicate),
            }
        }
        (admitted, ready)
    }

    /// Stage 2, apply: the admitted events to the instance's kind (a ledger, an orchestration —
    /// continuing `live` code if it belongs to the record —, an entity). Returns the code to
    /// keep live, if any, with its size.
    fn apply(
        &self,
        target: &InstanceId,
        record: &mut InstanceRecord,
        ready: Vec<Envelope>,
        out: &mut Collector,
        live: Option<Live>,
    ) -> Option<(orchestration::Execution, usize)> {
        match target.kind() {
            _ if quota::is_ledger(target) => ledger::step(&self.policy, target, record, ready, out),
            Kind::Orchestration => {
                return orchestration::step(&self.registry, target, record, ready, out, live.map(|l| l.exec));
            }
            Kind::Entity => entity::step(&self.registry, target, record, ready, out),
            Kind::Activity => {
                for envelope in ready {
                    out.dead(envelope, "activity invocations are executed by the runtime, not stepped");
                }
            }
        }
        None
    }

    /// [`Engine::step`] for an orchestration that may be live: `live`, the code kept from the step
    /// that made `record`, continues instead of a replay of the history (a `live` that does not
    /// belong to `record` is dropped, and the step replays). Returns the output and the code to
    /// keep for the next step on the record the output commits, if it is still running.
    ///
    /// Whoever keeps a [`Live`] must hand it back only with the very record it came with, as
    /// committed: the partition core keeps them together in its cache, under the commit's etag.
    pub fn step_live(
        &self,
        target: &InstanceId,
        record: Option<InstanceRecord>,
        input: StepInput,
        live: Option<Live>,
    ) -> (StepOutput, Option<Live>) {
        let live = live.filter(|l| record.as_ref().is_some_and(|r| r.version == l.version && r.id == l.id));
        let StepInput { deliveries, now, partition, trigger } = input;
        let mut record = record.unwrap_or_else(|| InstanceRecord::new(target.canonical(), now));
        let done_before = retention::done(&record);
        let mut out = Collector {
            effects: Vec::new(),
            dead_letters: Vec::new(),
            dropped: Vec::new(),
            id_prefix: format!("{}@{}", record.id, record.version + 1),
            next_id: 0,
            now,
            limits: self.limits,
            purged: false,
            altered: false,
            retention: self.retention.of(target),
            buffered: None,
        };
        let min_offset = deliveries.iter().filter_map(|d| d.offset).min();
        let max_offset = deliveries.iter().filter_map(|d| d.offset).max();
        // The record the stored outbox answers to is here again: whoever committed that outbox
        // may not have sent it (a local step's outbox answers to a record of its group).
        let trigger_again = record.outbox.offset.is_some_and(|o| deliveries.iter().any(|d| d.offset == Some(o)));
        let delivered = deliveries.len();
        let applied_before = record.dedup.applied_offset;
        let first_new = deliveries.iter().filter_map(|d| d.offset).find(|o| applied_before.is_none_or(|a| *o > a));
        let (admitted, ready) = self.admit(target, &mut record, deliveries, now, &mut out);
        let changed = admitted > 0 || !out.dead_letters.is_empty();
        let redelivered = out.dropped.iter().any(|d| d.reason == DropReason::Redelivered);
        let resend = match (redelivered, min_offset, max_offset) {
            _ if trigger_again => Some(record.outbox.clone()),
            (true, Some(lo), Some(hi)) => {
                record.outbox.offset.filter(|o| (lo..=hi).contains(o)).map(|_| record.outbox.clone())
            }
            _ => None,
        };
        let before = out.effects.len();
        let kept = self.apply(target, &mut record, ready, &mut out, live);
        sent_effects(target, &mut record, before, &mut out);
        // Every delivery was dropped (here or by the orchestration: a reply to a completed slot)
        // and nothing came of it: nothing to commit, and the stored outbox, which may not have
        // left yet, stays.
        let changed = changed
            && (out.altered
                || !(out.dropped.len() == delivered && out.effects.is_empty() && out.dead_letters.is_empty()));
        if changed {
            finish(target, &mut record, &mut out, done_before, partition, max_offset.or(trigger), max_offset);
        }
        let live = kept.map(|(exec, size)| Live {
            exec,
            id: record.id.clone(),
            version: record.version,
            bytes: size + Live::OVERHEAD,
        });
        let output = StepOutput {
            record,
            effects: out.effects,
            dead_letters: out.dead_letters,
            dropped: out.dropped,
            end_before: first_new.filter(|_| changed && resend.is_some()),
            changed,
            resend,
        };
        (output, live)
    }
}

/// A live orchestration: its code, suspended where the step that committed version `version` of
/// its record left it, kept in memory so that the next step continues it rather than replaying
/// the whole history. Only a cost saving: dropping it (eviction, a lost commit, a restart) costs
/// one replay, never a different result — the simulator checks that a step taken live equals a
/// replay of the same record.
pub struct Live {
    exec: orchestration::Execution,
    id: String,
    version: u64,
    bytes: usize,
}

impl Live {
    /// What a live orchestration is counted as beyond its history's size: the code's future and
    /// the bookkeeping around it.
    pub const OVERHEAD: usize = 2048;

    /// About how many bytes it holds: its delivered completions and commands (a copy of its
    /// history's) and [`Live::OVERHEAD`].
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// What the code's side holds (generation, slots, waits, delivered completions …): equal for
    /// a live execution and a replay of the same history.
    pub fn fingerprint(&self) -> String {
        self.exec.fingerprint()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The authorization step: every event that asks something of `target` is decided by
/// [`access::decide`] for the principal it carries; a refused one is dead-lettered (a refused
/// call, sub-orchestration start or lock request is answered with a [`FORBIDDEN`] failure) and
/// changes nothing else. The first principal to create the instance becomes its owner. Sharing
/// events are applied to the record's access here. An event that creates an instance of a
/// limited type waits, with every later one, for its user's ledger ([`crate::quota`]). Returns
/// the events that pass inward.
fn authorize(
    policy: &Policy,
    target: &InstanceId,
    record: &mut InstanceRecord,
    envelope: Envelope,
    out: &mut Collector,
    passed: &mut Vec<Envelope>,
) {
    // Events held behind a creation that the ledger just answered are decided again, in order,
    // before anything after them (no allocation unless that happens).
    let mut work = VecDeque::new();
    let mut first = Some(envelope);
    while let Some(envelope) = first.take().or_else(|| work.pop_front()) {
        let (wrappers, core) = unwrap(&envelope.body);
        if record.quota.waiting.is_some() {
            reservation::while_waiting(target, record, envelope, out, &mut work);
            continue;
        }
        // A ledger's answer again (replies are not deduplicated by their origin): applied already.
        if matches!(core, Event::OperationResult { .. }) && envelope.source.as_deref().is_some_and(quota::names_ledger)
        {
            out.drop(&envelope, DropReason::Duplicate);
            continue;
        }
        let principal = wrappers.principal.clone();
        if let Event::Access(change) = core {
            let change = change.clone();
            match access::change(policy, principal.as_ref(), target, &mut record.access, &change) {
                Ok(()) => {}
                Err(reason) => out.dead(envelope, reason),
            }
            continue;
        }
        let exists = !matches!(record.body, Body::Empty);
        let Some(op) = access::asks(core, wrappers.reply_to.is_some(), target, exists) else {
            passed.push(envelope);
            continue;
        };
        // A purge of nothing changes nothing but to publish the tombstone again (a purge whose
        // commit's outbox may not have left, redelivered): no permission is needed for that.
        if !exists && matches!(core, Event::Purge { .. }) {
            passed.push(envelope);
            continue;
        }
        // The retention timer's purge: the instance parked it for itself (only a processor
        // sends as an instance: `crate::trust`), and it acts for nobody.
        if matches!(core, Event::Purge { reason } if reason == retention::REASON)
            && envelope.source.as_deref() == Some(record.id.as_str())
        {
            passed.push(envelope);
            continue;
        }
        let grant = match access::decide(policy, principal.as_ref(), op, target, &record.access, exists) {
            Ok(grant) => grant,
            Err(reason) => {
                refuse(target, &wrappers, core, envelope.clone(), reason, out);
                continue;
            }
        };
        if let Some(user) = quota::needs_charge(policy, principal.as_ref(), op, target, record.holds_place()) {
            reservation::reserve(target, record, user, envelope, out);
            continue;
        }
        if grant == Grant::Creates {
            if let Some(p) = principal {
                record.access.owners.insert(p.user);
            }
        }
        passed.push(envelope);
    }
}

/// Apply a `Purge` to `target`: a finished orchestration or an idle entity becomes an empty
/// record (its dedup marks stay, so late copies of what it applied are still recognised; the
/// store lets an empty record expire), which the step publishes as a tombstone. A retention
/// purge ([`retention::REASON`]) of an orchestration applies only if its current generation
/// started at least the retention period ago (it was not restarted since the timer was set).
/// Anything else is dead-lettered with why.
fn purge(target: &InstanceId, record: &mut InstanceRecord, envelope: Envelope, out: &mut Collector) {
    let retention = matches!(envelope.body.core(), Event::Purge { reason } if reason == retention::REASON);
    let refusal = match &record.body {
        Body::Empty => None,
        // A retention timer set before a restart: the restarted run's end sets its own.
        Body::Orchestration(h)
            if retention && out.retention.is_none_or(|after| h.started_at.saturating_add(after) > out.now) =>
        {
            return out.drop(&envelope, DropReason::NoChange)
        }
        // Not done (any more): its own end parks a timer again.
        _ if retention && !retention::done(record) => return out.drop(&envelope, DropReason::NoChange),
        body => purge_refusal(target, body),
    };
    if let Some(reason) = refusal {
        return out.dead(envelope, reason);
    }
    record.body = Body::Empty;
    record.access = access::Access::default();
    out.purged = true;
}

/// Why `target`, whose body is `body`, cannot be purged now, if it cannot: the one rule the
/// engine's dead letter and the API's 409 both say.
pub(crate) fn purge_refusal(target: &InstanceId, body: &Body) -> Option<String> {
    match body {
        Body::Orchestration(h) if !h.status.is_finished() && !h.status.is_pending() => Some(format!(
            "{target} is {}: terminate it first (a completed, failed, terminated or pending orchestration is purged)",
            h.status.word()
        )),
        Body::Entity(e) => match (&e.lock, e.queue.len()) {
            (Some(lock), _) => {
                Some(format!("{target} is locked by {}: purge it after the critical section", lock.owner))
            }
            (None, queued) if queued > 0 => {
                Some(format!("{target} has {queued} operations queued: purge it when they ran"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Dead-letter a refused event and answer whoever waits for it with a [`FORBIDDEN`] failure.
fn refuse(
    target: &InstanceId,
    wrappers: &Unwrapped,
    core: &Event,
    envelope: Envelope,
    reason: String,
    out: &mut Collector,
) {
    let failure = durable_schemas::Failure::new(FORBIDDEN, reason.clone());
    let answer = match (core, &wrappers.reply_to) {
        (Event::EntityOperation { .. }, Some((address, correlation))) => {
            Some((address.clone(), Event::OperationResult { correlation: correlation.clone(), outcome: Err(failure) }))
        }
        (Event::StartOrchestration { .. }, Some((address, correlation))) => {
            Some((address.clone(), Event::OrchestrationFailed { correlation: correlation.clone(), failure }))
        }
        // The lock's owner waits for a grant: it gets the refusal instead, and releases what
        // the participants before this one hold.
        (Event::LockRequest { owner, correlation, .. }, _) => {
            Some((owner.clone(), Event::OperationResult { correlation: correlation.clone(), outcome: Err(failure) }))
        }
        _ => None,
    };
    out.dead(envelope, reason);
    if let Some((address, body)) = answer {
        let mut e = Envelope::new(out.event_id(), address, out.now, body);
        e.source = Some(target.canonical());
        out.effects.push(Effect::Emit(e));
    }
}

/// Stage 3, what the step sends (its effects from `before`): nothing addressed to a
/// creation-limit ledger (they are Durable's own), an orchestration's requests in the principal
/// it runs as; and a charged instance that is no longer live gives its place back.
fn sent_effects(target: &InstanceId, record: &mut InstanceRecord, before: usize, out: &mut Collector) {
    let now = out.now;
    // The ledgers are Durable's own: application code does not address them.
    let mut i = before;
    while i < out.effects.len() {
        match &out.effects[i] {
            Effect::Emit(e) | Effect::Delay { envelope: e, .. } if quota::names_ledger(&e.target) => {
                let (Effect::Emit(e) | Effect::Delay { envelope: e, .. }) = out.effects.remove(i) else {
                    unreachable!("matched above")
                };
                let reason =
                    format!("{} is Durable's own ledger of the creation limits: {target} may not send to it", e.target);
                out.dead(e, reason);
            }
            _ => i += 1,
        }
    }
    // An orchestration acts for whoever started its run: what it sends carries that principal.
    if target.kind() == Kind::Orchestration {
        if let Some(principal) = &record.access.run_as {
            for effect in &mut out.effects[before..] {
                if let Effect::Emit(e) | Effect::Delay { envelope: e, .. } = effect {
                    run_as(principal, e);
                }
            }
        }
    }
    // A charged instance that is no longer live gives its place back.
    if record.quota.waiting.is_none() && !record.is_live() {
        if let Some(user) = record.quota.charged.take() {
            let ledger = quota::ledger_of(target, &user);
            let body = Event::EntityOperation {
                operation: quota::RELEASE.into(),
                input: durable_schemas::Payload::json(&record.id).expect("ids serialize"),
            };
            let mut e = Envelope::new(out.event_id(), ledger.canonical(), now, body);
            e.source = Some(record.id.clone());
            out.effects.push(Effect::Emit(e));
        }
    }
}

/// Stage 4, finish a step that changed the record: its new version, the retention purge of an
/// instance that just finished, its state change, the origins of what it emits (partition
/// `p<partition>`, sequence from `max_offset`), and its outbox (answering to `outbox_offset`).
fn finish(
    target: &InstanceId,
    record: &mut InstanceRecord,
    out: &mut Collector,
    done_before: bool,
    partition: Option<u32>,
    outbox_offset: Option<i64>,
    max_offset: Option<i64>,
) {
    let now = out.now;
    record.version += 1;
    record.updated_at = now;
    if !done_before && retention::done(record) {
        if let Some(after) = out.retention {
            let purge = Event::Purge { reason: retention::REASON.into() };
            let mut e =
                Envelope::new(format!("{}@{}/retention", record.id, record.version), target.canonical(), now, purge);
            e.source = Some(record.id.clone());
            out.effects.push(Effect::Delay { fire_at: now.saturating_add(after), envelope: e });
        }
    }
    if let Some(change) = record.state_change() {
        out.effects.push(Effect::StateChanged(change));
    } else if out.purged && matches!(record.body, Body::Empty) {
        out.effects.push(Effect::StateChanged(record.purged_change()));
    }
    if let (Some(partition), Some(offset)) = (partition, max_offset) {
        let stream = format!("p{partition}");
        let emits = out.effects.iter_mut().filter_map(|e| match e {
            Effect::Emit(e) => Some(e),
            _ => None,
        });
        for (i, e) in emits.enumerate() {
            e.origin = Some(Origin { stream: stream.clone(), seq: (offset << 20) | i as i64 });
        }
    }
    let dead = out.dead_letters.iter().map(|d| {
        let encoded = d.envelope.encode();
        let (copy, truncated_from) = durable_schemas::contract::dead_letter::copy(&encoded);
        Effect::DeadLetter {
            key: d.envelope.target.clone(),
            value: copy.to_vec(),
            truncated_from: truncated_from.map(|n| n as u64),
            reason: d.reason.clone(),
        }
    });
    record.outbox = Outbox {
        offset: outbox_offset,
        effects: out.effects.iter().filter(|e| !matches!(e, Effect::Delay { .. })).cloned().chain(dead).collect(),
    };
}

/// Wrap a request `e` an instance sends in the principal it acts for (replies and the lock
/// protocol's releases travel without one: their parties' checks cover them).
pub(crate) fn run_as(principal: &Principal, e: &mut Envelope) {
    if e.body.core().class().acts_for_sender() && unwrap(&e.body).0.principal.is_none() {
        access::send_as(e, principal);
    }
}

#[cfg(test)]
mod tests;

/// Bytes of the events `record` keeps waiting: for its start or a `wait_for_event` (its inbox),
/// its resume, its ledger's answer, a lock (an entity's queue), or a delay (parked).
pub(crate) fn buffered_bytes(record: &InstanceRecord) -> usize {
    let mut n = record.quota.waiting.as_ref().map_or(0, |w| stored_bytes(&w.events));
    n += record.parked.iter().map(|&(_, bytes)| bytes as usize).sum::<usize>();
    match &record.body {
        Body::Orchestration(h) => {
            n += h.inbox.iter().map(|(name, payload)| name.len() + payload.data.len()).sum::<usize>();
            if let OrchestrationStatus::Suspended { held, .. } = &h.status {
                n += stored_bytes(held);
            }
        }
        Body::Entity(e) => n += stored_bytes(&e.queue),
        Body::Empty => {}
    }
    n
}

/// Bytes the events take as they are stored (encoded), together.
pub(crate) fn stored_bytes<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> usize {
    events.into_iter().map(|e| e.encode().len()).sum()
}
