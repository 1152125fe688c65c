//! The trust boundary: what an event may do when Durable did not write it. Pure.
//!
//! Anyone who can write to `<prefix>.events` is an input source, but only Durable's own
//! processors may make the protocol's fields count. A processor seals every record it produces
//! to the events topic ([`durable_schemas::contract::seal`]); the partition core receives each
//! record with whether its seal verified ([`crate::partition::Record::sealed`]) and passes an
//! unsealed one through [`admit_outside`] before anything else reads it:
//!
//! | field or event | from an outside producer |
//! |---|---|
//! | `StartOrchestration`, `RaiseEvent`, `EntityOperation`, `Terminate`, `Suspend`, `Resume`, `Purge`, `Rewind`, sharing events | applied, as the ingress principal |
//! | `WithDelay` around one of those | applied when due |
//! | `origin` | ignored: the event is deduplicated by its id ([`crate::history`]) |
//! | `source` naming an instance (`orch:…`, `entity:…`, `activity:…`) | dead letter |
//! | replies (`ActivityCompleted`, `OperationResult`, `TimerFired`, `LockGranted` …) | dead letter |
//! | `LockRequest`, `LockRelease`, `ScheduleActivity` | dead letter |
//! | `ReplyTo`, `WithLock`, `WithPrincipal` wrappers | dead letter: a principal is never believed from outside |
//!
//! Inside the boundary the engine checks the protocol's parties as well (a forged message that
//! got a seal through a bug still cannot complete someone else's slot): a reply counts only
//! from the instance its slot commanded, a lock request only from its owner or the participant
//! before it in the chain, a release only from its owner, an operation carrying `WithLock` only
//! from that lock's owner.

use durable_schemas::{Envelope, Event};

use crate::access::{send_as, Principal};
use crate::id::InstanceId;

/// Check an event that arrived without a valid seal: `Ok` (its `origin` cleared, and its body
/// wrapped in the principal the deployment configured for outside producers, if any: see
/// [`crate::access::Policy::ingress`]) if an outside producer may send it, or why not.
pub fn admit_outside(envelope: &mut Envelope, ingress: Option<&Principal>) -> Result<(), String> {
    if let Some(source) = &envelope.source {
        if InstanceId::parse(source).is_ok() {
            return Err(format!(
                "an unsealed event claims to come from the instance {source}: only Durable's processors \
                 send as an instance (outside producers use a client name as source; if a processor \
                 sent it, every processor needs the same DURABLE_SECRET)"
            ));
        }
    }
    let mut event = &envelope.body;
    loop {
        match event {
            Event::WithDelay { inner, .. } => event = inner,
            allowed if allowed.class().from_outside() => break,
            other => {
                return Err(format!(
                    "{} is part of Durable's protocol and counts only when a processor sealed it; \
                     outside producers may send StartOrchestration, RaiseEvent, EntityOperation, \
                     Terminate, Suspend, Resume, Purge, Rewind and the sharing events, each optionally inside WithDelay (if a \
                     processor sent it, every processor needs the same DURABLE_SECRET)",
                    other.name()
                ))
            }
        }
    }
    envelope.origin = None;
    if let Some(principal) = ingress {
        send_as(envelope, principal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use durable_schemas::{Origin, Payload};

    use super::*;

    fn outside(body: Event) -> Envelope {
        let mut e = Envelope::new("x", "entity:Counter:c", 0, body);
        e.source = Some("client:shop".into());
        e
    }

    fn op() -> Event {
        Event::EntityOperation { operation: "add".into(), input: Payload::null() }
    }

    #[test]
    fn outside_producers_may_start_raise_signal_terminate_and_delay_those() {
        let allowed = [
            Event::StartOrchestration { input: Payload::null() },
            Event::RaiseEvent { name: "go".into(), payload: Payload::null() },
            op(),
            Event::Terminate { reason: "r".into() },
            Event::Access(durable_schemas::AccessChange::RevokeUser { user: "bob".into() }),
            Event::WithDelay { fire_at: 5, inner: Box::new(Event::WithDelay { fire_at: 6, inner: Box::new(op()) }) },
        ];
        for body in allowed {
            let mut e = outside(body);
            e.origin = Some(Origin { stream: "p5".into(), seq: i64::MAX });
            assert_eq!(admit_outside(&mut e, None), Ok(()));
            assert_eq!(e.origin, None, "an outside origin never counts");
        }
    }

    #[test]
    fn protocol_events_wrappers_and_instance_senders_are_refused() {
        let refused = [
            Event::ActivityCompleted { correlation: "0.0".into(), result: Payload::null() },
            Event::TimerFired { correlation: "0.0".into() },
            Event::LockRequest {
                owner: "orch:O:1".into(),
                correlation: "0.0".into(),
                participants: vec![],
                position: 0,
            },
            Event::LockRelease { owner: "orch:O:1".into(), correlation: "0.0".into() },
            Event::LockGranted { correlation: "0.0".into(), participants: vec![] },
            Event::ScheduleActivity { input: Payload::null(), attempt: 1, timeout_ms: None },
            Event::ReplyTo { address: "orch:O:1".into(), correlation: "0.3".into(), inner: Box::new(op()) },
            Event::WithLock { owner: "orch:O:1".into(), participants: vec![], inner: Box::new(op()) },
            Event::WithPrincipal { user: "root".into(), roles: vec![], inner: Box::new(op()) },
            Event::WithDelay {
                fire_at: 1,
                inner: Box::new(Event::OrchestrationCompleted { correlation: "0.1".into(), output: Payload::null() }),
            },
        ];
        for body in refused {
            let name = body.name();
            let reason = admit_outside(&mut outside(body), None).unwrap_err();
            assert!(reason.contains("counts only when a processor sealed it"), "{name}: {reason}");
        }
        let mut e = outside(op());
        e.source = Some("orch:Admin:1".into());
        assert!(admit_outside(&mut e, None).unwrap_err().contains("claims to come from the instance orch:Admin:1"));
    }

    #[test]
    fn outside_events_act_as_the_ingress_principal_and_a_forged_one_is_refused() {
        let kafka = Principal::new("kafka-ingress", ["producer"]);
        let mut e = outside(Event::WithDelay { fire_at: 5, inner: Box::new(op()) });
        admit_outside(&mut e, Some(&kafka)).unwrap();
        let Event::WithDelay { inner, .. } = &e.body else { panic!("the delay stays outermost: {:?}", e.body) };
        assert!(matches!(inner.as_ref(), Event::WithPrincipal { user, .. } if user == "kafka-ingress"));
        let forged = Event::WithPrincipal { user: "root".into(), roles: vec!["admin".into()], inner: Box::new(op()) };
        let mut e = outside(Event::WithDelay { fire_at: 5, inner: Box::new(forged) });
        let reason = admit_outside(&mut e, Some(&kafka)).unwrap_err();
        assert!(reason.starts_with("WithPrincipal is part of Durable's protocol"), "{reason}");
    }
}
