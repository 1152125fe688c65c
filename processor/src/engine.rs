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

mod authorize;
mod entity;
mod execution;
mod finish;
mod ledger;
mod orchestration;
mod reservation;
mod step;
pub use authorize::unwrap_principal;
use authorize::{authorize, refuse, Unwrapped};
pub(crate) use authorize::{run_as, unwrap};
#[cfg(feature = "runtime")]
pub(crate) use finish::purge_refusal;
pub(crate) use finish::{buffered_bytes, stored_bytes};
use finish::{finish, purge, sent_effects};
#[cfg(feature = "runtime")]
pub(crate) use orchestration::rewind_refusal;
use step::Collector;
pub use step::{DeadLetter, Delivery, DropReason, Dropped, StepInput, StepOutput};

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

#[cfg(test)]
mod tests;
