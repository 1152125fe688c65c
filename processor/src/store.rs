//! The storage seam: instance blobs with etags, committed by compare-and-set, and a timer set per
//! partition. The Redis store (runtime) and [`MemoryStore`] (simulation, `durable dev`, tests of
//! pure logic) implement [`Store`].
//!
//! # Contract
//! - [`Store::commit`] applies each [`Write`] atomically and independently: the blob *and* its
//!   timers are written only if the instance's etag still equals `expected` (`None`: the instance
//!   must not exist). A write that loses gets [`CommitOutcome::Conflict`]; the driver discards its
//!   step and re-runs it from a fresh load. Many writes per call let a partition commit a group
//!   of instances in one round trip.
//! - Timers are per partition (the partition of the instance that parked them).
//!   [`Store::claim_due_timers`] atomically moves due timers to the partition's *release queue*,
//!   giving each the next sequence number of the partition's timer stream, and returns the whole
//!   queue (earlier unacknowledged claims first). The driver stamps each released event with
//!   origin `t<partition>`/seq, produces them in seq order, then calls [`Store::ack_timers`]. A
//!   crash in between re-releases the same events with the same seq; receivers drop the copies.
//! - Fencing: [`Store::take`] gives a partition's new owner the next *epoch* of the partition.
//!   [`Store::commit_fenced`] is [`Store::commit`] on condition that the partition's epoch is
//!   still the one given: once a newer owner fenced the partition, every write of an older one
//!   gets [`CommitOutcome::Conflict`]. The runtime fences the commits of local rounds, whose
//!   inputs are not in the log (see `runtime`).
//! - Lost state is detected: each partition has an *applied mark* that only goes up
//!   ([`Store::mark_applied`], [`Store::commit_applied`]); a processor raises it before it stores
//!   an offset in Kafka, and a new owner compares it with Kafka's committed offset
//!   ([`Taken::check`]). Etags, timer seqs and epochs of a store that can lose writes must stay
//!   unique across the loss (the Redis store derives them from its clock).
//! - The instance index: a write with [`Write::index`] puts that entry in the partition's index
//!   in the same atomic step as the blob, and moves the instance from the count of its previous
//!   group to the count of its new one. [`Store::list`] reads entries in id byte order after a
//!   given id; [`Store::counts`] reads the counts. A write with [`Write::expire`] takes the
//!   instance out of the index and its count instead, and lets the key expire.

pub mod memory;
#[cfg(feature = "runtime")]
pub mod redis;

use std::future::Future;

#[cfg(feature = "runtime")]
pub use self::redis::{RedisStore, StoreHealth};
pub use memory::MemoryStore;

/// A stored blob and its etag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The serialized [`InstanceRecord`](crate::InstanceRecord).
    pub blob: Vec<u8>,
    /// Changes on every successful write.
    pub etag: u64,
}

/// A delayed event to park.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerEntry {
    /// When to release it (ms since the Unix epoch).
    pub fire_at: i64,
    /// The encoded envelope (no origin).
    pub envelope: Vec<u8>,
}

/// One compare-and-set write.
#[derive(Debug, Clone)]
pub struct Write {
    /// Canonical instance id.
    pub id: String,
    /// The etag the step was computed from; `None` if the instance did not exist.
    pub expected: Option<u64>,
    /// The new blob, or (with `append`) bytes to append to the stored one.
    pub blob: Vec<u8>,
    /// Append `blob` to the stored blob instead of replacing it (a running orchestration's step,
    /// [`InstanceRecord::to_delta`](crate::InstanceRecord::to_delta)): the stored blob is then
    /// what was there followed by `blob`, and a later write without `append` replaces all of it.
    pub append: bool,
    /// Delayed events parked with this write.
    pub timers: Vec<TimerEntry>,
    /// The instance's entry in the partition's index after this write (see [`Store::list`]);
    /// `None` leaves the index as it is.
    pub index: Option<Indexed>,
    /// `Some(ms)`: the record holds nothing any more (a purged instance, or one whose every
    /// event was refused): it leaves the index, and the stored key expires `ms` after this
    /// write unless it is written again (a store without a clock may keep it). `None`: the key
    /// does not expire.
    pub expire: Option<u64>,
}

/// An instance's entry in its partition's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Its type, `<kind>:<name>` ([`crate::index::Summary::type_name`]).
    pub type_name: String,
    /// Its status word: it is counted under `<type>|<status>`. The entry starts with it and a
    /// `|` (the store reads the previous status from there).
    pub status: String,
    /// Its [`crate::index::Summary::entry`].
    pub entry: String,
}

impl Indexed {
    /// The entry of `summary`.
    pub fn of(summary: &crate::index::Summary) -> Self {
        Self { type_name: summary.type_name(), status: summary.status.clone(), entry: summary.entry() }
    }

    /// The group it is counted under.
    pub fn group(&self) -> String {
        crate::index::group(&self.type_name, &self.status)
    }
}

/// The result of one [`Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written; the new etag.
    Committed {
        /// The etag now stored.
        etag: u64,
    },
    /// Someone else wrote first; nothing was written.
    Conflict,
}

/// A released timer, waiting to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedTimer {
    /// Sequence number in the partition's timer stream.
    pub seq: i64,
    /// When it was due.
    pub fire_at: i64,
    /// The encoded envelope (no origin yet).
    pub envelope: Vec<u8>,
}

/// What [`Store::take`] found of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The new owner's epoch.
    pub epoch: u64,
    /// The applied mark (see [`Store::mark_applied`]); `None` if never raised.
    pub applied: Option<i64>,
    /// Whether the partition had been taken before (it had an epoch).
    pub known: bool,
}

/// Whether a partition's state in the store is whole, given Kafka's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The store has applied at least everything Kafka says was processed.
    Whole,
    /// The partition predates applied marks (written by an older version): raise the mark to
    /// Kafka's committed offset and go on.
    Adopt,
    /// The store is behind Kafka: it restarted empty, was rolled back, or was restored from an
    /// older copy. The partition must not be processed until an operator accepts the loss.
    Lost,
}

impl Taken {
    /// The rule for lost state: Kafka's committed offset (`None`: the group never committed
    /// one) is above the applied mark, or there is no mark and no trace of the partition
    /// although Kafka says records of it were processed.
    pub fn check(&self, committed: Option<i64>) -> Continuity {
        match (committed.filter(|&c| c > 0), self.applied) {
            (None, _) => Continuity::Whole,
            (Some(c), Some(applied)) if c > applied => Continuity::Lost,
            (Some(_), Some(_)) => Continuity::Whole,
            (Some(_), None) if self.known => Continuity::Adopt,
            (Some(_), None) => Continuity::Lost,
        }
    }
}

/// Why the store could not answer, with its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", kind.prefix())]
pub struct StoreError {
    /// What a driver does about it.
    pub kind: StoreErrorKind,
    /// What happened, and what to check.
    pub message: String,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Not reachable or not answering for now: back off, retry, do not acknowledge input.
    Unavailable,
    /// It answered something no store of this contract answers (a malformed reply, a corrupt
    /// timer): retried like an unavailable store, and worth an operator's look.
    Malformed,
    /// The settings cannot work (a bad URL, an unreadable CA, an unsupported combination):
    /// retrying does not help; fix the configuration.
    Misconfigured,
}

impl StoreErrorKind {
    fn prefix(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "store unavailable: ",
            StoreErrorKind::Malformed => "store answered something unexpected: ",
            StoreErrorKind::Misconfigured => "",
        }
    }
}

impl StoreError {
    /// A [`StoreErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { kind: StoreErrorKind::Unavailable, message: message.into() }
    }

    /// A [`StoreErrorKind::Malformed`] error.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self { kind: StoreErrorKind::Malformed, message: message.into() }
    }

    /// A [`StoreErrorKind::Misconfigured`] error.
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Self { kind: StoreErrorKind::Misconfigured, message: message.into() }
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Instance blobs and timers (see the module docs for the contract).
pub trait Store: Send + Sync + 'static {
    /// Load the blobs of `ids` (all in `partition`), in order.
    fn load(&self, partition: u32, ids: &[String]) -> impl Future<Output = StoreResult<Vec<Option<Stored>>>> + Send;

    /// Apply the writes, each atomically and independently; outcomes in order.
    fn commit(
        &self,
        partition: u32,
        writes: Vec<Write>,
    ) -> impl Future<Output = StoreResult<Vec<CommitOutcome>>> + Send;

    /// [`Store::commit`] of a group of `<prefix>.events` records that ends before offset
    /// `applied`, raising the partition's applied mark to it (see [`Store::mark_applied`]) in the
    /// same step. `Err(mark)`, with nothing written, if the mark is below `floor` — the mark this
    /// owner saw or raised before: the store lost writes under it (see [`Taken::check`]).
    fn commit_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        applied: i64,
        writes: Vec<Write>,
    ) -> impl Future<Output = StoreResult<Result<Vec<CommitOutcome>, Option<i64>>>> + Send;

    /// Take `partition` for a new owner: its epoch goes up and is returned, with what the
    /// store knows of the partition (see [`Taken::check`]). From now on
    /// [`Store::commit_fenced`] with an older epoch writes nothing.
    fn take(&self, partition: u32) -> impl Future<Output = StoreResult<Taken>> + Send;

    /// [`Store::take`]'s epoch alone.
    fn fence(&self, partition: u32) -> impl Future<Output = StoreResult<u64>> + Send {
        async move { self.take(partition).await.map(|t| t.epoch) }
    }

    /// Raise the partition's *applied mark* to `next` (it never goes down): every record of
    /// `<prefix>.events` below offset `next` has been applied and its effects committed. A
    /// processor stores an offset in Kafka only after raising the mark to it, so a mark below
    /// Kafka's committed offset means the store lost writes.
    /// `Err(mark)`, with nothing written, if the mark is below `floor` (as for
    /// [`Store::commit_applied`]).
    fn mark_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        next: i64,
    ) -> impl Future<Output = StoreResult<Result<(), Option<i64>>>> + Send;

    /// The owner of `partition` found its state lost ([`Continuity::Lost`]) and waits for an
    /// operator.
    fn record_loss(&self, partition: u32) -> impl Future<Output = StoreResult<()>> + Send;

    /// An operator accepts that `partition`'s state was lost (`durable accept-loss`): its owner
    /// goes on from Kafka's committed offset with what the store still has. False (nothing
    /// done) if no loss of it is recorded: an acceptance never waits for a future loss.
    fn accept_loss(&self, partition: u32) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Whether an operator accepted the recorded loss of `partition`; if so the acceptance and
    /// the record are used up.
    fn loss_accepted(&self, partition: u32) -> impl Future<Output = StoreResult<bool>> + Send;

    /// [`Store::commit`], if `epoch` is still the partition's epoch; otherwise every write gets
    /// [`CommitOutcome::Conflict`] and nothing is written.
    fn commit_fenced(
        &self,
        partition: u32,
        epoch: u64,
        writes: Vec<Write>,
    ) -> impl Future<Output = StoreResult<Vec<CommitOutcome>>> + Send;

    /// Move up to `max` timers due at `now` to the release queue; return the whole queue.
    fn claim_due_timers(
        &self,
        partition: u32,
        now: i64,
        max: usize,
    ) -> impl Future<Output = StoreResult<Vec<ReleasedTimer>>> + Send;

    /// Forget released timers with seq ≤ `up_to_seq` (they were produced).
    fn ack_timers(&self, partition: u32, up_to_seq: i64) -> impl Future<Output = StoreResult<()>> + Send;

    /// Fire time of the earliest parked timer of `partition`, and how many are parked.
    fn timer_backlog(&self, partition: u32) -> impl Future<Output = StoreResult<(Option<i64>, usize)>> + Send;

    /// Up to `count` entries of `partition`'s index whose ids start with `prefix`, after the id
    /// `after` (`None`: from the first), in id byte order: `(id, entry)` (see
    /// [`crate::index::Summary::from_entry`]).
    fn list(
        &self,
        partition: u32,
        prefix: &str,
        after: Option<&str>,
        count: usize,
    ) -> impl Future<Output = StoreResult<Vec<(String, String)>>> + Send;

    /// `partition`'s indexed instances, most recently changed first (by `updated_at`, then by
    /// id, both descending), as `(updated_at, id, entry)`: those after `before` in that order
    /// (`None`: from the newest), at most `count`.
    fn recent(
        &self,
        partition: u32,
        before: Option<(i64, &str)>,
        count: usize,
    ) -> impl Future<Output = StoreResult<Vec<(i64, String, String)>>> + Send;

    /// How many of `partition`'s indexed instances are in each group (groups with none left
    /// may be absent or 0).
    fn counts(&self, partition: u32) -> impl Future<Output = StoreResult<Vec<(String, u64)>>> + Send;

    /// The deployment secrets the store keeps for the processors' seals (see [`crate::trust`])
    /// when `DURABLE_SECRET` is not set: the one to seal with — the one kept, or `offer` (kept
    /// from now on) if there is none, so every processor of a deployment gets the same one — and
    /// every secret to accept: the kept one, and each a processor said it `sealed_with`. A
    /// processor asks again now and then, saying what it seals with: should the store lose the
    /// kept one (Redis restarted without its data) and another processor keep a new one, the
    /// older processors seal with the new one from then on and every processor still accepts the
    /// old one, so nothing sealed in between is refused.
    fn deployment_secret(
        &self,
        offer: Vec<u8>,
        sealed_with: Option<Vec<u8>>,
    ) -> impl Future<Output = StoreResult<Secrets>> + Send;
}

/// What [`Store::deployment_secret`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The secret to seal with.
    pub current: Vec<u8>,
    /// Every secret to accept (the current one first), at most [`Secrets::KEPT`].
    pub accepted: Vec<Vec<u8>>,
}

impl Secrets {
    /// Most secrets accepted at once: the newest.
    pub const KEPT: usize = 8;

    /// `current` first, then the others of `accepted` in their order, without repeats.
    pub fn new(current: Vec<u8>, accepted: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let mut all = vec![current.clone()];
        for s in accepted {
            if !all.contains(&s) && all.len() < Self::KEPT {
                all.push(s);
            }
        }
        Self { current, accepted: all }
    }
}

#[cfg(feature = "runtime")]
/// The store a runtime runs on: Redis in production and tests, memory for `durable dev`.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// [`RedisStore`].
    Redis(RedisStore),
    /// [`MemoryStore`], shared.
    Memory(std::sync::Arc<MemoryStore>),
}

#[cfg(feature = "runtime")]
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Redis($s) => $call.await,
            AnyStore::Memory($s) => $call.await,
        }
    };
}

#[cfg(feature = "runtime")]
impl Store for AnyStore {
    async fn load(&self, partition: u32, ids: &[String]) -> StoreResult<Vec<Option<Stored>>> {
        delegate!(self, s => s.load(partition, ids))
    }

    async fn commit(&self, partition: u32, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        delegate!(self, s => s.commit(partition, writes))
    }

    async fn commit_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        applied: i64,
        writes: Vec<Write>,
    ) -> StoreResult<Result<Vec<CommitOutcome>, Option<i64>>> {
        delegate!(self, s => s.commit_applied(partition, floor, applied, writes))
    }

    async fn take(&self, partition: u32) -> StoreResult<Taken> {
        delegate!(self, s => s.take(partition))
    }

    async fn mark_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        next: i64,
    ) -> StoreResult<Result<(), Option<i64>>> {
        delegate!(self, s => s.mark_applied(partition, floor, next))
    }

    async fn record_loss(&self, partition: u32) -> StoreResult<()> {
        delegate!(self, s => s.record_loss(partition))
    }

    async fn accept_loss(&self, partition: u32) -> StoreResult<bool> {
        delegate!(self, s => s.accept_loss(partition))
    }

    async fn loss_accepted(&self, partition: u32) -> StoreResult<bool> {
        delegate!(self, s => s.loss_accepted(partition))
    }

    async fn commit_fenced(&self, partition: u32, epoch: u64, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        delegate!(self, s => s.commit_fenced(partition, epoch, writes))
    }

    async fn claim_due_timers(&self, partition: u32, now: i64, max: usize) -> StoreResult<Vec<ReleasedTimer>> {
        delegate!(self, s => s.claim_due_timers(partition, now, max))
    }

    async fn ack_timers(&self, partition: u32, up_to_seq: i64) -> StoreResult<()> {
        delegate!(self, s => s.ack_timers(partition, up_to_seq))
    }

    async fn timer_backlog(&self, partition: u32) -> StoreResult<(Option<i64>, usize)> {
        delegate!(self, s => s.timer_backlog(partition))
    }

    async fn list(
        &self,
        partition: u32,
        prefix: &str,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        delegate!(self, s => s.list(partition, prefix, after, count))
    }

    async fn recent(
        &self,
        partition: u32,
        before: Option<(i64, &str)>,
        count: usize,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        delegate!(self, s => s.recent(partition, before, count))
    }

    async fn counts(&self, partition: u32) -> StoreResult<Vec<(String, u64)>> {
        delegate!(self, s => s.counts(partition))
    }

    async fn deployment_secret(&self, offer: Vec<u8>, sealed_with: Option<Vec<u8>>) -> StoreResult<Secrets> {
        delegate!(self, s => s.deployment_secret(offer, sealed_with))
    }
}
