//! A test harness for application code: build instances, feed events in any order, duplicate
//! or drop them, and assert on state and effects — no Kafka, no Redis, no async runtime.
//!
//! The harness keeps every instance's record in memory and collects what steps emit into a
//! *pending* list (and delayed events into a timer list). A test either takes pending events and
//! delivers them itself, in whatever order, as often as it likes, or calls [`Harness::run`] to
//! deliver everything in order until nothing is left.
//!
//! ```
//! use durable_processor::{Harness, Registry, OrchestrationContext};
//! use durable_schemas::Failure;
//!
//! let registry = Registry::new()
//!     .activity("Greet", |name: String| async move { Ok::<_, Failure>(format!("Hello {name}")) })
//!     .orchestration("Greeter", |ctx: OrchestrationContext, names: Vec<String>| async move {
//!         let mut out = Vec::new();
//!         for name in names {
//!             out.push(ctx.call_activity::<_, String>("Greet", name).await?);
//!         }
//!         Ok::<_, Failure>(out)
//!     });
//! let mut h = Harness::new(registry);
//! let start = h.start("Greeter", "g1", vec!["Ada", "Bob"]);
//! let id = start.target.clone();
//! h.deliver(start);
//! // The first activity was scheduled; deliver its request twice: the result is recorded once.
//! let request = h.take_pending().remove(0);
//! let reply = h.run_activity(request);
//! h.deliver(reply.clone());
//! h.deliver(reply);
//! h.run();
//! assert_eq!(h.output::<Vec<String>>(&id).unwrap(), ["Hello Ada", "Hello Bob"]);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use durable_schemas::{Envelope, Event, Failure, Payload};
use serde::{de::DeserializeOwned, Serialize};

use crate::context::ActivityRequest;
use crate::effect::Effect;
use crate::engine::{DeadLetter, Delivery, Engine, StepInput, StepOutput};
use crate::history::{InstanceRecord, OrchestrationStatus};
use crate::id::{InstanceId, Kind};
use crate::registry::Registry;

/// Drive a future to completion on this thread (for activities in tests).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// In-memory instances plus the events between them.
pub struct Harness {
    engine: Engine,
    records: BTreeMap<String, InstanceRecord>,
    now: i64,
    pending: VecDeque<Envelope>,
    timers: Vec<(i64, Envelope)>,
    dead_letters: Vec<DeadLetter>,
    client_events: u64,
}

impl Harness {
    /// A harness running `registry`'s handlers, with the clock at 2023-11-14T22:13:20Z.
    pub fn new(registry: Registry) -> Self {
        Self {
            engine: Engine::new(registry),
            records: BTreeMap::new(),
            now: 1_700_000_000_000,
            pending: VecDeque::new(),
            timers: Vec::new(),
            dead_letters: Vec::new(),
            client_events: 0,
        }
    }

    /// This harness with other engine [`Limits`](crate::engine::Limits) (to test what hitting one
    /// does).
    pub fn with_limits(mut self, limits: crate::engine::Limits) -> Self {
        self.engine = self.engine.with_limits(limits);
        self
    }

    /// This harness with another authorization [`Policy`](crate::access::Policy).
    pub fn with_policy(mut self, policy: crate::access::Policy) -> Self {
        self.engine = self.engine.with_policy(policy);
        self
    }

    /// `envelope` sent on behalf of `principal` (as the management API sends what a token proves).
    pub fn as_principal(mut envelope: Envelope, principal: &crate::access::Principal) -> Envelope {
        crate::access::send_as(&mut envelope, principal);
        envelope
    }

    /// A client's sharing event for `target` (not delivered yet).
    pub fn change_access(&mut self, target: &str, change: durable_schemas::AccessChange) -> Envelope {
        self.client_event(target.to_owned(), Event::Access(change))
    }

    /// The logical clock (ms since the Unix epoch).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Move the clock forward.
    pub fn advance(&mut self, ms: i64) {
        self.now += ms;
    }

    fn client_event(&mut self, target: String, body: Event) -> Envelope {
        self.client_events += 1;
        let mut e = Envelope::new(format!("client-{}", self.client_events), target, self.now, body);
        e.source = Some("client:test".into());
        e
    }

    /// A client's start of orchestration `name` with `key` (not delivered yet).
    pub fn start<I: Serialize>(&mut self, name: &str, key: &str, input: I) -> Envelope {
        let target = InstanceId::orchestration(name, key).canonical();
        self.client_event(target, Event::StartOrchestration { input: Payload::json(&input).expect("input serializes") })
    }

    /// A client's signal to an entity (not delivered yet).
    pub fn signal<I: Serialize>(&mut self, entity: &InstanceId, op: &str, input: I) -> Envelope {
        let input = Payload::json(&input).expect("input serializes");
        self.client_event(entity.canonical(), Event::EntityOperation { operation: op.into(), input })
    }

    /// A client's external event for an orchestration (not delivered yet).
    pub fn raise<I: Serialize>(&mut self, orchestration: &str, name: &str, payload: I) -> Envelope {
        let payload = Payload::json(&payload).expect("payload serializes");
        self.client_event(orchestration.to_owned(), Event::RaiseEvent { name: name.into(), payload })
    }

    /// A client's event `body` for `target` (not delivered yet).
    pub fn client(&mut self, target: &str, body: Event) -> Envelope {
        self.client_event(target.to_owned(), body)
    }

    /// This harness with a [`Retention`](crate::retention::Retention).
    pub fn with_retention(mut self, retention: crate::retention::Retention) -> Self {
        self.engine = self.engine.with_retention(retention);
        self
    }

    /// A client's terminate request (not delivered yet).
    pub fn terminate(&mut self, orchestration: &str, reason: &str) -> Envelope {
        self.client_event(orchestration.to_owned(), Event::Terminate { reason: reason.into() })
    }

    /// Deliver one event to its target instance; what it emits becomes pending.
    pub fn deliver(&mut self, envelope: Envelope) -> StepOutput {
        self.deliver_batch(vec![envelope])
    }

    /// Deliver several events for the same instance as one step.
    pub fn deliver_batch(&mut self, envelopes: Vec<Envelope>) -> StepOutput {
        let deliveries =
            envelopes.into_iter().map(|envelope| Delivery { envelope, offset: None, sealed: false }).collect();
        self.step(deliveries)
    }

    /// Deliver events with explicit Kafka offsets (to test redelivery).
    pub fn deliver_at_offsets(&mut self, deliveries: Vec<(Envelope, i64)>) -> StepOutput {
        self.step(
            deliveries
                .into_iter()
                .map(|(envelope, offset)| Delivery { envelope, offset: Some(offset), sealed: false })
                .collect(),
        )
    }

    /// Deliveries count as unsealed: nothing is captured and sent again here, and the Harness's
    /// clock may jump further than the freshness of sealed events
    /// ([`Limits::max_sealed_age_ms`](crate::engine::Limits::max_sealed_age_ms)).
    fn step(&mut self, deliveries: Vec<Delivery>) -> StepOutput {
        let target = deliveries.first().expect("at least one delivery").envelope.target.clone();
        let id = InstanceId::parse(&target).unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(
            id.kind() != Kind::Activity,
            "{target} is an activity invocation: use run_activity or reply_to_activity"
        );
        let record = self.records.get(&target).cloned();
        let output =
            self.engine.step(&id, record, StepInput { deliveries, now: self.now, partition: None, trigger: None });
        if output.changed {
            self.records.insert(target, output.record.clone());
        }
        for effect in &output.effects {
            match effect {
                Effect::Emit(e) => self.pending.push_back(e.clone()),
                Effect::Delay { fire_at, envelope } => self.timers.push((*fire_at, envelope.clone())),
                Effect::StateChanged(_) | Effect::DeadLetter { .. } => {}
            }
        }
        self.dead_letters.extend(output.dead_letters.iter().cloned());
        output
    }

    /// Run the activity a `ScheduleActivity` request asks for; return its reply (also pending).
    pub fn run_activity(&mut self, request: Envelope) -> Envelope {
        let req = ActivityRequest::parse(&request).unwrap_or_else(|e| panic!("{e}"));
        let future = self
            .engine
            .registry()
            .run_activity(req.id.name(), req.context(), req.input.clone())
            .unwrap_or_else(|| panic!("no activity named {:?} is registered", req.id.name()));
        let result = block_on(future);
        let reply = req.reply_bounded(result, self.now, self.engine.limits().max_state_bytes);
        self.pending.push_back(reply.clone());
        reply
    }

    /// The reply an activity request would get with `result`, without running anything.
    pub fn reply_to_activity(&self, request: &Envelope, result: Result<Payload, Failure>) -> Envelope {
        ActivityRequest::parse(request).unwrap_or_else(|e| panic!("{e}")).reply(result, self.now)
    }

    /// The pending (emitted, undelivered) events, in emission order.
    pub fn pending(&self) -> &VecDeque<Envelope> {
        &self.pending
    }

    /// Deliver (or, for an activity request, run) the pending event at `index`.
    pub fn deliver_pending(&mut self, index: usize) -> Option<StepOutput> {
        let e = self.pending.remove(index)?;
        if InstanceId::parse(&e.target).is_ok_and(|id| id.kind() == Kind::Activity) {
            self.run_activity(e);
            None
        } else {
            Some(self.deliver(e))
        }
    }

    /// Take every pending (emitted, undelivered) event, in emission order.
    pub fn take_pending(&mut self) -> Vec<Envelope> {
        self.pending.drain(..).collect()
    }

    /// Take every parked timer: `(fire_at, event)`, in parking order.
    pub fn take_timers(&mut self) -> Vec<(i64, Envelope)> {
        std::mem::take(&mut self.timers)
    }

    /// Fire a timer: move the clock to its time if needed, and deliver it.
    pub fn fire(&mut self, (fire_at, envelope): (i64, Envelope)) -> StepOutput {
        self.now = self.now.max(fire_at);
        self.deliver(envelope)
    }

    /// Deliver pending events in order (running activities), firing timers in time order when
    /// nothing else is left, until there is nothing to do. Panics after 100,000 deliveries.
    pub fn run(&mut self) {
        self.run_until(i64::MAX)
    }

    /// Like [`run`](Self::run), but fire only timers due at or before `time` (the clock moves
    /// to each timer it fires, never past `time`).
    pub fn run_until(&mut self, time: i64) {
        for _ in 0..100_000 {
            if let Some(e) = self.pending.pop_front() {
                if InstanceId::parse(&e.target).is_ok_and(|id| id.kind() == Kind::Activity) {
                    self.run_activity(e);
                } else {
                    self.deliver(e);
                }
            } else if let Some(i) =
                (0..self.timers.len()).filter(|&i| self.timers[i].0 <= time).min_by_key(|&i| self.timers[i].0)
            {
                let timer = self.timers.remove(i);
                self.fire(timer);
            } else {
                return;
            }
        }
        panic!("still busy after 100,000 deliveries: a loop?");
    }

    /// The stored record of an instance.
    pub fn record(&self, id: &str) -> Option<&InstanceRecord> {
        self.records.get(id)
    }

    /// An orchestration's status.
    pub fn status(&self, id: &str) -> Option<&OrchestrationStatus> {
        self.record(id).and_then(|r| r.orchestration()).map(|h| &h.status)
    }

    /// A completed orchestration's output, decoded.
    pub fn output<T: DeserializeOwned>(&self, id: &str) -> Option<T> {
        match self.status(id)? {
            OrchestrationStatus::Completed { output } => output.decode().ok(),
            _ => None,
        }
    }

    /// An entity's state, decoded.
    pub fn entity_state<T: DeserializeOwned>(&self, id: &InstanceId) -> Option<T> {
        self.record(&id.canonical())?.entity()?.state.as_ref()?.decode().ok()
    }

    /// Every dead letter so far.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }
}
