//! The stages after an event applied: what the step sent (effects and their sizes), purges,
//! and finishing the record — its version, retention timer, state change, output stamps and
//! outbox.

use super::*;

/// Apply a `Purge` to `target`: a finished orchestration or an idle entity becomes an empty
/// record (its dedup marks stay, so late copies of what it applied are still recognised; the
/// store lets an empty record expire), which the step publishes as a tombstone. A retention
/// purge ([`retention::REASON`]) of an orchestration applies only if its current generation
/// started at least the retention period ago (it was not restarted since the timer was set).
/// Anything else is dead-lettered with why.
pub(super) fn purge(target: &InstanceId, record: &mut InstanceRecord, envelope: Envelope, out: &mut Collector) {
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

/// Stage 3, what the step sends (its effects from `before`): nothing addressed to a
/// creation-limit ledger (they are Durable's own), an orchestration's requests in the principal
/// it runs as; and a charged instance that is no longer live gives its place back.
pub(super) fn sent_effects(target: &InstanceId, record: &mut InstanceRecord, before: usize, out: &mut Collector) {
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
pub(super) fn finish(
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
