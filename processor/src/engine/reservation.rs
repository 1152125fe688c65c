//! The creation limits' side of authorization ([`crate::quota`]): an event that creates an
//! instance of a limited type is held, with every event after it, until its user's ledger has
//! counted it; the ledger's answer lets them through (decided again, in order) or refuses the
//! creation.

use std::collections::VecDeque;

use durable_schemas::{Envelope, Event};

use super::{refuse, stored_bytes, unwrap, Collector};
use crate::effect::Effect;
use crate::history::InstanceRecord;
use crate::id::InstanceId;
use crate::quota::{self, Reservation};

/// An event for `target` while its creation waits for the ledger (`record.quota.waiting` is
/// set): the ledger's answer ends the wait — the creation is charged, or refused with the
/// ledger's reason — and puts the held events at the front of `work`, to be decided again
/// before what came after; anything else is held too, within the queue's count and the
/// instance's buffered bytes, or refused.
pub(super) fn while_waiting(
    target: &InstanceId,
    record: &mut InstanceRecord,
    envelope: Envelope,
    out: &mut Collector,
    work: &mut VecDeque<Envelope>,
) {
    let (wrappers, core) = unwrap(&envelope.body);
    let Some(waiting) = &mut record.quota.waiting else { return };
    let ledger = quota::ledger_of(target, &waiting.user).canonical();
    let answer = match core {
        Event::OperationResult { correlation, outcome }
            if *correlation == waiting.correlation && envelope.source.as_deref() == Some(ledger.as_str()) =>
        {
            Some(outcome.clone())
        }
        _ => None,
    };
    match answer {
        Some(outcome) => {
            let Reservation { user, mut events, .. } = record.quota.waiting.take().expect("waiting");
            match outcome {
                Ok(_) => record.quota.charged = Some(user),
                Err(failure) => {
                    let creating = events.pop_front().expect("a reservation holds its creating event");
                    let (wrappers, core) = unwrap(&creating.body);
                    refuse(target, &wrappers, core, creating.clone(), failure.message, out);
                }
            }
            // The held events are decided again, before what came after the answer.
            for e in events.into_iter().rev() {
                work.push_front(e);
            }
        }
        None if waiting.events.len() > out.limits.max_entity_queue => {
            let reason = format!(
                "{target} waits for its creation to be counted and {} events already wait behind it (DURABLE_MAX_ENTITY_QUEUE)",
                out.limits.max_entity_queue
            );
            refuse(target, &wrappers, core, envelope.clone(), reason, out);
        }
        None => {
            // Counted once a step (lazily): a flood of held events costs one pass.
            match out.buffer(|| stored_bytes(&waiting.events), envelope.encode().len()) {
                Ok(()) => record.quota.waiting.as_mut().expect("waiting").events.push_back(envelope),
                Err(why) => {
                    let reason = format!("{target} waits for its creation to be counted: {why}");
                    refuse(target, &wrappers, core, envelope.clone(), reason, out);
                }
            }
        }
    }
}

/// Hold `envelope`, which creates `target` (`record`) for `user` (a limited type), until the user's ledger
/// has counted it: ask the ledger to reserve a place, and keep the event (and every later one)
/// in the reservation.
pub(super) fn reserve(
    target: &InstanceId,
    record: &mut InstanceRecord,
    user: String,
    envelope: Envelope,
    out: &mut Collector,
) {
    let correlation = out.event_id();
    let ledger = quota::ledger_of(target, &user);
    let reserve = Event::EntityOperation {
        operation: quota::RESERVE.into(),
        input: durable_schemas::Payload::json(&record.id).expect("ids serialize"),
    };
    let body =
        Event::ReplyTo { address: record.id.clone(), correlation: correlation.clone(), inner: Box::new(reserve) };
    let mut e = Envelope::new(out.event_id(), ledger.canonical(), out.now, body);
    e.source = Some(record.id.clone());
    out.effects.push(Effect::Emit(e));
    record.quota.waiting = Some(Reservation { correlation, user, events: VecDeque::from([envelope]) });
}
