//! [`OrchestrationContext`]: what an orchestration's code calls.
//!
//! Every call that waits for the outside world takes the next *slot* number and returns a future
//! that is ready only when the engine delivers that slot's completion. On replay the engine
//! delivers the recorded completions in their original order; new commands become effects.

use atomic_refcell::AtomicRefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use durable_schemas::{Envelope, Event, Failure, Payload};
use serde::{de::DeserializeOwned, Serialize};

use super::combinators::{mark_ready, Either};
use super::retry::{ActivityOptions, RetryPolicy};
use crate::effect::Effect;
use crate::history::{fnv64, Command, CommandKind, Completion};
use crate::id::{InstanceId, Kind};

/// The failure kind of a replay that diverged from its history.
pub const NONDETERMINISM: &str = "Nondeterminism";

/// State shared between the context handle, its futures and the engine, for one step.
pub(crate) struct Shared {
    /// This orchestration.
    pub id: InstanceId,
    /// `id` in canonical form.
    pub id_str: String,
    /// Current generation (part of every correlation).
    pub generation: u32,
    /// Commands recorded in history, then the new ones appended in live mode.
    pub commands: Vec<Command>,
    /// Next slot to hand out.
    pub next_slot: u32,
    /// Delivered completions: slot → (completion, position in the log).
    pub delivered: HashMap<u32, (Completion, usize)>,
    /// Slots whose future was dropped before completion.
    pub abandoned: BTreeSet<u32>,
    /// Issued `wait_for_event` slots: slot → event name.
    pub waits: BTreeMap<u32, String>,
    /// Whether the code is re-running recorded history.
    pub replaying: bool,
    /// Replay-safe time.
    pub now: i64,
    /// Effects of commands issued in live mode.
    pub effects: Vec<Effect>,
    /// Set once the code diverged from history; nothing completes after that.
    pub error: Option<Failure>,
    /// Set by `continue_as_new`.
    pub continue_as_new: Option<Payload>,
    /// Set by `set_custom_status`: `Some(new value)`.
    pub custom_status: Option<Option<Payload>>,
    /// Counter for replay-safe random numbers.
    pub random_calls: u64,
    /// The sub-orchestration each `CallSubOrchestration` slot started (recorded on replay too):
    /// what a terminate terminates with it.
    pub children: BTreeMap<u32, String>,
    /// Recorded slots whose command is sent again when the code reaches it on replay (a
    /// rewind's activity calls).
    pub reissue: BTreeSet<u32>,
    /// Lock set held or requested: (slot of the request, sorted canonical participant ids).
    pub lock: Option<(u32, Vec<String>)>,
    /// Most new commands this execution may issue ([`crate::engine::Limits::max_fan_out`]).
    pub max_new_commands: usize,
    /// New commands issued so far by this execution.
    pub new_commands: usize,
}

impl Shared {
    pub(crate) fn new(id: InstanceId, generation: u32, commands: Vec<Command>, now: i64) -> Self {
        Self {
            id_str: id.canonical(),
            id,
            generation,
            commands,
            next_slot: 0,
            delivered: HashMap::new(),
            abandoned: BTreeSet::new(),
            waits: BTreeMap::new(),
            replaying: true,
            now,
            effects: Vec::new(),
            error: None,
            continue_as_new: None,
            custom_status: None,
            random_calls: 0,
            children: BTreeMap::new(),
            reissue: BTreeSet::new(),
            lock: None,
            max_new_commands: usize::MAX,
            new_commands: 0,
        }
    }

    pub(crate) fn correlation(&self, slot: u32) -> String {
        format!("{}.{}", self.generation, slot)
    }

    fn event_id(&self, slot: u32) -> String {
        format!("{}/{}/{}", self.id_str, self.generation, slot)
    }

    fn envelope(&self, slot: u32, target: String, body: Event) -> Envelope {
        let mut e = Envelope::new(self.event_id(slot), target, self.now, body);
        e.source = Some(self.id_str.clone());
        e
    }

    fn reply_to(&self, slot: u32, inner: Event) -> Event {
        Event::ReplyTo { address: self.id_str.clone(), correlation: self.correlation(slot), inner: Box::new(inner) }
    }

    /// Take the next slot for a command; `Ok((slot, is_new))`, or `Err` once diverged.
    fn issue(&mut self, kind: CommandKind, name: String) -> Result<(u32, bool), ()> {
        if self.error.is_some() {
            return Err(());
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        match self.commands.get(slot as usize) {
            Some(recorded) if recorded.kind == kind && recorded.name == name => Ok((slot, false)),
            Some(recorded) => {
                self.error = Some(nondeterminism(slot, Some(recorded), &Command { kind, name }));
                Err(())
            }
            None if self.replaying => {
                self.error = Some(nondeterminism(slot, None, &Command { kind, name }));
                Err(())
            }
            None if self.new_commands >= self.max_new_commands => {
                // The orchestration fails: none of this step's commands leave.
                self.effects.clear();
                self.error = Some(Failure::new(
                    "FanOutTooLarge",
                    format!(
                        "{} issued more than {} commands in one step (DURABLE_MAX_FAN_OUT): split the work into \
                         sub-orchestrations or batches",
                        self.id_str, self.max_new_commands
                    ),
                ));
                Err(())
            }
            None => {
                self.new_commands += 1;
                self.commands.push(Command { kind, name });
                Ok((slot, true))
            }
        }
    }

    /// Leave the critical section requested at `slot` (if it is the current one): tell every
    /// participant, unless this is a replay of a release that was sent before.
    pub(crate) fn release_lock(&mut self, slot: u32) {
        if !matches!(&self.lock, Some((s, _)) if *s == slot) {
            return;
        }
        let (_, participants) = self.lock.take().expect("checked");
        if !self.replaying {
            let correlation = self.correlation(slot);
            let prefix = format!("{}/release/{correlation}", self.id_str);
            let releases = lock_releases(&prefix, &self.id_str, &correlation, &participants, self.now);
            self.effects.extend(releases.into_iter().map(Effect::Emit));
        }
    }

    /// Issue a command whose live-mode effect, if any, is `make(self, slot)`.
    fn command(
        &mut self,
        kind: CommandKind,
        name: String,
        make: impl FnOnce(&Shared, u32) -> Option<Effect>,
    ) -> Option<u32> {
        let (slot, is_new) = self.issue(kind, name).ok()?;
        if is_new || self.reissue.remove(&slot) {
            if let Some(effect) = make(self, slot) {
                self.effects.push(effect);
            }
        }
        Some(slot)
    }
}

/// The typed nondeterminism failure: what history recorded at a slot and what the code asked.
pub(crate) fn nondeterminism(slot: u32, recorded: Option<&Command>, asked: &Command) -> Failure {
    let recorded = match recorded {
        Some(c) => format!("{:?}({})", c.kind, c.name),
        None => "nothing".to_owned(),
    };
    Failure {
        kind: NONDETERMINISM.to_owned(),
        message: format!(
            "replay diverged at slot {slot}: history recorded {recorded}, the code asked for {:?}({})",
            asked.kind, asked.name
        ),
        details: Some(format!("slot={slot}; expected={recorded}; actual={:?}({})", asked.kind, asked.name)),
    }
}

/// A future for one slot's completion.
pub(crate) struct SlotFuture {
    shared: Arc<AtomicRefCell<Shared>>,
    /// `None` when the command could not be issued (the code diverged): never ready.
    slot: Option<u32>,
    done: bool,
}

impl Future for SlotFuture {
    type Output = Completion;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Completion> {
        let Some(slot) = self.slot else {
            return Poll::Pending;
        };
        let shared = self.shared.borrow();
        if shared.error.is_some() {
            return Poll::Pending;
        }
        match shared.delivered.get(&slot) {
            Some((completion, position)) => {
                mark_ready(*position + 1);
                let completion = completion.clone();
                drop(shared);
                self.done = true;
                Poll::Ready(completion)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for SlotFuture {
    fn drop(&mut self) {
        if let (Some(slot), false) = (self.slot, self.done) {
            if let Ok(mut shared) = self.shared.try_borrow_mut() {
                shared.abandoned.insert(slot);
            }
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Payload, Failure> {
    Payload::json(value).map_err(|e| Failure::new("SerializationError", e.to_string()))
}

fn decode_value<O: DeserializeOwned>(completion: Completion) -> Result<O, Failure> {
    match completion {
        Completion::Value(p) => {
            p.decode().map_err(|e| Failure::new("DeserializationError", format!("{e} (payload {p:?})")))
        }
        Completion::Failure(f) => Err(f),
        Completion::Done => {
            serde_json::from_str("null").map_err(|e| Failure::new("DeserializationError", e.to_string()))
        }
    }
}

/// The orchestration's handle on Durable. Cheap to clone; valid for one execution step.
///
/// Orchestration code must be deterministic: it may only wait on futures from this context (and
/// [`when_all`](crate::when_all)/[`when_any`](crate::when_any) over them), never on `tokio`
/// timers, `select!` or real I/O. Use [`now`](Self::now), [`new_uuid`](Self::new_uuid) and
/// [`random`](Self::random) instead of the clock and random generators. A replay that asks for
/// something else than its history recorded fails the instance with kind
/// [`NONDETERMINISM`].
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) shared: Arc<AtomicRefCell<Shared>>,
}

impl OrchestrationContext {
    pub(crate) fn new(shared: Arc<AtomicRefCell<Shared>>) -> Self {
        Self { shared }
    }

    fn slot_future(&self, slot: Option<u32>) -> SlotFuture {
        SlotFuture { shared: self.shared.clone(), slot, done: false }
    }

    /// This orchestration's id.
    pub fn instance_id(&self) -> InstanceId {
        self.shared.borrow().id.clone()
    }

    /// How many times this instance continued as new.
    pub fn generation(&self) -> u32 {
        self.shared.borrow().generation
    }

    /// Replay-safe current time, ms since the Unix epoch: the time recorded with the event the
    /// code is reacting to.
    pub fn now(&self) -> i64 {
        self.shared.borrow().now
    }

    /// Whether the code is re-running recorded history (side-channel output such as logs should
    /// be skipped then).
    pub fn is_replaying(&self) -> bool {
        self.shared.borrow().replaying
    }

    /// A replay-safe random number: the same sequence on every replay of this generation.
    pub fn random(&self) -> u64 {
        let mut s = self.shared.borrow_mut();
        s.random_calls += 1;
        let seed = fnv64(s.id_str.as_bytes()) ^ ((s.generation as u64) << 40) ^ s.random_calls;
        splitmix64(seed)
    }

    /// A replay-safe UUID (version 4 layout, derived from [`random`](Self::random)).
    pub fn new_uuid(&self) -> String {
        let (a, b) = (self.random(), self.random());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }

    /// Log a line unless replaying (so each line appears once per execution of the code).
    pub fn log(&self, message: &str) {
        let s = self.shared.borrow();
        if !s.replaying {
            tracing::info!(instance = %s.id_str, generation = s.generation, "{message}");
        }
    }

    /// Set the custom status shown by `durable status` and in the state feed.
    pub fn set_custom_status<T: Serialize>(&self, status: &T) {
        if let Ok(p) = encode(status) {
            self.shared.borrow_mut().custom_status = Some(Some(p));
        }
    }

    fn activity_attempt(&self, name: &str, input: Payload, attempt: u32, timeout: Option<Duration>) -> SlotFuture {
        let slot = self.shared.borrow_mut().command(CommandKind::CallActivity, name.to_owned(), |s, slot| {
            let key = format!("{}#{}.{}", s.id_str, s.generation, slot);
            let target = InstanceId::new(Kind::Activity, name, key).map(|id| id.canonical()).unwrap_or_default();
            let timeout_ms = timeout.map(|t| t.as_millis().min(i64::MAX as u128) as i64);
            let body = s.reply_to(slot, Event::ScheduleActivity { input, attempt: attempt as i32, timeout_ms });
            Some(Effect::Emit(s.envelope(slot, target, body)))
        });
        self.slot_future(slot)
    }

    /// Run activity `name` once with `input`; its result (or failure) is recorded once.
    pub fn call_activity<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        self.call_activity_with_options(name, input, ActivityOptions::default())
    }

    /// Run activity `name`, retrying failures as `policy` says. Retries wait on durable timers,
    /// so they survive restarts and replay deterministically.
    pub fn call_activity_with_retry<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
        policy: RetryPolicy,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        self.call_activity_with_options(name, input, ActivityOptions::default().retry(policy))
    }

    /// Run activity `name` with `options`: its own timeout, a retry policy.
    pub fn call_activity_with_options<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
        options: ActivityOptions,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        let ctx = self.clone();
        let name = name.to_owned();
        let input = encode(&input);
        let ActivityOptions { timeout, retry } = options;
        let first = input.clone().map(|p| self.activity_attempt(&name, p, 1, timeout));
        async move {
            let input = input?;
            let mut attempt = 1;
            let mut pending = first?;
            loop {
                match decode_value::<O>(pending.await) {
                    Ok(v) => return Ok(v),
                    Err(f) if retry.as_ref().is_some_and(|policy| policy.should_retry(&f, attempt)) => {
                        let policy = retry.as_ref().expect("checked");
                        ctx.create_timer_after(policy.delay(attempt)).await;
                        attempt += 1;
                        pending = ctx.activity_attempt(&name, input.clone(), attempt, timeout);
                    }
                    Err(f) => return Err(f),
                }
            }
        }
    }

    /// Start orchestration `name` as a child and wait for its result. Its key is derived from
    /// this instance and slot unless given with [`call_sub_orchestration_with_key`](Self::call_sub_orchestration_with_key).
    pub fn call_sub_orchestration<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: I,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        self.sub_orchestration(name, None, input)
    }

    /// Like [`call_sub_orchestration`](Self::call_sub_orchestration) with an explicit key.
    pub fn call_sub_orchestration_with_key<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        key: &str,
        input: I,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        self.sub_orchestration(name, Some(key), input)
    }

    fn sub_orchestration<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        key: Option<&str>,
        input: I,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        let locked = self.shared.borrow().lock.as_ref().map(|(_, p)| p.join(", "));
        // A key derived from this instance's id and the slot: check its length now, so that a
        // child that could not exist fails the call instead of leaving it unanswered.
        let key_len = key.map_or_else(|| self.shared.borrow().id_str.len() + 24, str::len);
        let checked = match locked {
            _ if key_len > crate::id::MAX_KEY_BYTES => Err(Failure::new(
                "InvalidKey",
                format!("the sub-orchestration's key would be {key_len} bytes, over {} (crate::id::MAX_KEY_BYTES): give it a shorter key", crate::id::MAX_KEY_BYTES),
            )),
            Some(held) => Err(lock_violation(format!(
                "cannot start a sub-orchestration while holding a lock on [{held}]: it could wait for these entities forever"
            ))),
            None => encode(&input),
        };
        let child = |s: &Shared, slot: u32| {
            let key = key.map(str::to_owned).unwrap_or_else(|| format!("{}#{}.{}", s.id_str, s.generation, slot));
            InstanceId::new(Kind::Orchestration, name, key).map(|id| id.canonical()).unwrap_or_default()
        };
        let call = checked.map(|input| {
            let mut s = self.shared.borrow_mut();
            let slot = s.command(CommandKind::CallSubOrchestration, name.to_owned(), |s, slot| {
                let target = child(s, slot);
                Some(Effect::Emit(s.envelope(slot, target, s.reply_to(slot, Event::StartOrchestration { input }))))
            });
            if let Some(slot) = slot {
                let target = child(&s, slot);
                s.children.insert(slot, target);
            }
            drop(s);
            self.slot_future(slot)
        });
        async move { decode_value(call?.await) }
    }

    /// Start orchestration `name` with `key` and do not wait for it.
    pub fn start_orchestration<I: Serialize>(&self, name: &str, key: &str, input: I) {
        if let (Ok(input), Ok(target)) = (encode(&input), InstanceId::new(Kind::Orchestration, name, key)) {
            let target = target.canonical();
            self.shared.borrow_mut().command(CommandKind::StartOrchestration, target.clone(), |s, slot| {
                Some(Effect::Emit(s.envelope(slot, target, Event::StartOrchestration { input })))
            });
        }
    }

    /// A durable timer that fires at `fire_at` (ms since the Unix epoch).
    pub fn create_timer(&self, fire_at: i64) -> impl Future<Output = ()> + 'static {
        let slot = self.shared.borrow_mut().command(CommandKind::CreateTimer, fire_at.to_string(), |s, slot| {
            let fired = Event::TimerFired { correlation: s.correlation(slot) };
            Some(Effect::Delay { fire_at, envelope: s.envelope(slot, s.id_str.clone(), fired) })
        });
        let fut = self.slot_future(slot);
        async move {
            fut.await;
        }
    }

    /// A durable timer that fires `delay` after [`now`](Self::now).
    pub fn create_timer_after(&self, delay: Duration) -> impl Future<Output = ()> + 'static {
        self.create_timer(self.now().saturating_add(delay.as_millis() as i64))
    }

    /// Wait for the next external event called `name` (events that arrived earlier wait in a
    /// buffer and are taken in arrival order).
    pub fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<T, Failure>> + 'static {
        let slot = {
            let mut s = self.shared.borrow_mut();
            let slot = s.command(CommandKind::WaitForEvent, name.to_owned(), |_, _| None);
            if let Some(slot) = slot {
                s.waits.insert(slot, name.to_owned());
            }
            slot
        };
        let fut = self.slot_future(slot);
        async move { decode_value(fut.await) }
    }

    /// Send operation `op` to an entity; do not wait. Fails only for an input that does not
    /// serialize, or a [`LOCK_VIOLATION`].
    pub fn signal_entity<I: Serialize>(&self, entity: &InstanceId, op: &str, input: I) -> Result<(), Failure> {
        let input = encode(&input)?;
        let lock = self.lock_context(entity)?;
        let target = entity.canonical();
        self.shared.borrow_mut().command(CommandKind::SignalEntity, format!("{target}/{op}"), |s, slot| {
            let body = Event::EntityOperation { operation: op.to_owned(), input };
            Some(Effect::Emit(s.envelope(slot, target, wrap_lock(lock, body))))
        });
        Ok(())
    }

    /// Call operation `op` on an entity and wait for its result.
    pub fn call_entity<I: Serialize, O: DeserializeOwned>(
        &self,
        entity: &InstanceId,
        op: &str,
        input: I,
    ) -> impl Future<Output = Result<O, Failure>> + 'static {
        let target = entity.canonical();
        let checked = self.lock_context(entity).and_then(|lock| Ok((lock, encode(&input)?)));
        let call = checked.map(|(lock, input)| {
            let slot =
                self.shared.borrow_mut().command(CommandKind::CallEntity, format!("{target}/{op}"), |s, slot| {
                    let body = Event::EntityOperation { operation: op.to_owned(), input };
                    Some(Effect::Emit(s.envelope(slot, target, s.reply_to(slot, wrap_lock(lock, body)))))
                });
            self.slot_future(slot)
        });
        async move { decode_value(call?.await) }
    }

    /// Inside a critical section, messages to locked entities carry the lock; messages to any
    /// other entity are a [`LOCK_VIOLATION`].
    fn lock_context(&self, entity: &InstanceId) -> Result<Option<(String, Vec<String>)>, Failure> {
        let s = self.shared.borrow();
        match &s.lock {
            None => Ok(None),
            Some((_, participants)) if participants.contains(&entity.canonical()) => {
                Ok(Some((s.id_str.clone(), participants.clone())))
            }
            Some((_, participants)) => Err(lock_violation(format!(
                "{} holds a lock on [{}] and may only call or signal those entities, not {entity}",
                s.id_str,
                participants.join(", ")
            ))),
        }
    }

    /// Enter a critical section over `entities`: the returned guard proves they are all locked
    /// for this orchestration. Locks are taken one at a time in one global order (sorted
    /// canonical ids), so two orchestrations locking overlapping sets never deadlock. While the
    /// lock is held, other operations sent to these entities wait in arrival order; this
    /// orchestration may call and signal only these entities, may not take a second lock set and
    /// may not start sub-orchestrations (a [`LOCK_VIOLATION`] failure otherwise).
    ///
    /// The protocol, and why it cannot deadlock or leak: [`crate::critical_sections`].
    pub fn lock(&self, entities: &[InstanceId]) -> impl Future<Output = Result<LockGuard, Failure>> + 'static {
        let checked = (|| {
            if let Some(e) = entities.iter().find(|e| e.kind() != Kind::Entity) {
                return Err(lock_violation(format!("only entities can be locked, not {e}")));
            }
            let mut participants: Vec<String> = entities.iter().map(InstanceId::canonical).collect();
            participants.sort();
            participants.dedup();
            if participants.is_empty() {
                return Err(lock_violation("lock needs at least one entity"));
            }
            if let Some((_, held)) = &self.shared.borrow().lock {
                return Err(lock_violation(format!("already holds a lock on [{}]; release it first", held.join(", "))));
            }
            Ok(participants)
        })();
        let future = checked.map(|participants| {
            let mut s = self.shared.borrow_mut();
            let first = participants[0].clone();
            let request = participants.clone();
            let slot = s.command(CommandKind::Lock, participants.join(","), move |s, slot| {
                let body = Event::LockRequest {
                    owner: s.id_str.clone(),
                    correlation: s.correlation(slot),
                    participants: request,
                    position: 0,
                };
                Some(Effect::Emit(s.envelope(slot, first, body)))
            });
            if let Some(slot) = slot {
                s.lock = Some((slot, participants));
            }
            drop(s);
            LockFuture { inner: self.slot_future(slot) }
        });
        async move { future?.await }
    }

    /// Whether this orchestration holds (or is acquiring) a lock set.
    pub fn is_locked(&self) -> bool {
        self.shared.borrow().lock.is_some()
    }

    /// Finish this generation and start a new one with `input`. External events that no wait
    /// took yet are kept for the new generation. The returned future never completes: await it.
    pub fn continue_as_new<I: Serialize>(&self, input: I) -> impl Future<Output = ()> + 'static {
        if let Ok(p) = encode(&input) {
            self.shared.borrow_mut().continue_as_new = Some(p);
        }
        std::future::pending()
    }

    /// Wait for `future` or a timer of `timeout`, whichever comes first (by arrival order).
    pub fn timeout<F: Future + 'static>(
        &self,
        timeout: Duration,
        future: F,
    ) -> impl Future<Output = Result<F::Output, Failure>> + 'static {
        let timer = self.create_timer_after(timeout);
        let race = super::combinators::when_any2(future, timer);
        async move {
            match race.await {
                Either::Left(v) => Ok(v),
                Either::Right(()) => Err(Failure::new("Timeout", format!("no result within {timeout:?}"))),
            }
        }
    }
}

/// The `LockRelease` events that end the critical section `correlation` of `owner`.
/// Event ids are `<id_prefix>/<i>`: the owner's own release of a lock is one logical event
/// however often it is sent; an answer to an unwanted grant is another.
pub(crate) fn lock_releases(
    id_prefix: &str,
    owner: &str,
    correlation: &str,
    participants: &[String],
    now: i64,
) -> Vec<Envelope> {
    participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let body = Event::LockRelease { owner: owner.to_owned(), correlation: correlation.to_owned() };
            let mut e = Envelope::new(format!("{id_prefix}/{i}"), p.clone(), now, body);
            e.source = Some(owner.to_owned());
            e
        })
        .collect()
}

/// The failure kind for breaking the rules of critical sections.
pub const LOCK_VIOLATION: &str = "LockViolation";

fn lock_violation(message: impl Into<String>) -> Failure {
    Failure::new(LOCK_VIOLATION, message)
}

/// Proof that the orchestration holds its lock set. Releasing it — explicitly with
/// [`release`](Self::release), by dropping it, or by the orchestration finishing, failing,
/// being terminated or continuing as new — lets the operations queued at the entities run.
pub struct LockGuard {
    shared: Arc<AtomicRefCell<Shared>>,
    slot: u32,
    participants: Vec<String>,
}

impl LockGuard {
    /// The locked entities (canonical ids, in lock order).
    pub fn participants(&self) -> &[String] {
        &self.participants
    }

    /// Leave the critical section now.
    pub fn release(self) {
        drop(self)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.release_lock(self.slot);
        }
    }
}

/// Future of [`OrchestrationContext::lock`]: dropped before the grant, it withdraws the request.
struct LockFuture {
    inner: SlotFuture,
}

impl Future for LockFuture {
    type Output = Result<LockGuard, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = self.inner.slot;
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Completion::Done) => {
                let slot = slot.expect("a ready slot future has a slot");
                let participants = match &self.inner.shared.borrow().lock {
                    Some((s, p)) if *s == slot => p.clone(),
                    _ => Vec::new(),
                };
                Poll::Ready(Ok(LockGuard { shared: self.inner.shared.clone(), slot, participants }))
            }
            Poll::Ready(Completion::Failure(f)) => {
                // Refused by a participant: release the ones before it, and the code may lock again.
                if let Some(slot) = slot {
                    self.inner.shared.borrow_mut().release_lock(slot);
                }
                Poll::Ready(Err(f))
            }
            Poll::Ready(Completion::Value(_)) => {
                Poll::Ready(Err(lock_violation("unexpected value for a lock request")))
            }
        }
    }
}

impl Drop for LockFuture {
    fn drop(&mut self) {
        if let (Some(slot), false) = (self.inner.slot, self.inner.done) {
            if let Ok(mut shared) = self.inner.shared.try_borrow_mut() {
                shared.release_lock(slot);
            }
        }
    }
}

fn wrap_lock(lock: Option<(String, Vec<String>)>, body: Event) -> Event {
    match lock {
        Some((owner, participants)) => Event::WithLock { owner, participants, inner: Box::new(body) },
        None => body,
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
