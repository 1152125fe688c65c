//! What a step takes — the deliveries, in log order — and what it gives: the output, collected
//! as the stages go (drops, dead letters, effects, whether the record changed).

use super::*;

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
pub(super) struct Collector {
    pub(super) effects: Vec<Effect>,
    pub(super) dead_letters: Vec<DeadLetter>,
    pub(super) dropped: Vec<Dropped>,
    /// Prefix for ids of events not tied to a slot: `<instance>@<new version>`.
    pub(super) id_prefix: String,
    /// Counter for those ids.
    pub(super) next_id: u32,
    pub(super) now: i64,
    pub(super) limits: Limits,
    /// Set by a `Purge` that emptied the record; a later event of the step may fill it again.
    pub(super) purged: bool,
    /// Set when the record changed though the step may show nothing for it (a resume whose kept
    /// events were all dropped): it is committed even if every delivery looks dropped.
    pub(super) altered: bool,
    /// The target type's retention period, if any.
    pub(super) retention: Option<i64>,
    /// Bytes of events the instance keeps waiting, counted at the first buffering of the step
    /// ([`Collector::buffer`]) and raised by each one after.
    pub(super) buffered: Option<usize>,
}

impl Collector {
    pub(super) fn drop(&mut self, envelope: &Envelope, reason: DropReason) {
        self.dropped.push(Dropped { event_id: envelope.id.clone(), reason });
    }

    pub(super) fn dead(&mut self, envelope: Envelope, reason: impl Into<String>) {
        self.dead_letters.push(DeadLetter { envelope, reason: reason.into() });
    }

    /// Make room for `more` bytes of events the instance keeps waiting, `held` counting what it
    /// keeps already (asked once a step); or why there is none (see
    /// [`Limits::max_buffered_bytes`]).
    pub(super) fn buffer(&mut self, held: impl FnOnce() -> usize, more: usize) -> Result<(), String> {
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
    pub(super) fn buffer_counted(&self) -> bool {
        self.buffered.is_some()
    }

    /// A fresh deterministic event id.
    pub(super) fn event_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}.{}", self.id_prefix, self.next_id)
    }
}
