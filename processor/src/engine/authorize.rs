//! The stages before an event applies: unwrap its wrappers (the principal it acts for, its
//! lock and reply-to), then decide whether its sender may do what it asks ([`crate::access`]);
//! a creation under a limit waits for its ledger ([`super::reservation`]). What an instance
//! sends goes out wrapped in the principal it acts for ([`run_as`]).

use super::*;

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

/// The authorization step: every event that asks something of `target` is decided by
/// [`access::decide`] for the principal it carries; a refused one is dead-lettered (a refused
/// call, sub-orchestration start or lock request is answered with a [`FORBIDDEN`] failure) and
/// changes nothing else. The first principal to create the instance becomes its owner. Sharing
/// events are applied to the record's access here. An event that creates an instance of a
/// limited type waits, with every later one, for its user's ledger ([`crate::quota`]). Returns
/// the events that pass inward.
pub(super) fn authorize(
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

/// Dead-letter a refused event and answer whoever waits for it with a [`FORBIDDEN`] failure.
pub(super) fn refuse(
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

/// Wrap a request `e` an instance sends in the principal it acts for (replies and the lock
/// protocol's releases travel without one: their parties' checks cover them).
pub(crate) fn run_as(principal: &Principal, e: &mut Envelope) {
    if e.body.core().class().acts_for_sender() && unwrap(&e.body).0.principal.is_none() {
        access::send_as(e, principal);
    }
}
