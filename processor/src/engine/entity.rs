//! Entities: run operations against the stored state, one at a time, in arrival order.

use durable_schemas::{Envelope, Event, Payload};

use super::{guarded, unwrap, Collector, Unwrapped};
use crate::context::{EntityContext, UNKNOWN_OPERATION};
use crate::effect::Effect;
use crate::history::{Body, EntityState, InstanceRecord};
use crate::id::InstanceId;
use crate::registry::Registry;

pub(super) fn step(
    registry: &Registry,
    id: &InstanceId,
    record: &mut InstanceRecord,
    events: Vec<Envelope>,
    out: &mut Collector,
) {
    if matches!(record.body, Body::Empty) {
        record.body = Body::Entity(EntityState::default());
    }
    let Body::Entity(state) = &mut record.body else {
        for envelope in events {
            out.dead(envelope, format!("{id} holds no entity state"));
        }
        return;
    };
    for envelope in events {
        let (wrappers, core) = unwrap(&envelope.body);
        match core {
            Event::EntityOperation { operation, input } => {
                let (operation, input) = (operation.clone(), input.clone());
                run_operation(
                    registry, id, state, &envelope, &wrappers, &operation, &input, out,
                );
            }
            other => {
                let reason = format!("entity {id} cannot handle {}", other.name());
                out.dead(envelope, reason);
            }
        }
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
            let mut ctx = EntityContext::new(
                id.clone(),
                out.now,
                envelope.source.clone(),
                wrappers.principal.clone(),
            );
            match guarded(|| handler.run(state.state.as_ref(), &mut ctx, operation, input)) {
                Ok(Ok((new_state, result))) => {
                    state.state = new_state;
                    for (target, body, fire_at) in ctx.take_outgoing() {
                        let mut e = Envelope::new(out.event_id(), target, out.now, body);
                        e.source = Some(id.canonical());
                        out.effects.push(match fire_at {
                            Some(fire_at) if fire_at > out.now => Effect::Delay {
                                fire_at,
                                envelope: e,
                            },
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
                    out.dead(
                        envelope.clone(),
                        format!("operation {operation:?} panicked: {panic}"),
                    );
                    Err(durable_schemas::Failure::new(
                        "Panic",
                        format!("operation {operation:?} panicked: {panic}"),
                    ))
                }
            }
        }
    };
    if let Some((address, correlation)) = &wrappers.reply_to {
        let body = Event::OperationResult {
            correlation: correlation.clone(),
            outcome,
        };
        let mut e = Envelope::new(out.event_id(), address.clone(), out.now, body);
        e.source = Some(id.canonical());
        out.effects.push(Effect::Emit(e));
    }
}
