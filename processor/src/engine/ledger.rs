//! The ledgers of the creation limits ([`crate::quota`]): Durable's own entity, stepped here
//! rather than by an application handler, and reachable only by the instances it counts.

use durable_schemas::{Envelope, Event, Failure, Payload};

use super::{unwrap, Collector};
use crate::access::{Policy, FORBIDDEN};
use crate::effect::Effect;
use crate::history::{Body, EntityState, InstanceRecord};
use crate::id::InstanceId;
use crate::quota::{self, Ledger, LEDGER, RELEASE, RESERVE};

pub(super) fn step(
    policy: &Policy,
    id: &InstanceId,
    record: &mut InstanceRecord,
    events: Vec<Envelope>,
    out: &mut Collector,
) {
    let Some((kind, name, user)) = quota::ledger_subject(id) else {
        for envelope in events {
            let reason =
                format!("{id} is no ledger of the creation limits (those are entity:{LEDGER}:<kind>:<Type>/<user>)");
            out.dead(envelope, reason);
        }
        return;
    };
    let limit = policy.limits.get(name).copied();
    if matches!(record.body, Body::Empty) {
        record.body = Body::Entity(EntityState::default());
    }
    let Body::Entity(state) = &mut record.body else {
        for envelope in events {
            out.dead(envelope, format!("{id} holds no entity state"));
        }
        return;
    };
    let mut ledger: Ledger = state.state.as_ref().and_then(|s| s.decode().ok()).unwrap_or_default();
    for envelope in events {
        let (wrappers, core) = unwrap(&envelope.body);
        let request = match core {
            Event::EntityOperation { operation, input } => input.decode::<String>().ok().map(|i| (operation, i)),
            _ => None,
        };
        let Some((operation, instance)) = request else {
            let reason = format!("{id} takes only {RESERVE} and {RELEASE} operations naming an instance");
            out.dead(envelope, reason);
            continue;
        };
        let counted = InstanceId::parse(&instance).is_ok_and(|i| i.kind() == kind && i.name() == name);
        if !counted || envelope.source.as_deref() != Some(instance.as_str()) {
            let reason = format!(
                "{operation} of {instance:?} from {:?}: {id} takes requests only from the {} {name} instance they name",
                envelope.source,
                kind.prefix()
            );
            out.dead(envelope, reason);
            continue;
        }
        match (operation.as_str(), &wrappers.reply_to) {
            (RESERVE, Some((address, correlation))) if *address == instance => {
                let outcome = if ledger.reserve(&instance, limit) {
                    Ok(Payload::null())
                } else {
                    Err(Failure::new(
                        FORBIDDEN,
                        format!(
                            "{FORBIDDEN}: {user} has {} live {name} instances, the most one user may have (DURABLE_CREATE_LIMITS); {instance} was not created",
                            ledger.instances.len()
                        ),
                    ))
                };
                let body = Event::OperationResult { correlation: correlation.clone(), outcome };
                let mut e = Envelope::new(out.event_id(), address.clone(), out.now, body);
                e.source = Some(id.canonical());
                out.effects.push(Effect::Emit(e));
            }
            (RELEASE, None) => ledger.release(&instance),
            _ => {
                let reason =
                    format!("{id}: {operation:?} is not {RESERVE} (a call from the instance) or {RELEASE} (a signal)");
                out.dead(envelope, reason);
            }
        }
    }
    state.state = Some(Payload::json(&ledger).expect("a ledger serializes"));
}
