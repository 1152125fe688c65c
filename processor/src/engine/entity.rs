//! Entities: run operations against the stored state, one at a time, in arrival order.

use durable_schemas::{Envelope, Event, Payload};

use super::{guarded, run_as, unwrap, Collector, Unwrapped};
use crate::context::activity::{bounded_result, RESULT_TOO_LARGE};
use crate::context::{EntityContext, UNKNOWN_OPERATION};
use crate::effect::Effect;
use crate::history::{Body, EntityLock, EntityState, InstanceRecord};
use crate::id::{InstanceId, Kind};
use crate::registry::Registry;

pub(super) fn step(
    registry: &Registry,
    id: &InstanceId,
    record: &mut InstanceRecord,
    events: Vec<Envelope>,
    out: &mut Collector,
) {
    // The body is made by the first event that passed authorization and is not a purge (a
    // refused first event creates nothing: an ownerless body would keep its rightful creator out).
    for envelope in events {
        if matches!(unwrap(&envelope.body).1, Event::Purge { .. }) {
            super::purge(id, record, envelope, out);
            continue;
        }
        if matches!(record.body, Body::Empty) {
            record.body = Body::Entity(EntityState::default());
        }
        let Body::Entity(state) = &mut record.body else {
            out.dead(envelope, format!("{id} holds no entity state"));
            continue;
        };
        handle(registry, id, state, envelope, out);
    }
}

/// Apply one event to an entity: operations run unless another owner holds the lock (then they
/// queue), lock requests take the lock or queue, releases free it and serve the queue.
fn handle(registry: &Registry, id: &InstanceId, state: &mut EntityState, envelope: Envelope, out: &mut Collector) {
    match unwrap(&envelope.body).1 {
        Event::EntityOperation { .. } => operation(registry, id, state, envelope, out),
        Event::LockRequest { .. } => lock_request(id, state, envelope, out),
        Event::LockRelease { .. } => lock_release(registry, id, state, envelope, out),
        other => {
            let reason = format!("entity {id} cannot handle {}", other.name());
            out.dead(envelope, reason);
        }
    }
}

/// An operation: run it, unless another owner holds the lock (then it queues, within the
/// queue's limits; past them a call is answered `QueueFull`).
fn operation(registry: &Registry, id: &InstanceId, state: &mut EntityState, envelope: Envelope, out: &mut Collector) {
    let (wrappers, core) = unwrap(&envelope.body);
    let Event::EntityOperation { operation, input } = core.clone() else { unreachable!("an operation") };
    if let Some((owner, _)) = &wrappers.lock {
        if envelope.source.as_ref() != Some(owner) {
            let reason = format!(
                "operation {operation:?} carries the lock of {owner} but comes from {:?}: only the lock's owner sends inside its critical section",
                envelope.source
            );
            return out.dead(envelope, reason);
        }
    }
    let sender = wrappers.lock.as_ref().map(|(owner, _)| owner.as_str());
    if state.lock.as_ref().is_some_and(|l| Some(l.owner.as_str()) != sender) {
        let limit = out.limits.max_entity_queue;
        let queued = || super::stored_bytes(&state.queue);
        let full = match state.queue.len() >= limit {
            true => {
                Err(format!("{id} is locked and {limit} operations already wait for it (DURABLE_MAX_ENTITY_QUEUE)"))
            }
            false => out.buffer(queued, envelope.encode().len()).map_err(|why| format!("{id} is locked: {why}")),
        };
        if let Err(message) = full {
            let failure = durable_schemas::Failure::new("QueueFull", message);
            out.dead(envelope.clone(), failure.message.clone());
            return answer(id, &wrappers, Err(failure), out);
        }
        state.queue.push_back(envelope);
    } else {
        run_operation(registry, id, state, &envelope, &wrappers, &operation, &input, out);
    }
}

/// A lock request, passed along a lock set's chain: take the lock and ask the next participant
/// (the last one grants the owner), or queue while another owner holds it.
fn lock_request(id: &InstanceId, state: &mut EntityState, envelope: Envelope, out: &mut Collector) {
    let (wrappers, core) = unwrap(&envelope.body);
    let Event::LockRequest { owner, correlation, participants, position } = core.clone() else {
        unreachable!("a lock request")
    };
    let me = id.canonical();
    if participants.get(position.max(0) as usize) != Some(&me) {
        let reason = format!("lock request for {me} names participant {position} of {participants:?}");
        return out.dead(envelope, reason);
    }
    // The chain: the owner asks the first entity, each entity the next one.
    let asker = if position == 0 { Some(&owner) } else { participants.get(position as usize - 1) };
    let owner_is_orchestration = InstanceId::parse(&owner).is_ok_and(|o| o.kind() == Kind::Orchestration);
    if !owner_is_orchestration || envelope.source.is_none() || envelope.source.as_ref() != asker {
        let reason = format!(
            "lock request from {:?} for owner {owner} at position {position}: only the owner (an orchestration) asks the first entity, and each entity the next",
            envelope.source
        );
        return out.dead(envelope, reason);
    }
    match &state.lock {
        Some(l) if l.owner == owner && l.correlation == correlation => {} // already ours
        Some(_) => {
            let queued = || super::stored_bytes(&state.queue);
            match out.buffer(queued, envelope.encode().len()) {
                Ok(()) => state.queue.push_back(envelope),
                Err(why) => {
                    let reason = format!("{me} is locked: {why}");
                    super::refuse(id, &wrappers, core, envelope.clone(), reason, out);
                }
            }
        }
        None => {
            state.lock = Some(EntityLock { owner: owner.clone(), correlation: correlation.clone() });
            let next = position as usize + 1;
            let (target, body) = match participants.get(next) {
                Some(p) => {
                    let target = p.clone();
                    (target, Event::LockRequest { owner, correlation, participants, position: next as i32 })
                }
                None => (owner, Event::LockGranted { correlation, participants }),
            };
            let mut e = Envelope::new(out.event_id(), target, out.now, body);
            e.source = Some(me);
            // The next participant decides the same principal's request.
            if let Some(principal) = &wrappers.principal {
                run_as(principal, &mut e);
            }
            out.effects.push(Effect::Emit(e));
        }
    }
}

/// A lock release from its owner: free the lock and serve the queue (or withdraw a request that
/// has not arrived yet).
fn lock_release(
    registry: &Registry,
    id: &InstanceId,
    state: &mut EntityState,
    envelope: Envelope,
    out: &mut Collector,
) {
    let Event::LockRelease { owner, correlation } = unwrap(&envelope.body).1.clone() else {
        unreachable!("a lock release")
    };
    if envelope.source.as_ref() != Some(&owner) {
        let reason = format!("lock release for {owner} from {:?}: only the owner releases", envelope.source);
        return out.dead(envelope, reason);
    }
    if state.lock.as_ref().is_some_and(|l| l.owner == owner && l.correlation == correlation) {
        state.lock = None;
        let queued = std::mem::take(&mut state.queue);
        for envelope in queued {
            handle(registry, id, state, envelope, out);
        }
    } else {
        // Released before the request got here: withdraw it from the queue.
        state.queue.retain(|queued| {
            !matches!(unwrap(&queued.body).1, Event::LockRequest { owner: o, correlation: c, .. } if *o == owner && *c == correlation)
        });
    }
}

/// Run one operation; reply to a call; dead-letter what cannot run.
#[allow(clippy::too_many_arguments)]
fn run_operation(
    registry: &Registry,
    id: &InstanceId,
    state: &mut EntityState,
    envelope: &Envelope,
    wrappers: &Unwrapped,
    operation: &str,
    input: &Payload,
    out: &mut Collector,
) {
    let outcome = match registry.entity_handler(id.name()) {
        None => {
            let failure = durable_schemas::Failure::new(
                "NotRegistered",
                format!("no entity named {:?} is registered", id.name()),
            );
            out.dead(envelope.clone(), failure.message.clone());
            Err(failure)
        }
        Some(handler) => {
            let principal = wrappers.principal.clone().map(|p| (p.user, p.roles));
            let mut ctx = EntityContext::new(id.clone(), out.now, envelope.source.clone(), principal);
            match guarded(|| handler.run(state.state.as_ref(), &mut ctx, operation, input)) {
                Ok(Ok((new_state, _)))
                    if new_state.as_ref().is_some_and(|s| s.data.len() > out.limits.max_state_bytes) =>
                {
                    let size = new_state.as_ref().map_or(0, |s| s.data.len());
                    let message = format!(
                        "operation {operation:?} would make the state of {id} {size} bytes, over the limit of {} (DURABLE_MAX_STATE_BYTES); the state is unchanged",
                        out.limits.max_state_bytes
                    );
                    out.dead(envelope.clone(), message.clone());
                    Err(durable_schemas::Failure::new("StateTooLarge", message))
                }
                // A call's result that cannot travel back: refused like a state too large, so
                // that the caller hears of it and nothing changed.
                Ok(Ok((_, result)))
                    if wrappers.reply_to.is_some() && result.data.len() > out.limits.max_state_bytes =>
                {
                    let what = format!("operation {operation:?} of {id}");
                    let failure =
                        bounded_result(Ok(result), out.limits.max_state_bytes, &what).expect_err("over the limit");
                    let message = format!("{}; the state is unchanged", failure.message);
                    out.dead(envelope.clone(), message.clone());
                    Err(durable_schemas::Failure::new(RESULT_TOO_LARGE, message))
                }
                Ok(Ok((new_state, result))) => {
                    state.state = new_state;
                    // An operation acts for its caller: what it sends carries the caller's principal.
                    for (target, body, fire_at) in ctx.take_outgoing() {
                        let mut e = Envelope::new(out.event_id(), target, out.now, body);
                        e.source = Some(id.canonical());
                        if let Some(caller) = &wrappers.principal {
                            run_as(caller, &mut e);
                        }
                        out.effects.push(match fire_at {
                            Some(fire_at) if fire_at > out.now => Effect::Delay { fire_at, envelope: e },
                            _ => Effect::Emit(e),
                        });
                    }
                    Ok(result)
                }
                Ok(Err(failure)) => {
                    if failure.kind == UNKNOWN_OPERATION {
                        out.dead(envelope.clone(), failure.message.clone());
                    }
                    Err(failure)
                }
                Err(panic) => {
                    out.dead(envelope.clone(), format!("operation {operation:?} panicked: {panic}"));
                    Err(durable_schemas::Failure::new("Panic", format!("operation {operation:?} panicked: {panic}")))
                }
            }
        }
    };
    answer(id, wrappers, outcome, out);
}

/// Answer a call (an operation inside `ReplyTo`) with `outcome`; nothing for a signal.
fn answer(
    id: &InstanceId,
    wrappers: &Unwrapped,
    outcome: Result<Payload, durable_schemas::Failure>,
    out: &mut Collector,
) {
    if let Some((address, correlation)) = &wrappers.reply_to {
        let body = Event::OperationResult { correlation: correlation.clone(), outcome };
        let mut e = Envelope::new(out.event_id(), address.clone(), out.now, body);
        e.source = Some(id.canonical());
        out.effects.push(Effect::Emit(e));
    }
}
