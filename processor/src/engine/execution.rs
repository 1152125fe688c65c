//! One execution of an orchestration's code: started over its history and replayed, then
//! polled with a no-op waker as each new completion is delivered, within a step and between
//! steps while the orchestration is live ([`super::Live`]).

use atomic_refcell::AtomicRefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use durable_schemas::{Failure, Payload};

use super::{guarded, Limits};
use crate::context::orchestration::Shared;
use crate::context::OrchestrationContext;
use crate::history::{Completion, LogEntry, OrchestrationHistory, OrchestrationStatus};
use crate::id::InstanceId;
use crate::registry::{OrchestrationFuture, Registry};

/// One execution of the code: within a step, and between steps while the orchestration is live
/// ([`super::Live`]).
pub(super) struct Execution {
    pub(super) shared: Arc<AtomicRefCell<Shared>>,
    /// `None` once finished.
    pub(super) fut: Option<OrchestrationFuture>,
    /// Set when the code returned, panicked or diverged.
    pub(super) outcome: Option<Result<Payload, Failure>>,
}

impl Drop for Execution {
    /// However the code ends — finished, terminated, suspended, purged, evicted — its future is
    /// dropped under [`guarded`].
    fn drop(&mut self) {
        self.discard();
    }
}

impl Execution {
    /// Start the code for `history` and replay its log.
    /// Run the code over `h`'s history; the commands of the `reissue` slots are sent again.
    pub(super) fn replay(
        registry: &Registry,
        id: &InstanceId,
        h: &OrchestrationHistory,
        limits: Limits,
        reissue: BTreeSet<u32>,
    ) -> Result<Self, Failure> {
        let handler = registry.orchestration_handler(id.name()).ok_or_else(|| {
            Failure::new("NotRegistered", format!("no orchestration named {:?} is registered", id.name()))
        })?;
        let mut shared = Shared::new(id.clone(), h.generation, h.commands.clone(), h.started_at);
        shared.max_new_commands = limits.max_fan_out;
        shared.replaying = !(h.commands.is_empty() && h.log.is_empty());
        shared.reissue = reissue;
        let shared = Arc::new(AtomicRefCell::new(shared));
        let fut = handler(OrchestrationContext::new(shared.clone()), h.input.clone());
        let mut exec = Self { shared, fut: Some(fut), outcome: None };
        exec.poll();
        for (position, entry) in h.log.iter().enumerate() {
            if exec.outcome.is_some() {
                break;
            }
            exec.set_delivered(entry.slot, entry.completion.clone(), position, entry.at);
            exec.poll();
        }
        let shared = exec.shared.clone();
        let mut s = shared.borrow_mut();
        if s.replaying {
            s.replaying = false;
            let divergence = match &exec.outcome {
                // Returning before the end of recorded history: the code changed.
                Some(Ok(_)) => Some(format!(
                    "replay diverged at slot {}: the code returned while history recorded {} commands",
                    s.next_slot,
                    s.commands.len()
                )),
                Some(Err(_)) => None,
                None if (s.next_slot as usize) < s.commands.len() => {
                    let missing = &s.commands[s.next_slot as usize];
                    Some(format!(
                        "replay diverged at slot {}: history recorded {:?}({}), the code no longer asks for it",
                        s.next_slot, missing.kind, missing.name
                    ))
                }
                None => None,
            };
            if let Some(message) = divergence {
                let failure = Failure { kind: crate::context::NONDETERMINISM.to_owned(), message, details: None };
                s.error = Some(failure.clone());
                drop(s);
                exec.finish(Err(failure));
                return Ok(exec);
            }
        }
        drop(s);
        Ok(exec)
    }

    /// Whether this execution, kept from an earlier step, is where a replay of `h` would leave
    /// the code: the same generation, every recorded command issued and every logged completion
    /// delivered, still waiting. A cheap check of what the partition core's etag already proves.
    pub(super) fn fits(&self, h: &OrchestrationHistory) -> bool {
        let s = self.shared.borrow();
        self.fut.is_some()
            && self.outcome.is_none()
            && h.status == OrchestrationStatus::Running
            && !s.replaying
            && s.error.is_none()
            && s.generation == h.generation
            && s.commands.len() == h.commands.len()
            && s.next_slot as usize == h.commands.len()
            && s.delivered.len() == h.log.len()
            && s.reissue.is_empty()
            && s.effects.is_empty()
    }

    /// What the code's side of this execution holds, for comparing a live execution with a replay
    /// of the same history (the simulator's differential check). The custom status is left out:
    /// the history holds it once a step ends.
    pub(super) fn fingerprint(&self) -> String {
        let s = self.shared.borrow();
        let mut delivered: Vec<_> = s.delivered.iter().collect();
        delivered.sort_by_key(|(slot, _)| **slot);
        format!(
            "generation {} next_slot {} now {} random {} finished {} commands {:?} delivered {:?} waits {:?} \
             abandoned {:?} children {:?} lock {:?}",
            s.generation,
            s.next_slot,
            s.now,
            s.random_calls,
            self.fut.is_none(),
            s.commands,
            delivered,
            s.waits,
            s.abandoned,
            s.children,
            s.lock,
        )
    }

    pub(super) fn set_delivered(&self, slot: u32, completion: Completion, position: usize, at: i64) {
        let mut s = self.shared.borrow_mut();
        s.delivered.insert(slot, (completion, position));
        s.waits.remove(&slot);
        s.now = at;
    }

    /// Deliver a new completion: append it to the log, then poll.
    pub(super) fn deliver(&mut self, h: &mut OrchestrationHistory, slot: u32, completion: Completion, at: i64) {
        h.log.push(LogEntry { slot, completion: completion.clone(), at });
        self.set_delivered(slot, completion, h.log.len() - 1, at);
        self.poll();
    }

    pub(super) fn poll(&mut self) {
        let Some(fut) = self.fut.as_mut() else { return };
        let polled = guarded(|| fut.as_mut().poll(&mut Context::from_waker(Waker::noop())));
        let error = self.shared.borrow().error.clone();
        match (polled, error) {
            (_, Some(failure)) => self.finish(Err(failure)),
            (Ok(Poll::Ready(result)), None) => self.finish(result),
            (Ok(Poll::Pending), None) => {}
            (Err(panic), None) => {
                self.finish(Err(Failure::new("Panic", format!("orchestration code panicked: {panic}"))))
            }
        }
    }

    pub(super) fn finish(&mut self, outcome: Result<Payload, Failure>) {
        self.discard();
        self.outcome = Some(outcome);
    }

    /// Drop the code's future, catching a panic of its drop (application code may hold values
    /// whose drop panics across an await): it must not unwind through the engine.
    pub(super) fn discard(&mut self) {
        if let Some(fut) = self.fut.take() {
            if let Err(panic) = guarded(move || drop(fut)) {
                tracing::debug!(%panic, "an orchestration's code panicked as it was dropped");
            }
        }
    }

    /// The next buffered completion the code can take now: early replies for issued slots in
    /// arrival order first, then buffered external events for the lowest open wait.
    pub(super) fn next_deliverable(&self, h: &mut OrchestrationHistory) -> Option<(u32, Completion)> {
        let s = self.shared.borrow();
        if let Some(i) = h.early.iter().position(|(slot, _)| *slot < s.next_slot) {
            return Some(h.early.remove(i));
        }
        for (slot, name) in &s.waits {
            if s.abandoned.contains(slot) {
                continue;
            }
            if let Some(i) = h.inbox.iter().position(|(n, _)| n == name) {
                let (_, payload) = h.inbox.remove(i).expect("position is in range");
                return Some((*slot, Completion::Value(payload)));
            }
        }
        None
    }
}
