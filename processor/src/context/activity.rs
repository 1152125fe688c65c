//! Activities: side-effecting `async fn(input) -> Result<output>`, run after the commit that
//! scheduled them, at least once; their result is recorded once in the caller's history (a
//! reply to an already completed slot is dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use durable_schemas::{Envelope, Event, Failure, Payload};

use crate::access::Principal;
use crate::id::InstanceId;

/// What an activity sees besides its input.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    /// This invocation's id (unique per call and attempt).
    pub id: InstanceId,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The orchestration that called it.
    pub caller: String,
    /// The principal the call acts for (who started the calling orchestration); `None` when it
    /// was started anonymously.
    pub principal: Option<Principal>,
    /// Heartbeats so far (see [`ActivityContext::heartbeat`]).
    beats: Arc<AtomicU64>,
    /// Set when nobody waits for the result any more (see [`ActivityContext::cancelled`]).
    cancel: Arc<Cancel>,
}

/// A cancellation flag and the tasks waiting for it.
#[derive(Debug, Default)]
struct Cancel {
    set: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl ActivityContext {
    /// Tell the runtime this call is making progress: the activity timeout
    /// (`DURABLE_ACTIVITY_TIMEOUT`) counts from the last heartbeat, so a long call that
    /// heartbeats more often than that runs to its end, and one that stops heartbeating fails
    /// with kind `Timeout` one timeout after its last heartbeat.
    pub fn heartbeat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// How many heartbeats this call sent (what the runtime's watchdog reads).
    pub fn heartbeats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Whether this call was cancelled: its caller no longer waits for the result (it was
    /// terminated, or finished, purged or restarted in the meantime). Cancellation is
    /// cooperative: the call runs on until it returns, and what it returns is dropped by the
    /// caller — so a long call should check this (or await [`ActivityContext::cancelled`])
    /// between its steps and stop early.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.set.load(Ordering::Acquire)
    }

    /// Completes once the call is cancelled (see [`ActivityContext::is_cancelled`]); race it
    /// against the work, e.g. with `tokio::select!`.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        Cancelled(self.cancel.clone())
    }

    /// Cancel the call: what the runtime does when its caller no longer waits for it (and what
    /// a test of an activity does to see it stop).
    pub fn cancel(&self) {
        self.cancel.set.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.cancel.waiting.lock().expect("cancel lock"));
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// The future of [`ActivityContext::cancelled`].
struct Cancelled(Arc<Cancel>);

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = self.0.waiting.lock().expect("cancel lock");
        // Checked again under the lock: `cancel` sets the flag before it takes the wakers.
        if self.0.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A `ScheduleActivity` request taken apart: where the reply goes and what to run.
#[derive(Debug, Clone)]
pub struct ActivityRequest {
    /// The activity invocation.
    pub id: InstanceId,
    /// Input payload.
    pub input: Payload,
    /// Attempt number.
    pub attempt: u32,
    /// This call's own timeout, if its caller set one.
    pub timeout: Option<std::time::Duration>,
    /// Address of the caller.
    pub reply_to: String,
    /// Correlation to quote.
    pub correlation: String,
    /// The request's event id (the reply's id is derived from it).
    pub event_id: String,
    /// The principal it acts for.
    pub principal: Option<Principal>,
}

impl ActivityRequest {
    /// Read a request; `Err(reason)` for anything that is not `ReplyTo(ScheduleActivity)` to an
    /// activity id.
    pub fn parse(envelope: &Envelope) -> Result<Self, String> {
        let id = InstanceId::parse(&envelope.target).map_err(|e| e.to_string())?;
        let mut body = &envelope.body;
        let mut principal = None;
        loop {
            match body {
                Event::WithPrincipal { user, roles, inner } => {
                    principal.get_or_insert_with(|| Principal::new(user.clone(), roles.clone()));
                    body = inner;
                }
                Event::WithLock { inner, .. } => body = inner,
                _ => break,
            }
        }
        match body {
            Event::ReplyTo { address, correlation, inner } => match inner.as_ref() {
                Event::ScheduleActivity { input, attempt, timeout_ms } => Ok(Self {
                    id,
                    input: input.clone(),
                    attempt: (*attempt).max(1) as u32,
                    timeout: timeout_ms.map(|ms| std::time::Duration::from_millis(ms.max(1) as u64)),
                    reply_to: address.clone(),
                    correlation: correlation.clone(),
                    event_id: envelope.id.clone(),
                    principal,
                }),
                other => Err(format!("activity {} cannot handle {}", envelope.target, other.name())),
            },
            other => {
                Err(format!("activity {} expects ReplyTo(ScheduleActivity), got {}", envelope.target, other.name()))
            }
        }
    }

    /// The context the activity function gets.
    pub fn context(&self) -> ActivityContext {
        ActivityContext {
            id: self.id.clone(),
            attempt: self.attempt,
            caller: self.reply_to.clone(),
            principal: self.principal.clone(),
            beats: Arc::new(AtomicU64::new(0)),
            cancel: Arc::new(Cancel::default()),
        }
    }

    /// Whether the caller, whose stored record is `caller`, still waits for this call's
    /// result: it exists, runs (or is suspended) in the generation that made the call, and has
    /// not had that slot answered. When it no longer does, the runtime cancels the call.
    pub fn awaited_by(&self, caller: Option<&crate::history::InstanceRecord>) -> bool {
        let Some((generation, slot)) = crate::history::parse_correlation(&self.correlation) else { return true };
        caller.and_then(|r| r.orchestration()).is_some_and(|h| {
            h.generation == generation
                && !h.status.is_finished()
                && !h.status.is_pending()
                && !h.log.iter().any(|e| e.slot == slot)
        })
    }

    /// The reply for `result`, with an id derived from the request's (so a re-run's reply is
    /// recognised as the same event). A result over `max_bytes` is replaced by a
    /// [`RESULT_TOO_LARGE`] failure ([`bounded_result`]): the caller hears of it.
    pub fn reply_bounded(&self, result: Result<Payload, Failure>, now: i64, max_bytes: usize) -> Envelope {
        self.reply(bounded_result(result, max_bytes, &format!("activity {}", self.id)), now)
    }

    /// The reply for `result`, with an id derived from the request's (so a re-run's reply is
    /// recognised as the same event).
    pub fn reply(&self, result: Result<Payload, Failure>, now: i64) -> Envelope {
        let correlation = self.correlation.clone();
        let body = match result {
            Ok(result) => Event::ActivityCompleted { correlation, result },
            Err(failure) => Event::ActivityFailed { correlation, failure },
        };
        let mut e = Envelope::new(format!("{}/reply", self.event_id), self.reply_to.clone(), now, body);
        e.source = Some(self.id.canonical());
        e
    }
}

/// The failure kind of a result too large to deliver to its caller.
pub const RESULT_TOO_LARGE: &str = "ResultTooLarge";

/// `result` as it may travel back to a caller: a value over `max_bytes` becomes a
/// [`RESULT_TOO_LARGE`] failure that says so (`what` made it), and a failure's message is cut to
/// fit — so an oversized answer reaches the caller as a failure instead of being refused on its
/// way and leaving the caller waiting forever. One rule for activity results and entity-call
/// results, applied by the partition core, the Harness and the engine alike.
pub fn bounded_result(result: Result<Payload, Failure>, max_bytes: usize, what: &str) -> Result<Payload, Failure> {
    match result {
        Ok(value) if value.data.len() > max_bytes => Err(Failure::new(
            RESULT_TOO_LARGE,
            format!(
                "{what} returned {} bytes, over the limit of {max_bytes} (DURABLE_MAX_STATE_BYTES)",
                value.data.len()
            ),
        )),
        Err(mut failure) if failure.message.len() + failure.kind.len() > max_bytes => {
            let mut cut = max_bytes.saturating_sub(failure.kind.len()).min(failure.message.len()) / 2;
            while !failure.message.is_char_boundary(cut) {
                cut -= 1;
            }
            failure.message.truncate(cut);
            failure.message.push_str(" … (cut to fit DURABLE_MAX_STATE_BYTES)");
            Err(failure)
        }
        other => other,
    }
}
