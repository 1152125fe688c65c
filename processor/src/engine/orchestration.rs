//! Orchestrations: replay, deliver, run the code with a no-op waker.
//!
//! The code is driven by our own executor: poll until it returns `Pending` with nothing left to
//! deliver. Replay first runs the code from the start and delivers the recorded log one entry at
//! a time, polling after each; new events are then buffered (replies in `early`, external events
//! in `inbox`) and handed to the code one at a time, each becoming a new log entry.

use std::collections::{BTreeSet, VecDeque};

use durable_schemas::{Envelope, Event, Failure, Payload};

use super::{unwrap, Collector, DropReason, Limits};
use crate::access::{Principal, FORBIDDEN};
use crate::context::orchestration::lock_releases;
use crate::effect::Effect;
use crate::history::{
    parse_correlation, Body, Command, CommandKind, Completion, HeldLocks, InstanceRecord, OrchestrationHistory,
    OrchestrationStatus, ReplyAddress,
};
use crate::id::{InstanceId, Kind};
use crate::registry::Registry;

pub(super) use super::execution::Execution;

/// How many generations one step may run through `continue_as_new` before it is a loop.
const MAX_GENERATIONS_PER_STEP: u32 = 1000;

/// The state of one orchestration step.
struct Run<'a> {
    registry: &'a Registry,
    id: &'a InstanceId,
    record: &'a mut InstanceRecord,
    out: &'a mut Collector,
    exec: Option<Execution>,
    generations: u32,
    /// Slots the next replay sends again ([`Run::rewind`]).
    reissue: BTreeSet<u32>,
}

/// Apply `events` to the orchestration `record`. `live` is the code kept running from the step
/// that committed `record`, if any: the step continues it instead of replaying the history. The
/// code, still waiting, is returned to be kept for the next step, with the history's approximate
/// size.
pub(super) fn step(
    registry: &Registry,
    id: &InstanceId,
    record: &mut InstanceRecord,
    events: Vec<Envelope>,
    out: &mut Collector,
    live: Option<Execution>,
) -> Option<(Execution, usize)> {
    let exec = live.filter(|exec| match &record.body {
        Body::Orchestration(h) => exec.fits(h),
        _ => false,
    });
    if let Some(exec) = &exec {
        // The fan-out limit counts the commands of one step.
        exec.shared.borrow_mut().new_commands = 0;
    }
    let mut run = Run { registry, id, record, out, exec, generations: 0, reissue: BTreeSet::new() };
    for envelope in events {
        run.apply(envelope);
    }
    run.sync_history();
    let size = run.check_size();
    let exec = run.exec.take().filter(|e| e.outcome.is_none() && e.fut.is_some());
    let running = run.running().is_some_and(|h| h.status == OrchestrationStatus::Running);
    exec.filter(|_| running).zip(size)
}

/// The code of the running orchestration `h`, replayed from its history: what a live execution
/// kept after the step that made `h` must equal.
pub(super) fn replayed(
    registry: &Registry,
    id: &InstanceId,
    h: &OrchestrationHistory,
    limits: Limits,
) -> Option<Execution> {
    if h.status != OrchestrationStatus::Running {
        return None;
    }
    Execution::replay(registry, id, h, limits, BTreeSet::new()).ok().filter(|e| e.outcome.is_none())
}

/// Whether `event` from `source` may answer `slot` of generation `generation` of `me`, which
/// issued `command`: only the instance the slot commanded may, with the kind of answer the
/// command expects ([`crate::trust`]).
fn check_replier(
    me: &str,
    generation: u32,
    slot: u32,
    command: &Command,
    event: &Event,
    source: Option<&str>,
) -> Result<(), String> {
    let from = source.unwrap_or_default();
    let name = command.name.as_str();
    let ok = match (command.kind, event) {
        (CommandKind::CallActivity, Event::ActivityCompleted { .. } | Event::ActivityFailed { .. }) => {
            InstanceId::new(Kind::Activity, name, format!("{me}#{generation}.{slot}"))
                .is_ok_and(|id| id.canonical() == from)
        }
        (
            CommandKind::CallSubOrchestration,
            Event::OrchestrationCompleted { .. } | Event::OrchestrationFailed { .. },
        ) => InstanceId::parse(from).is_ok_and(|id| id.kind() == Kind::Orchestration && id.name() == name),
        (CommandKind::CallEntity, Event::OperationResult { .. }) => {
            !from.is_empty() && name.strip_prefix(from).is_some_and(|op| op.starts_with('/'))
        }
        (CommandKind::CreateTimer, Event::TimerFired { .. }) => from == me,
        // The grant comes from the last entity of the set (ids sorted, joined by commas).
        (CommandKind::Lock, Event::LockGranted { .. }) => {
            !from.is_empty() && (name == from || name.ends_with(&format!(",{from}")))
        }
        // A participant refused the lock to the principal this orchestration acts for.
        (CommandKind::Lock, Event::OperationResult { outcome: Err(f), .. }) => {
            f.kind == FORBIDDEN && !from.is_empty() && name.split(',').any(|p| p == from)
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let source = source.map_or_else(|| "no source".to_owned(), |s| format!("source {s}"));
    Err(format!(
        "{} from {source} cannot answer slot {slot} of {me} ({:?} {name}): only the instance the slot commanded answers it",
        event.name(),
        command.kind
    ))
}

/// Why the history `h` of `id` cannot be rewound, if it cannot: the one rule the engine's dead
/// letter and the API's 409 both say.
pub(crate) fn rewind_refusal(id: &str, h: &OrchestrationHistory) -> Option<String> {
    if !matches!(h.status, OrchestrationStatus::Failed { .. }) {
        return Some(format!(
            "{id} is {}: only a failed orchestration can be rewound (restart runs a finished one again from its input)",
            h.status.word()
        ));
    }
    let failed_in = h.log.last().map(|e| (e.slot, &e.completion, h.commands.get(e.slot as usize)));
    let activity = match failed_in {
        Some((_, Completion::Failure(_), Some(c))) if c.kind == CommandKind::CallActivity => c.name.clone(),
        _ => {
            return Some(format!(
                "{id} did not fail in an activity (its last delivery is no activity failure: the code failed, or its history was dropped): restart it instead"
            ))
        }
    };
    if h.reply_to.is_some() {
        return Some(format!(
            "{id} is a sub-orchestration: its parent already has its failure; rewind or restart the parent"
        ));
    }
    let answered: BTreeSet<u32> = h.log.iter().map(|e| e.slot).collect();
    for (slot, c) in h.commands.iter().enumerate() {
        let waiting = !answered.contains(&(slot as u32));
        let unsafe_kind = match c.kind {
            CommandKind::Lock => true,
            CommandKind::CallSubOrchestration | CommandKind::CallEntity | CommandKind::CreateTimer => waiting,
            _ => false,
        };
        if unsafe_kind {
            let what = if c.kind == CommandKind::Lock {
                "it uses a critical section, whose locks were released when it failed".to_owned()
            } else {
                format!("it was waiting on {:?} {} when it failed, and that answer was dropped", c.kind, c.name)
            };
            return Some(format!("{id} cannot be rewound: {what}; restart it instead (activity {activity} failed)"));
        }
    }
    None
}

impl Run<'_> {
    fn history(&mut self) -> Option<&mut OrchestrationHistory> {
        match &mut self.record.body {
            Body::Orchestration(h) => Some(h),
            _ => None,
        }
    }

    /// The history of a started orchestration that has not finished (running or suspended).
    fn running(&mut self) -> Option<&mut OrchestrationHistory> {
        self.history().filter(|h| !h.status.is_finished() && !h.status.is_pending())
    }

    fn apply(&mut self, envelope: Envelope) {
        let (_, core) = unwrap(&envelope.body);
        if self.registry.orchestration_handler(self.id.name()).is_none() {
            // Keep the instance as it is: a deployment without the handler must not fail it.
            let reason = format!("no orchestration named {:?} is registered", self.id.name());
            return self.out.dead(envelope, reason);
        }
        // Until it starts, only its start, more raised events and a purge apply.
        if self.history().is_some_and(|h| h.status.is_pending())
            && !matches!(core, Event::StartOrchestration { .. } | Event::RaiseEvent { .. } | Event::Purge { .. })
        {
            let reason = format!(
                "{} for an orchestration that never started (it has raised events waiting for its start)",
                core.name()
            );
            return self.out.dead(envelope, reason);
        }
        // A suspended orchestration keeps what arrives for its Resume; what ends or changes the
        // suspension applies now.
        let Some(envelope) = self.hold_while_suspended(envelope) else { return };
        let (wrappers, core) = unwrap(&envelope.body);
        match core.clone() {
            Event::Suspend { reason } => self.suspend(envelope, reason),
            Event::Resume { .. } => self.resume(envelope),
            Event::Purge { .. } => {
                self.sync_history();
                self.exec = None;
                super::purge(self.id, self.record, envelope, self.out)
            }
            Event::StartOrchestration { input } => {
                let reply_to = wrappers.reply_to.map(|(address, correlation)| ReplyAddress { address, correlation });
                self.start(envelope, input, reply_to, wrappers.principal)
            }
            Event::ActivityCompleted { correlation, result } => {
                self.reply(envelope, &correlation, Completion::Value(result))
            }
            Event::ActivityFailed { correlation, failure } => {
                self.reply(envelope, &correlation, Completion::Failure(failure))
            }
            Event::OperationResult { correlation, outcome } => {
                let completion = match outcome {
                    Ok(p) => Completion::Value(p),
                    Err(f) => Completion::Failure(f),
                };
                self.reply(envelope, &correlation, completion)
            }
            Event::OrchestrationCompleted { correlation, output } => {
                self.reply(envelope, &correlation, Completion::Value(output))
            }
            Event::OrchestrationFailed { correlation, failure } => {
                self.reply(envelope, &correlation, Completion::Failure(failure))
            }
            Event::TimerFired { correlation } => self.reply(envelope, &correlation, Completion::Done),
            Event::LockGranted { correlation, participants } => self.grant(envelope, correlation, participants),
            Event::RaiseEvent { name, payload } => self.raise(envelope, name, payload),
            Event::Terminate { reason } => self.terminate(envelope, reason),
            Event::Rewind { .. } => self.rewind(envelope),
            other => {
                let reason = format!("orchestration {} cannot handle {}", self.id, other.name());
                self.out.dead(envelope, reason)
            }
        }
    }

    /// Keep `envelope` for the resume if the orchestration is suspended and it neither ends
    /// nor changes the suspension (dead-lettered past the inbox's limits); hand it back to
    /// apply now otherwise.
    fn hold_while_suspended(&mut self, envelope: Envelope) -> Option<Envelope> {
        let (_, core) = unwrap(&envelope.body);
        let max_inbox = self.out.limits.max_inbox;
        let counted = self.out.buffer_counted();
        let Some(OrchestrationStatus::Suspended { held, .. }) = self.history().map(|h| &mut h.status) else {
            return Some(envelope);
        };
        if matches!(
            core,
            Event::Resume { .. }
                | Event::Suspend { .. }
                | Event::Terminate { .. }
                | Event::Purge { .. }
                | Event::Rewind { .. }
        ) {
            return Some(envelope);
        }
        if held.len() >= max_inbox {
            let reason = format!(
                "{} is suspended and already keeps {} events for its resume (DURABLE_MAX_INBOX); {} is not applied",
                envelope.target,
                held.len(),
                core.name()
            );
            self.out.dead(envelope, reason);
            return None;
        }
        // Counted once a step: a flood of kept events costs one pass.
        let kept = if counted { 0 } else { super::stored_bytes(held.iter()) };
        if let Err(why) = self.out.buffer(|| kept, envelope.encode().len()) {
            let reason = format!("{} is suspended: {why}; {} is not applied", envelope.target, core.name());
            self.out.dead(envelope, reason);
            return None;
        }
        if let Some(OrchestrationStatus::Suspended { held, .. }) = self.history().map(|h| &mut h.status) {
            held.push(envelope);
        }
        None
    }
    fn start(
        &mut self,
        envelope: Envelope,
        input: Payload,
        reply_to: Option<ReplyAddress>,
        principal: Option<Principal>,
    ) {
        let (generation, raised) = match self.history() {
            None => (0, VecDeque::new()),
            // Signal-with-start: the events raised before the start are its first inbox.
            Some(h) if h.status.is_pending() => (0, std::mem::take(&mut h.inbox)),
            Some(h) if h.status.is_finished() => (h.generation + 1, VecDeque::new()),
            Some(_) => return self.out.drop(&envelope, DropReason::AlreadyRunning),
        };
        // The run acts for whoever started it.
        self.record.access.run_as = principal;
        self.sync_history();
        let now = self.out.now;
        let mut history = OrchestrationHistory::start(input, reply_to, generation, now);
        history.inbox = raised;
        self.record.body = Body::Orchestration(Box::new(history));
        self.exec = None;
        self.settle();
    }

    fn reply(&mut self, envelope: Envelope, correlation: &str, completion: Completion) {
        let Some(h) = self.history() else {
            let reason = "reply to an orchestration that never started".to_owned();
            return self.out.dead(envelope, reason);
        };
        if h.status.is_finished() {
            return self.out.drop(&envelope, DropReason::Finished);
        }
        let Some((generation, slot)) = parse_correlation(correlation) else {
            let reason = format!("malformed correlation {correlation:?} (expected <generation>.<slot>)");
            return self.out.dead(envelope, reason);
        };
        if generation != h.generation {
            return self.out.drop(&envelope, DropReason::StaleGeneration);
        }
        if !self.ensure_exec() {
            return self.out.drop(&envelope, DropReason::Finished);
        }
        let exec = self.exec.as_ref().expect("ensure_exec checked");
        let command = exec.shared.borrow().commands.get(slot as usize).cloned();
        let answer = unwrap(&envelope.body).1;
        let Some(command) = command else {
            let reason = format!("{} answers slot {slot}, which {} never issued", answer.name(), self.id);
            return self.out.dead(envelope, reason);
        };
        let (me, source) = (self.id.canonical(), envelope.source.as_deref());
        if let Err(reason) = check_replier(&me, generation, slot, &command, answer, source) {
            return self.out.dead(envelope, reason);
        }
        let delivered = self.exec.as_ref().is_some_and(|e| e.shared.borrow().delivered.contains_key(&slot));
        let h = self.running().expect("ensure_exec checked");
        if delivered || h.early.iter().any(|(s, _)| *s == slot) {
            return self.out.drop(&envelope, DropReason::SlotAlreadyCompleted);
        }
        h.early.push((slot, completion));
        self.settle();
    }

    /// A lock set was granted. If this is not the request the code is waiting for (it finished,
    /// withdrew the request, moved to another generation, or never existed), answer with a
    /// release so that no entity stays locked for an owner that does not want it.
    fn grant(&mut self, envelope: Envelope, correlation: String, participants: Vec<String>) {
        if participants.last().is_none_or(|last| envelope.source.as_ref() != Some(last)) {
            let reason = format!(
                "LockGranted from {:?} for {participants:?}: only the last entity of the set grants it",
                envelope.source
            );
            return self.out.dead(envelope, reason);
        }
        let current = parse_correlation(&correlation)
            .filter(|(generation, _)| self.running().is_some_and(|h| h.generation == *generation));
        if let Some((_, slot)) = current {
            if self.ensure_exec() {
                let exec = self.exec.as_ref().expect("ensured");
                let s = exec.shared.borrow();
                let delivered = s.delivered.contains_key(&slot);
                let waiting = matches!(&s.lock, Some((held, _)) if *held == slot);
                drop(s);
                if delivered {
                    return self.out.drop(&envelope, DropReason::SlotAlreadyCompleted);
                }
                if waiting {
                    return self.reply(envelope, &correlation, Completion::Done);
                }
            }
        }
        let prefix = format!("{}/unwanted", self.out.event_id());
        let releases = lock_releases(&prefix, &self.record.id, &correlation, &participants, self.out.now);
        self.out.effects.extend(releases.into_iter().map(Effect::Emit));
        self.out.drop(&envelope, DropReason::UnwantedGrant);
    }

    fn raise(&mut self, envelope: Envelope, name: String, payload: Payload) {
        let max_inbox = self.out.limits.max_inbox;
        let waiting = self.history().is_none_or(|h| !h.status.is_finished() && h.inbox.len() < max_inbox);
        if waiting {
            let record = &*self.record;
            if let Err(why) = self.out.buffer(|| super::buffered_bytes(record), name.len() + payload.data.len()) {
                let reason = format!("{}: {why}; {name:?} is not applied", envelope.target);
                return self.out.dead(envelope, reason);
            }
        }
        match self.history() {
            // Signal-with-start: kept for the start (the authorization step asked for the right
            // to start it).
            None => {
                let mut h = OrchestrationHistory::start(Payload::null(), None, 0, self.out.now);
                h.status = OrchestrationStatus::Pending;
                h.inbox.push_back((name, payload));
                self.record.body = Body::Orchestration(Box::new(h));
            }
            Some(h) if h.status.is_finished() => self.out.drop(&envelope, DropReason::Finished),
            Some(h) if h.inbox.len() >= max_inbox => {
                let reason = format!(
                    "{} already buffers {} events no wait_for_event has taken (DURABLE_MAX_INBOX); {name:?} is not applied",
                    envelope.target,
                    h.inbox.len()
                );
                self.out.dead(envelope, reason)
            }
            Some(h) if h.status.is_pending() => h.inbox.push_back((name, payload)),
            Some(h) => {
                h.inbox.push_back((name, payload));
                if self.ensure_exec() {
                    self.settle();
                }
            }
        }
    }

    fn suspend(&mut self, envelope: Envelope, reason: String) {
        let id = self.id;
        match self.history() {
            None => self.out.dead(envelope, "suspend for an orchestration that never started"),
            Some(h) if matches!(h.status, OrchestrationStatus::Suspended { .. }) => {
                self.out.drop(&envelope, DropReason::NoChange)
            }
            Some(h) if h.status.is_finished() => {
                let reason = format!("{id} is {}: only a running orchestration can be suspended", h.status.word());
                self.out.dead(envelope, reason)
            }
            Some(_) => {
                // The code's place is in the history: the resume replays it.
                self.sync_history();
                self.exec = None;
                let h = self.history().expect("matched above");
                h.status = OrchestrationStatus::Suspended { reason, held: Vec::new() };
            }
        }
    }

    fn resume(&mut self, envelope: Envelope) {
        let Some(h) = self.history() else {
            return self.out.dead(envelope, "resume for an orchestration that never started");
        };
        if h.status.is_finished() {
            return self.out.drop(&envelope, DropReason::Finished);
        }
        if !matches!(h.status, OrchestrationStatus::Suspended { .. }) {
            return self.out.drop(&envelope, DropReason::NoChange);
        }
        let OrchestrationStatus::Suspended { held, .. } =
            std::mem::replace(&mut h.status, OrchestrationStatus::Running)
        else {
            unreachable!("matched above")
        };
        // Running again is a change even if every kept event turns out to be a duplicate.
        self.out.altered = true;
        for envelope in held {
            self.apply(envelope);
        }
    }

    fn terminate(&mut self, envelope: Envelope, reason: String) {
        match self.history() {
            None => self.out.dead(envelope, "terminate for an orchestration that never started"),
            Some(h) if h.status.is_finished() => self.out.drop(&envelope, DropReason::Finished),
            Some(_) => {
                // What a suspended orchestration kept is not applied: it would be dropped as
                // arriving after the end, like everything that comes later.
                self.sync_history();
                self.exec = None;
                self.terminate_children(&reason);
                let failure = Failure::new("Terminated", reason.clone());
                self.conclude(OrchestrationStatus::Terminated { reason }, Err(failure));
            }
        }
    }

    /// Run a failed orchestration on from the activity failure that ended it: that delivery
    /// leaves the log, the status is running again, and a replay sends every activity call
    /// without an answer again (the failed one included). Refused (dead letter, saying why) for
    /// a history where that is not safe: see `Event::Rewind` in `schemas/README.md`.
    fn rewind(&mut self, envelope: Envelope) {
        let id = self.id.canonical();
        let Some(h) = self.history() else {
            return self.out.dead(envelope, "rewind for an orchestration that never started");
        };
        let refusal = rewind_refusal(&id, h);
        if let Some(reason) = refusal {
            return self.out.dead(envelope, reason);
        }
        h.log.pop();
        let answered: BTreeSet<u32> = h.log.iter().map(|e| e.slot).collect();
        let calls: BTreeSet<u32> = (0..h.commands.len() as u32)
            .filter(|slot| h.commands[*slot as usize].kind == CommandKind::CallActivity && !answered.contains(slot))
            .collect();
        h.status = OrchestrationStatus::Running;
        self.exec = None;
        self.reissue = calls;
        self.settle();
    }

    /// Terminate the sub-orchestrations this one started that have not answered yet. Which
    /// they are (their keys may be the code's choice) comes from a replay of the history, taken
    /// apart and dropped; a history that no longer replays terminates none (the failure is the
    /// code's, and the children finish on their own).
    fn terminate_children(&mut self, reason: &str) {
        let Some(h) = self.running().cloned() else { return };
        let Ok(replay) = Execution::replay(self.registry, self.id, &h, self.out.limits, BTreeSet::new()) else {
            return;
        };
        let children = std::mem::take(&mut replay.shared.borrow_mut().children);
        let answered: BTreeSet<u32> =
            h.log.iter().map(|e| e.slot).chain(h.early.iter().map(|(slot, _)| *slot)).collect();
        let id = self.id.canonical();
        for (slot, child) in children.into_iter().filter(|(slot, _)| !answered.contains(slot)) {
            let body = Event::Terminate { reason: format!("its parent {id} was terminated: {reason}") };
            let mut e = Envelope::new(format!("{id}/{}/{slot}/terminate", h.generation), child, self.out.now, body);
            e.source = Some(id.clone());
            self.out.effects.push(Effect::Emit(e));
        }
    }

    /// Make sure the code is running for a running orchestration; false if it cannot be (it
    /// finished, or replay failed and the instance is now failed).
    fn ensure_exec(&mut self) -> bool {
        if self.exec.is_none() {
            self.settle(); // replays the code of a running orchestration
        }
        self.exec.as_ref().is_some_and(|e| e.outcome.is_none())
    }

    /// Flush effects, hand buffered completions to the code one at a time, handle
    /// `continue_as_new` and the end of the code.
    fn settle(&mut self) {
        loop {
            if self.exec.is_none() {
                // Start the code and replay its history (nothing to replay for a new generation).
                let Some(h) = self.running().cloned() else { return };
                let reissue = std::mem::take(&mut self.reissue);
                match Execution::replay(self.registry, self.id, &h, self.out.limits, reissue) {
                    Ok(exec) => self.exec = Some(exec),
                    Err(failure) => {
                        return self.conclude(OrchestrationStatus::Failed { failure: failure.clone() }, Err(failure))
                    }
                }
            }
            let exec = self.exec.as_mut().expect("set above");
            self.out.effects.append(&mut exec.shared.borrow_mut().effects);
            if let Some(outcome) = exec.outcome.take() {
                self.sync_history();
                self.exec = None;
                let status = match &outcome {
                    Ok(output) => OrchestrationStatus::Completed { output: output.clone() },
                    Err(failure) => OrchestrationStatus::Failed { failure: failure.clone() },
                };
                return self.conclude(status, outcome);
            }
            let next = exec.shared.borrow_mut().continue_as_new.take();
            if let Some(input) = next {
                self.continue_as_new(input);
                continue;
            }
            let now = self.out.now;
            let Body::Orchestration(h) = &mut self.record.body else {
                return;
            };
            match exec.next_deliverable(h) {
                Some((slot, completion)) => exec.deliver(h, slot, completion, now),
                None => return,
            }
        }
    }

    fn continue_as_new(&mut self, input: Payload) {
        self.generations += 1;
        if self.generations > MAX_GENERATIONS_PER_STEP {
            let failure = Failure::new(
                "ContinueAsNewLoop",
                format!("more than {MAX_GENERATIONS_PER_STEP} generations in one step without waiting for anything"),
            );
            self.exec = None;
            return self.conclude(OrchestrationStatus::Failed { failure: failure.clone() }, Err(failure));
        }
        // Every way out of a generation releases its lock set.
        self.sync_history();
        self.exec = None;
        self.release_locks();
        let now = self.out.now;
        let h = self.history().expect("running");
        let mut next = OrchestrationHistory::start(input, h.reply_to.clone(), h.generation + 1, now);
        next.inbox = std::mem::take(&mut h.inbox);
        *h = next;
    }

    /// Copy what the running code recorded (commands, custom status) into the history.
    fn sync_history(&mut self) {
        let Some(exec) = &self.exec else { return };
        let mut s = exec.shared.borrow_mut();
        let custom = s.custom_status.take();
        let locks = s.lock.as_ref().map(|(slot, participants)| HeldLocks {
            correlation: s.correlation(*slot),
            participants: participants.clone(),
            granted: s.delivered.contains_key(slot),
        });
        self.out.effects.append(&mut s.effects);
        if let Body::Orchestration(h) = &mut self.record.body {
            // Commands are only ever appended while the code runs (replay checks the recorded
            // ones): copy the new ones, not the whole list again.
            match s.commands.get(h.commands.len()..) {
                Some(new) => h.commands.extend_from_slice(new),
                _ => h.commands = s.commands.clone(),
            }
            h.locks = locks;
            if let Some(custom) = custom {
                h.custom_status = custom;
            }
        }
    }

    /// Release the lock set recorded in the history, if any (every way out of a generation).
    fn release_locks(&mut self) {
        let now = self.out.now;
        let owner = self.record.id.clone();
        let Some(h) = self.history() else { return };
        if let Some(locks) = h.locks.take() {
            let prefix = format!("{owner}/release/{}", locks.correlation);
            let releases = lock_releases(&prefix, &owner, &locks.correlation, &locks.participants, now);
            self.out.effects.extend(releases.into_iter().map(Effect::Emit));
        }
    }

    /// After a step: an orchestration whose custom status or history grew past the limits fails
    /// (its history is dropped: nothing will replay it). Returns the size of a history that
    /// stays running.
    fn check_size(&mut self) -> Option<usize> {
        let limits = self.out.limits;
        let id = self.id.to_string();
        let h = self.running()?;
        let custom = h.custom_status.as_ref().map_or(0, |p| p.data.len());
        let size = h.approx_bytes();
        let failure = if custom > limits.max_state_bytes {
            h.custom_status = None;
            Failure::new(
                "StateTooLarge",
                format!(
                    "the custom status of {id} is {custom} bytes, over the limit of {} (DURABLE_MAX_STATE_BYTES)",
                    limits.max_state_bytes
                ),
            )
        } else if size > limits.max_history_bytes {
            Failure::new(
                "HistoryTooLarge",
                format!(
                    "the history of {id} is about {size} bytes, over the limit of {} (DURABLE_MAX_HISTORY_BYTES): \
                     a long-running orchestration should continue_as_new to start a fresh history",
                    limits.max_history_bytes
                ),
            )
        } else {
            return Some(size);
        };
        self.exec = None;
        self.conclude(OrchestrationStatus::Failed { failure: failure.clone() }, Err(failure));
        if let Some(h) = self.history() {
            h.log.clear();
            h.commands.clear();
            h.inbox.clear();
        }
        None
    }

    /// Record the end of the orchestration and answer whoever waits for it.
    fn conclude(&mut self, status: OrchestrationStatus, outcome: Result<Payload, Failure>) {
        let limit = self.out.limits.max_state_bytes;
        let (status, outcome) = match outcome {
            Ok(output) if output.data.len() > limit => {
                let failure = Failure::new(
                    "StateTooLarge",
                    format!(
                        "the output of {} is {} bytes, over the limit of {limit} (DURABLE_MAX_STATE_BYTES)",
                        self.id,
                        output.data.len()
                    ),
                );
                (OrchestrationStatus::Failed { failure: failure.clone() }, Err(failure))
            }
            other => (status, other),
        };
        self.release_locks();
        let now = self.out.now;
        let id = self.record.id.clone();
        let Body::Orchestration(h) = &mut self.record.body else {
            return;
        };
        h.status = status;
        h.early.clear();
        if let Some(reply) = h.reply_to.clone() {
            let body = match outcome {
                Ok(output) => Event::OrchestrationCompleted { correlation: reply.correlation, output },
                Err(failure) => Event::OrchestrationFailed { correlation: reply.correlation, failure },
            };
            let mut e = Envelope::new(format!("{id}/{}/result", h.generation), reply.address, now, body);
            e.source = Some(id);
            self.out.effects.push(Effect::Emit(e));
        }
    }
}
