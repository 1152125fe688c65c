//! The partition core: the commit protocol of one owned partition of `<prefix>.events`, as a pure
//! state machine (no I/O, no clock, no async). The runtime drives it with Kafka and Redis
//! (`runtime::worker`); the simulator drives the very same code with its seeded scheduler and the
//! in-memory store. Its shape follows quinn-proto: the driver feeds inputs, asks [`Partition::poll`]
//! what to do next, does it, and reports back.
//!
//! # Call order (one group at a time)
//! 1. [`Partition::begin`] with records read from the partition, in offset order, and the time.
//!    The core decodes and routes them: undecodable, oversized, misrouted records, unsealed
//!    records carrying what only processors may send ([`crate::trust`]) and invalid activity
//!    invocations become dead letters; events for instances are grouped per instance;
//!    activity invocations that arrived through the log are kept to run after the commit.
//! 2. Loop on [`Partition::poll`] until it returns [`Io::Done`]:
//!    - [`Io::Load`]: load those ids from the store (one round trip), answer
//!      [`Partition::loaded`]. Instances whose records are in the core's cache are not asked for.
//!    - [`Io::Commit`]: commit the writes — fenced with the epoch if one is given — answer
//!      [`Partition::committed`] with the outcomes in order. Instances that lost the etag check
//!      are reloaded and stepped again (only those: a partial rerun).
//!    - [`Io::Run`]: run these activity invocations (concurrently is fine), answer
//!      [`Partition::ran`] with one [`Ran`] per invocation, in order, and the time.
//!    - [`Io::Produce`]: enqueue these records in order (an idempotent producer); no answer.
//!    - [`Io::Settle`]: wait until every record enqueued so far is acknowledged, answer
//!      [`Partition::settled`].
//!    - [`Io::Done`]: the group is applied and produced: store `last` as the consumed offset,
//!      and begin the next group with `rest` (records the group left for later) followed by
//!      whatever else was read.
//! 3. On a transient failure of any I/O, [`Partition::abandon`] gives the group's records back;
//!    begin again with them after a pause. Nothing the core asked for needs undoing: a commit
//!    that happened is found again as a duplicate, an outbox that may not have left is resent.
//!
//! # The protocol (what the sequence above guarantees)
//! - **Commit before effects.** Every instance of the group is stepped by the pure engine and
//!   committed by compare-and-set on its etag before anything it emits is produced; the outbox
//!   is produced in input-offset order (the receivers' origin marks rely on that order).
//! - **Partial reruns.** Instances that lose a commit are reloaded and re-stepped; the ones that
//!   won keep their result.
//! - **Resend before a new commit.** If an instance's step both resends an earlier outbox (some of
//!   its records came again) and would commit a new one, nothing of the pass is committed: the
//!   group ends before that instance's first new record ([`Done::rest`] starts there), so the
//!   resend leaves before the next commit replaces the outbox.
//! - **Local rounds.** Unless activities are spread, the activity invocations committed by the
//!   group are not produced but run here ([`Io::Run`]) once every event produced so far is
//!   acknowledged ([`Io::Settle`]); their replies are stepped into their callers and committed
//!   *fenced* with this core's epoch, only when the step emits nothing but more invocations and
//!   its state. The new outbox answers to a record of this group, whose offset is not stored
//!   yet, so a crash before it leaves makes the next owner resend it; a zombie fenced out by a
//!   newer owner commits nothing. Replies not applied go through the log. At most
//!   [`Settings::local_rounds`] rounds per group.
//! - **Deferred local commits.** A local step that only calls activities (all runnable here, no
//!   timers) is not committed while another round follows: its calls run in the next round and
//!   the caller's next step continues from it, so a chain of steps costs one commit, at its end
//!   (the round limit, a step that sets a timer or calls nothing, or one that cannot stay local —
//!   then the deferred step is committed in its place, stepped again from a copy of the record
//!   last committed with the chain's inputs, and that step's replies go through the log after
//!   it). Nothing a
//!   deferred step decided leaves the core before that commit: its calls only run (activities
//!   are at least once), no state record is produced for it, and if the commit fails or never
//!   happens (a crash, a newer owner) only the replies to the *committed* record's calls go
//!   through the log; the record stays as last committed, its outbox holding those calls, and a
//!   replay makes the later calls again. The ones run already may run again: the local
//!   activities of Temporal trade the same way.
//! - **Offsets last.** [`Io::Done`] comes only after the final [`Io::Settle`].
//! - **One state record per instance and group**, its latest version, produced at the end.
//! - **Live orchestrations.** The cache keeps, with a running orchestration's committed record,
//!   the code of the step that committed it ([`Live`]); the next step continues that code
//!   instead of replaying the history. The two travel together and only under the etag the
//!   commit returned, so a record written by anyone else (lost etag check) is reloaded and
//!   replayed. Dropping the code (the byte bound, a restart) costs one replay and changes
//!   nothing else; [`Settings::check_live`] makes every live step also replay and compare.
//! - **Deltas.** A step that only carried a running orchestration's stored history on writes a
//!   delta (its new commands and log entries and its small fields, [`InstanceRecord::to_delta`])
//!   appended to the stored blob, while the deltas stay smaller than the blob last written whole
//!   ([`Shape`]); otherwise the record is written whole, which drops the deltas.
//!
//! Timers are outside groups: the driver claims due timers from the store, produces
//! [`timer_records`] in order, waits for them, and acknowledges them.

mod cache;
mod outbound;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::mem;

use durable_schemas::contract::dead_letter;
use durable_schemas::{Envelope, Failure, Payload};

pub use cache::{Cached, RecordCache, Shape};
pub use outbound::{payload_json, state_record, timer_records, Outgoing, Topic};

use crate::context::ActivityRequest;
use crate::effect::{Effect, StateChange};
use crate::engine::{Delivery, Engine, Live, StepInput, StepOutput};
use crate::error::Error;
use crate::history::InstanceRecord;
use crate::id::{InstanceId, Kind};
use crate::store::{CommitOutcome, Stored, TimerEntry, Write};

/// One record read from the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Option<Vec<u8>>,
    /// Whether a processor of this deployment sealed it (see [`crate::trust`]): an unsealed
    /// record may only carry what outside producers may send.
    pub sealed: bool,
}

/// How a core runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The partition this core owns.
    pub partition: u32,
    /// Partitions of the events topic (to check where a record belongs).
    pub partitions: u32,
    /// The events topic's name (dead letters name it as their source).
    pub events_topic: String,
    /// Records larger than this are dead-lettered unread.
    pub max_event_bytes: usize,
    /// Produce activity invocations by their key's hash (other processors run them) instead of
    /// running them here; no local rounds.
    pub spread_activities: bool,
    /// Most local rounds per group.
    pub local_rounds: usize,
    /// Defer the commit of a local step that only calls activities to its caller's next step
    /// (see the module docs); off, every local step is committed on its own.
    pub defer_local: bool,
    /// Most records the cache keeps.
    pub cache_limit: usize,
    /// Most bytes of records (as stored) the cache keeps.
    pub cache_bytes: usize,
    /// Most bytes of live orchestrations (code kept running between steps, see
    /// [`crate::engine::Live`]) the cache keeps; 0 replays every step.
    pub live_limit: usize,
    /// Step every live orchestration a second time from its record by a full replay, and count
    /// a difference as a mismatch ([`Partition::take_mismatches`]); the replay's result is used.
    /// The simulator's differential check; too slow for production.
    pub check_live: bool,
    /// How long the store keeps an emptied record (a purged instance) before it expires, in
    /// ms: its dedup marks recognise late copies of what it applied until then.
    pub purge_grace_ms: u64,
}

impl Settings {
    /// Most local rounds one group runs by default; the replies of a further round go through
    /// the broker, so that an orchestration calling activities in a long loop cannot hold its
    /// partition's other records back.
    pub const LOCAL_ROUNDS: usize = 16;
    /// Most records a core caches by default.
    pub const CACHE_LIMIT: usize = 20_000;
    /// Most bytes of records a core caches by default: 64 MiB.
    pub const CACHE_BYTES: usize = 64 << 20;
    /// Most bytes of live orchestrations a core keeps by default: 32 MiB.
    pub const LIVE_LIMIT: usize = 32 << 20;
    /// How long an emptied record stays by default: an hour, far past any redelivery.
    pub const PURGE_GRACE_MS: u64 = 3_600_000;
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Io {
    /// Load these instances (all of this partition) and answer [`Partition::loaded`].
    Load(Vec<String>),
    /// Commit these writes — with [`Store::commit_fenced`](crate::Store::commit_fenced) when
    /// `epoch` is set — and answer [`Partition::committed`].
    Commit {
        /// The writes, each applied atomically and independently.
        writes: Vec<Write>,
        /// The epoch to fence with.
        epoch: Option<u64>,
    },
    /// Run these activity invocations and answer [`Partition::ran`].
    Run(Vec<ActivityRequest>),
    /// Enqueue these records, in order. No answer.
    Produce(Vec<Outgoing>),
    /// Wait for every enqueued record's acknowledgement, then answer [`Partition::settled`].
    Settle,
    /// The group is done.
    Done(Done),
}

/// The end of a group.
#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    /// The last offset the group applied: store it as consumed.
    pub last: i64,
    /// Records the group did not apply (it ended early): begin the next group with them.
    pub rest: Vec<Record>,
}

/// How one activity invocation ended.
#[derive(Debug, Clone)]
pub enum Ran {
    /// It returned.
    Returned(Result<Payload, Failure>),
    /// It panicked (the message): a dead letter, and a `Panic` failure for its caller.
    Panicked(String),
    /// It returned after it was cancelled because its caller no longer waits for it (a record
    /// behind it ends the caller): its reply goes through the log, after that record, instead of
    /// being applied here first.
    Cancelled(Result<Payload, Failure>),
}

/// Counts of what the core did, for the driver's metrics ([`Partition::take_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful writes.
    pub commits: u64,
    /// Writes that lost the etag check (or were fenced out).
    pub conflicts: u64,
    /// Instances stepped again after a conflict.
    pub reruns: u64,
    /// Deliveries applied.
    pub applied: u64,
    /// Deliveries dropped (duplicates, redeliveries, stale replies …).
    pub dropped: u64,
    /// Dead letters produced.
    pub dead_letters: u64,
    /// Instance records found in the cache.
    pub cache_hits: u64,
    /// Instance records loaded.
    pub cache_misses: u64,
    /// Activities that returned `Ok`.
    pub activities_completed: u64,
    /// Activities that returned `Err`.
    pub activities_failed: u64,
    /// Activities that panicked.
    pub activities_panicked: u64,
    /// Orchestration steps that continued live code instead of replaying the history.
    pub live_steps: u64,
    /// Live orchestrations dropped to keep within [`Settings::live_limit`] (each costs a replay).
    pub live_evicted: u64,
    /// Live steps that differed from a replay of the same record ([`Settings::check_live`]).
    pub live_mismatches: u64,
    /// Local steps whose commit was left to the caller's next step (one commit fewer each).
    pub deferred: u64,
}

/// An instance's part of a group.
#[derive(Debug)]
struct Group {
    id: InstanceId,
    deliveries: Vec<Delivery>,
}

/// Something to send after the commit, keyed by the input offset it answers to.
#[derive(Debug)]
enum Out {
    Effects(Vec<Effect>),
    Dead { key: Vec<u8>, payload: Vec<u8>, reason: String, offset: i64 },
}

/// The envelope a record of the events topic carries, or why it is refused: too large, not an
/// envelope, or (unsealed) carrying what only a processor may send.
fn envelope_of(record: &Record, max_event_bytes: usize, engine: &Engine) -> Result<Envelope, String> {
    let size = record.payload.as_ref().map_or(0, Vec::len);
    if size > max_event_bytes {
        return Err(format!(
            "event of {size} bytes is over the limit of {max_event_bytes} bytes (DURABLE_MAX_EVENT_BYTES)"
        ));
    }
    let mut envelope = match record.payload.as_deref().map(Envelope::decode) {
        None => return Err("empty record: expected an Avro single-object encoded envelope".into()),
        Some(Err(e)) => return Err(format!("cannot decode: {e}")),
        Some(Ok(e)) => e,
    };
    if !record.sealed {
        crate::trust::admit_outside(&mut envelope, engine.policy().ingress.as_ref())?;
    }
    Ok(envelope)
}

/// What `target`'s record `stored` would become if `later` — records of its partition read but
/// not applied yet, in order — were applied now: a dry run of the steps the partition will take
/// (nothing is committed or sent). The runtime asks this while an activity call runs in its
/// caller's partition, to learn whether a terminate waiting behind the call ends the caller, so
/// that the call is cancelled now rather than when it is done. Records that are not for
/// `target`, or that are refused, change nothing.
pub fn peek(
    engine: &Engine,
    settings: &Settings,
    target: &InstanceId,
    mut stored: Option<InstanceRecord>,
    later: &[Record],
    now: i64,
) -> Option<InstanceRecord> {
    for record in later {
        let Ok(envelope) = envelope_of(record, settings.max_event_bytes, engine) else { continue };
        if envelope.target != target.canonical() {
            continue;
        }
        let input = StepInput {
            deliveries: vec![Delivery { envelope, offset: Some(record.offset), sealed: record.sealed }],
            now,
            partition: Some(settings.partition),
            trigger: None,
        };
        stored = Some(engine.step(target, stored, input).record);
    }
    stored
}

/// A step waiting for its commit.
#[derive(Debug)]
struct Stepped {
    id: String,
    out: StepOutput,
    /// The code to keep live once the commit is confirmed.
    live: Option<Live>,
    /// The etag the step was computed from (`None`: the instance did not exist).
    etag: Option<u64>,
    /// What the store holds: as loaded until the write is made ([`write`]), then as written.
    shape: Shape,
}

/// What a caller applied in local rounds since its record was last committed.
#[derive(Debug, Default)]
struct Since {
    /// Replies applied (counted once the commit is confirmed).
    applied: u64,
    /// Deliveries dropped.
    dropped: u64,
    /// The replies that answer calls of the committed record (with the offsets they answer to):
    /// if the next commit fails they reach the caller through the log. Replies to calls made by
    /// a deferred step are not sent: the calls were never committed, and a replay makes them
    /// again.
    answered: Vec<(i64, Envelope)>,
}

/// A caller's step of a local round on its way to a commit.
#[derive(Debug)]
struct LocalStep {
    stepped: Stepped,
    since: Since,
    /// `Some`: the step's activity calls have already run (it was deferred, then its caller could
    /// not go on here); these replies to them go through the log once the step is committed.
    ran: Option<Vec<(i64, Envelope)>>,
}

/// A caller's deferred local step, and how to step it again from the record last committed
/// should the caller's next step not stay local (that step consumes the deferred record).
#[derive(Debug)]
struct Chain {
    /// The deferred step, with its code and the etag and shape of the record last committed.
    stepped: Stepped,
    /// What leads there from `base`, a copy of the record last committed made when the chain
    /// began: the inputs of its steps, in order.
    base: Base,
}

/// The record a chain began from and what it applied since.
#[derive(Debug)]
struct Base {
    record: InstanceRecord,
    inputs: Vec<StepInput>,
    since: Since,
}

/// The activity calls in a record's outbox.
fn calls(record: &InstanceRecord) -> Vec<Envelope> {
    let emitted = record.outbox.effects.iter().filter_map(|e| if let Effect::Emit(e) = e { Some(e) } else { None });
    emitted.cloned().collect()
}

/// An instance's record as the core sees it: absent, readable, or corrupt.
type Loaded = Result<Option<Cached>, Error>;

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Step the pending instances (fetching their records first).
    Step,
    WaitLoad,
    WaitCommit,
    /// Run the activity invocations that arrived through the log.
    LogActivities,
    WaitLogRun,
    /// Produce the outbound records (and collect local invocations).
    Send,
    WaitLocalSettle,
    WaitLocalRun,
    /// Ask for the records of a local round's callers that are not in the cache.
    LocalLoad,
    WaitLocalLoad,
    WaitLocalCommit,
    /// Produce the state records.
    Finish,
    WaitFinalSettle,
    Done,
}

/// The group in flight.
#[derive(Debug)]
struct InFlight {
    now: i64,
    records: Vec<Record>,
    rest: Vec<Record>,
    groups: BTreeMap<String, Group>,
    /// Valid invocations that arrived through the log, with the index of their record.
    activities: Vec<(usize, ActivityRequest)>,
    outbound: Vec<(i64, Out)>,
    phase: Phase,
    /// Instances still to step and commit.
    pending: Vec<String>,
    /// A local round: the callers to load.
    to_load: Vec<String>,
    /// Records of `pending` taken from the cache (`None`: to load).
    fetched: Vec<Option<Cached>>,
    /// Steps waiting for their commit outcomes.
    computed: Vec<Stepped>,
    rounds: usize,
    /// A local round: the invocations running, with the offsets they answer to.
    local: Vec<(i64, Envelope, ActivityRequest)>,
    /// A local round: replies by caller, waiting for the callers' records.
    replies: BTreeMap<String, Vec<(i64, Envelope)>>,
    /// A local round: steps waiting for their commit outcomes.
    stepped: Vec<LocalStep>,
    /// Local steps not committed yet: their calls run in the next round, and the caller's step
    /// after that is committed in their place (see the module docs).
    deferred: BTreeMap<String, Chain>,
    /// The latest state change of each instance committed by the group.
    states: BTreeMap<String, StateChange>,
    /// Who may read each instance the group committed (for its state record).
    readers: BTreeMap<String, Vec<String>>,
}

impl InFlight {
    fn new(records: Vec<Record>, rest: Vec<Record>, now: i64) -> Self {
        Self {
            now,
            records,
            rest,
            groups: BTreeMap::new(),
            activities: Vec::new(),
            outbound: Vec::new(),
            phase: Phase::Step,
            pending: Vec::new(),
            to_load: Vec::new(),
            fetched: Vec::new(),
            computed: Vec::new(),
            rounds: 0,
            local: Vec::new(),
            replies: BTreeMap::new(),
            stepped: Vec::new(),
            deferred: BTreeMap::new(),
            states: BTreeMap::new(),
            readers: BTreeMap::new(),
        }
    }
}

/// The core of one owned partition (see the module docs for the call order).
#[derive(Debug)]
pub struct Partition {
    settings: Settings,
    engine: Engine,
    epoch: u64,
    cache: RecordCache,
    stats: Stats,
    mismatches: Vec<String>,
    group: Option<InFlight>,
}

impl Partition {
    /// The core of `settings.partition`, owned at `epoch` (from
    /// [`Store::fence`](crate::Store::fence) when the owner started).
    pub fn new(settings: Settings, engine: Engine, epoch: u64) -> Self {
        let cache = RecordCache::new(settings.cache_limit, settings.cache_bytes, settings.live_limit);
        Self { settings, engine, epoch, cache, stats: Stats::default(), mismatches: Vec::new(), group: None }
    }

    /// The epoch this core's local commits are fenced with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether a group is in flight.
    pub fn busy(&self) -> bool {
        self.group.is_some()
    }

    /// What the core counted since the last call.
    pub fn take_stats(&mut self) -> Stats {
        self.stats.live_evicted += self.cache.take_evicted();
        mem::take(&mut self.stats)
    }

    /// How the live steps that differed from a replay differed, since the last call
    /// ([`Settings::check_live`]).
    pub fn take_mismatches(&mut self) -> Vec<String> {
        mem::take(&mut self.mismatches)
    }

    /// How many live orchestrations the core keeps, and about how many bytes they hold.
    pub fn live(&self) -> (usize, usize) {
        self.cache.live()
    }

    /// Start a group with `records` (in offset order, at least one) at time `now`.
    ///
    /// # Panics
    /// If a group is in flight or `records` is empty: a driver bug.
    pub fn begin(&mut self, records: Vec<Record>, now: i64) {
        assert!(self.group.is_none(), "a group is in flight: finish or abandon it first");
        assert!(!records.is_empty(), "a group needs records");
        let mut g = InFlight::new(records, Vec::new(), now);
        self.classify(&mut g);
        self.group = Some(g);
    }

    /// Give up the group in flight (an I/O failed): its records, to begin again with later.
    pub fn abandon(&mut self) -> Vec<Record> {
        match self.group.take() {
            Some(mut g) => {
                g.records.append(&mut g.rest);
                g.records
            }
            None => Vec::new(),
        }
    }

    /// What to do next (see the module docs).
    ///
    /// # Panics
    /// If no group is in flight, or the core waits for an answer: a driver bug.
    pub fn poll(&mut self) -> Io {
        let mut g = self.group.take().expect("poll without a group in flight");
        let io = self.advance(&mut g);
        if !matches!(io, Io::Done(_)) {
            self.group = Some(g);
        }
        io
    }

    /// The answer to [`Io::Load`]: the stored records, in the order asked.
    pub fn loaded(&mut self, stored: Vec<Option<Stored>>) {
        let g = self.group.as_mut().expect("loaded without a group in flight");
        let mut stored = stored.into_iter();
        let decode = |s: Option<Stored>| -> Loaded {
            match s {
                None => Ok(None),
                Some(s) => InstanceRecord::from_blob_sized(&s.blob)
                    .map(|(record, whole)| {
                        // The deltas loaded count as deltas: past the bound the next write is whole.
                        let shape = Shape::of(&record, whole, s.blob.len() - whole);
                        Some(Cached { etag: s.etag, record, live: None, shape })
                    })
                    .map_err(|e| Error::corrupt(format!("stored record does not decode: {e}"))),
            }
        };
        let fetched = mem::take(&mut g.fetched);
        let records: Vec<Loaded> = fetched
            .into_iter()
            .map(|cached| match cached {
                Some(cached) => Ok(Some(cached)),
                None => decode(stored.next().flatten()),
            })
            .collect();
        let mut g = self.group.take().expect("in flight");
        match g.phase {
            Phase::WaitLoad => self.step_pending(&mut g, records),
            Phase::WaitLocalLoad => self.step_local(&mut g, records),
            other => panic!("loaded while {other:?}"),
        }
        self.group = Some(g);
    }

    /// The answer to [`Io::Commit`]: one outcome per write, in order.
    pub fn committed(&mut self, outcomes: Vec<CommitOutcome>) {
        let mut g = self.group.take().expect("committed without a group in flight");
        match g.phase {
            Phase::WaitCommit => self.after_commit(&mut g, outcomes),
            Phase::WaitLocalCommit => self.after_local_commit(&mut g, outcomes),
            other => panic!("committed while {other:?}"),
        }
        self.group = Some(g);
    }

    /// The answer to [`Io::Run`]: one result per invocation, in order, and the time now.
    pub fn ran(&mut self, results: Vec<Ran>, now: i64) {
        let mut g = self.group.take().expect("ran without a group in flight");
        g.now = now;
        match g.phase {
            Phase::WaitLogRun => {
                let activities = mem::take(&mut g.activities);
                assert_eq!(activities.len(), results.len(), "one result per invocation");
                for ((index, req), ran) in activities.into_iter().zip(results) {
                    let record = &g.records[index];
                    let (offset, key, payload) = (record.offset, record.key.clone(), record.payload.clone());
                    let reply = self.reply(&req, ran, now, |reason| Out::Dead {
                        key: key.unwrap_or_default(),
                        payload: payload.unwrap_or_default(),
                        reason,
                        offset,
                    });
                    g.outbound.extend(reply.into_iter().map(|out| (offset, out)));
                }
                g.outbound.sort_by_key(|(offset, _)| *offset);
                g.phase = Phase::Send;
            }
            Phase::WaitLocalRun => {
                let local = mem::take(&mut g.local);
                assert_eq!(local.len(), results.len(), "one result per invocation");
                let mut ran = Vec::new();
                for ((offset, envelope, req), result) in local.into_iter().zip(results) {
                    let cancelled = matches!(result, Ran::Cancelled(_));
                    let reply = self.reply(&req, result, now, |reason| Out::Dead {
                        key: envelope.target.as_bytes().to_vec(),
                        payload: envelope.encode(),
                        reason,
                        offset,
                    });
                    if cancelled {
                        g.outbound.extend(reply.into_iter().map(|out| (offset, out)));
                    } else {
                        ran.extend(reply.into_iter().map(|out| (offset, out)));
                    }
                }
                self.collect_replies(&mut g, ran);
            }
            other => panic!("ran while {other:?}"),
        }
        self.group = Some(g);
    }

    /// The answer to [`Io::Settle`].
    pub fn settled(&mut self) {
        let g = self.group.as_mut().expect("settled without a group in flight");
        match g.phase {
            Phase::WaitLocalSettle => {
                g.rounds += 1;
                g.phase = Phase::WaitLocalRun;
            }
            Phase::WaitFinalSettle => g.phase = Phase::Done,
            other => panic!("settled while {other:?}"),
        }
    }

    /// Decode and route the records of the group.
    fn classify(&mut self, g: &mut InFlight) {
        let (p, partitions) = (self.settings.partition, self.settings.partitions);
        for (index, record) in g.records.iter().enumerate() {
            let offset = record.offset;
            let mut dead = |reason: String| {
                let key = record.key.clone().unwrap_or_default();
                let payload = record.payload.clone().unwrap_or_default();
                g.outbound.push((offset, Out::Dead { key, payload, reason, offset }));
            };
            let envelope = match envelope_of(record, self.settings.max_event_bytes, &self.engine) {
                Ok(envelope) => envelope,
                Err(reason) => {
                    dead(reason);
                    continue;
                }
            };
            let id = match InstanceId::parse(&envelope.target) {
                Ok(id) => id,
                Err(e) => {
                    dead(format!("bad target: {e}"));
                    continue;
                }
            };
            if id.kind() == Kind::Activity {
                // Stateless: an invocation runs wherever it arrives (its caller's partition,
                // unless activities are spread).
                match self.invocation(&envelope) {
                    Ok(req) => g.activities.push((index, req)),
                    Err(reason) => dead(reason),
                }
                continue;
            }
            let home = id.partition(partitions);
            if home != p {
                dead(format!(
                    "{} belongs to partition {home} but arrived in {p}: produce with key = target id and the murmur2 partitioner",
                    envelope.target
                ));
                continue;
            }
            g.groups
                .entry(envelope.target.clone())
                .or_insert_with(|| Group { id, deliveries: Vec::new() })
                .deliveries
                .push(Delivery { envelope, offset: Some(offset), sealed: record.sealed });
        }
        g.pending = g.groups.keys().cloned().collect();
    }

    /// An activity invocation this process can run, or why not.
    fn invocation(&self, envelope: &Envelope) -> Result<ActivityRequest, String> {
        let req = ActivityRequest::parse(envelope)?;
        if !self.engine.registry().has_activity(req.id.name()) {
            return Err(format!("no activity named {:?} is registered", req.id.name()));
        }
        Ok(req)
    }

    /// The reply to an invocation (and a dead letter, made by `dead`, if it panicked).
    fn reply(&mut self, req: &ActivityRequest, ran: Ran, now: i64, dead: impl FnOnce(String) -> Out) -> Vec<Out> {
        let mut out = Vec::new();
        let result = match ran {
            Ran::Returned(result) | Ran::Cancelled(result) => {
                if result.is_ok() {
                    self.stats.activities_completed += 1;
                } else {
                    self.stats.activities_failed += 1;
                }
                result
            }
            Ran::Panicked(message) => {
                self.stats.activities_panicked += 1;
                let reason = format!("activity {} panicked: {message}", req.id);
                out.push(dead(reason.clone()));
                Err(Failure::new("Panic", reason))
            }
        };
        let max = self.engine.limits().max_state_bytes;
        out.push(Out::Effects(vec![Effect::Emit(req.reply_bounded(result, now, max))]));
        out
    }

    /// Take the records of `ids` from the cache; `Some(Io::Load)` for the ones it does not hold.
    fn fetch(&mut self, g: &mut InFlight, ids: &[String]) -> Option<Io> {
        g.fetched = ids.iter().map(|id| self.cache.take(id)).collect();
        let missing: Vec<String> =
            ids.iter().zip(&g.fetched).filter(|(_, c)| c.is_none()).map(|(id, _)| id.clone()).collect();
        self.stats.cache_hits += (ids.len() - missing.len()) as u64;
        self.stats.cache_misses += missing.len() as u64;
        (!missing.is_empty()).then_some(Io::Load(missing))
    }

    /// The records fetched when nothing had to be loaded.
    fn fetched_from_cache(g: &mut InFlight) -> Vec<Loaded> {
        mem::take(&mut g.fetched).into_iter().map(Ok).collect()
    }

    /// Step `id` from `record` with its live code, if any; with [`Settings::check_live`], a live
    /// step is checked against a replay of the same record (a difference is a mismatch, and the
    /// replay's result is used).
    fn step(
        &mut self,
        id: &InstanceId,
        record: Option<InstanceRecord>,
        live: Option<Live>,
        input: StepInput,
    ) -> (StepOutput, Option<Live>) {
        if live.is_none() {
            return self.engine.step_live(id, record, input, None);
        }
        self.stats.live_steps += 1;
        if !self.settings.check_live {
            return self.engine.step_live(id, record, input, live);
        }
        let (replayed, replayed_live) = self.engine.step_live(id, record.clone(), input.clone(), None);
        let (stepped, stepped_live) = self.engine.step_live(id, record, input, live);
        // The code kept must be where a replay of the record it will be kept with leaves it.
        let kept = stepped_live.as_ref().map(Live::fingerprint);
        let reference = kept.as_ref().and_then(|_| self.engine.replayed_code(id, &stepped.record));
        let difference = if stepped != replayed {
            Some(format!("the step differs: live {stepped:?}, replayed {replayed:?}"))
        } else if kept != reference {
            Some(format!("the code kept differs from a replay of its record: live {kept:?}, replayed {reference:?}"))
        } else {
            None
        };
        match difference {
            None => (stepped, stepped_live),
            Some(difference) => {
                self.stats.live_mismatches += 1;
                self.mismatches.push(format!("{id}: {difference}"));
                (replayed, replayed_live)
            }
        }
    }

    /// Run the group forward until it needs the driver.
    fn advance(&mut self, g: &mut InFlight) -> Io {
        loop {
            match g.phase {
                Phase::Step => {
                    let ids = g.pending.clone();
                    if let Some(load) = self.fetch(g, &ids) {
                        g.phase = Phase::WaitLoad;
                        return load;
                    }
                    let records = Self::fetched_from_cache(g);
                    self.step_pending(g, records);
                }
                Phase::WaitCommit if g.computed.iter().all(|s| !s.out.changed) => {
                    // Nothing to write: the outcomes are known.
                    self.after_commit(g, Vec::new());
                }
                Phase::WaitCommit => {
                    let grace = self.settings.purge_grace_ms;
                    let writes = g.computed.iter_mut().filter(|s| s.out.changed).map(|s| write(s, grace)).collect();
                    return Io::Commit { writes, epoch: None };
                }
                Phase::LogActivities => {
                    if g.activities.is_empty() {
                        g.outbound.sort_by_key(|(offset, _)| *offset);
                        g.phase = Phase::Send;
                    } else {
                        g.phase = Phase::WaitLogRun;
                        return Io::Run(g.activities.iter().map(|(_, req)| req.clone()).collect());
                    }
                }
                Phase::Send => {
                    let run_here = !self.settings.spread_activities && g.rounds < self.settings.local_rounds;
                    let (records, local) = self.outgoing(g, run_here);
                    if local.is_empty() {
                        // A deferred step is only made when its calls run in the next round.
                        assert!(
                            g.deferred.is_empty(),
                            "deferred steps whose calls do not run: {:?}",
                            g.deferred.keys()
                        );
                        g.phase = Phase::Finish;
                    } else {
                        g.local = local;
                        g.phase = Phase::WaitLocalSettle;
                    }
                    if !records.is_empty() {
                        return Io::Produce(records);
                    }
                }
                Phase::WaitLocalSettle | Phase::WaitFinalSettle => return Io::Settle,
                Phase::WaitLocalRun => return Io::Run(g.local.iter().map(|(_, _, req)| req.clone()).collect()),
                Phase::LocalLoad => {
                    g.phase = Phase::WaitLocalLoad;
                    return Io::Load(mem::take(&mut g.to_load));
                }
                Phase::WaitLocalCommit if g.stepped.is_empty() => self.after_local_commit(g, Vec::new()),
                Phase::WaitLocalCommit => {
                    let grace = self.settings.purge_grace_ms;
                    let writes = g.stepped.iter_mut().map(|l| write(&mut l.stepped, grace)).collect();
                    return Io::Commit { writes, epoch: Some(self.epoch) };
                }
                Phase::Finish => {
                    let readers = mem::take(&mut g.readers);
                    let states: Vec<Outgoing> = mem::take(&mut g.states)
                        .values()
                        .filter_map(|c| state_record(c, readers.get(&c.instance).map_or(&[][..], Vec::as_slice)))
                        .collect();
                    g.phase = Phase::WaitFinalSettle;
                    if !states.is_empty() {
                        return Io::Produce(states);
                    }
                }
                Phase::Done => {
                    let last = g.records.last().expect("a group has records").offset;
                    return Io::Done(Done { last, rest: mem::take(&mut g.rest) });
                }
                Phase::WaitLoad | Phase::WaitLogRun | Phase::WaitLocalLoad => {
                    panic!("poll while waiting for an answer ({:?})", g.phase)
                }
            }
        }
    }

    /// Step every pending instance; end the group early if a resend must come first.
    fn step_pending(&mut self, g: &mut InFlight, records: Vec<Loaded>) {
        let p = self.settings.partition;
        let mut cut: Option<i64> = None;
        g.computed.clear();
        for (id, loaded) in mem::take(&mut g.pending).into_iter().zip(records) {
            let group = &g.groups[&id];
            let (record, etag, live, shape) = match loaded {
                Ok(Some(Cached { etag, record, live, shape })) => (Some(record), Some(etag), live, shape),
                Ok(None) => (None, None, None, Shape::default()),
                Err(e) => {
                    // Never overwrite state we cannot read: dead-letter what was meant for it.
                    for d in &group.deliveries {
                        let offset = d.offset.unwrap_or(0);
                        let reason = format!("stored state of {id} is unreadable ({e}); event not applied");
                        let out =
                            Out::Dead { key: id.as_bytes().to_vec(), payload: d.envelope.encode(), reason, offset };
                        g.outbound.push((offset, out));
                    }
                    continue;
                }
            };
            let input =
                StepInput { deliveries: group.deliveries.clone(), now: g.now, partition: Some(p), trigger: None };
            let target = group.id.clone();
            let (out, live) = self.step(&target, record, live, input);
            if let Some(o) = out.end_before {
                cut = Some(cut.map_or(o, |c| c.min(o)));
            }
            g.computed.push(Stepped { id, out, live, etag, shape });
        }
        if let Some(cut) = cut {
            // Nothing of this pass is committed; the group restarts with the records before the
            // cut (always at least one, so that it advances).
            let first = g.records[0].offset;
            let cut = cut.max(first + 1);
            let end = g.records.iter().position(|r| r.offset >= cut).unwrap_or(g.records.len());
            let mut rest = g.records.split_off(end);
            rest.append(&mut g.rest);
            let records = mem::take(&mut g.records);
            *g = InFlight::new(records, rest, g.now);
            self.classify(g);
        } else {
            g.phase = Phase::WaitCommit;
        }
    }

    /// Apply the commit outcomes of the group's steps.
    fn after_commit(&mut self, g: &mut InFlight, outcomes: Vec<CommitOutcome>) {
        let mut outcomes = outcomes.into_iter();
        let mut next = Vec::new();
        for Stepped { id, out, live, etag: loaded_etag, shape } in mem::take(&mut g.computed) {
            let mut etag = loaded_etag;
            if out.changed {
                match outcomes.next() {
                    Some(CommitOutcome::Committed { etag: new }) => {
                        self.stats.commits += 1;
                        etag = Some(new);
                    }
                    _ => {
                        self.stats.conflicts += 1;
                        next.push(id);
                        continue;
                    }
                }
            }
            let deliveries = &g.groups[&id].deliveries;
            let last = deliveries.last().and_then(|d| d.offset).unwrap_or(0);
            if let Some(resend) = &out.resend {
                // Committed before, maybe not produced: send that outbox again.
                g.outbound.push((resend.offset.unwrap_or(last), Out::Effects(resend.effects.clone())));
            }
            if out.changed {
                g.outbound.push((last, Out::Effects(out.record.outbox.effects.clone())));
            }
            if out.changed || out.resend.is_some() {
                g.readers.insert(out.record.id.clone(), out.record.access.readers());
            }
            // Dead letters leave with the outbox (`Effect::DeadLetter`): a resend sends them again.
            let (dead, dropped) = (out.dead_letters.len() as u64, out.dropped.len() as u64);
            self.stats.applied += (deliveries.len() as u64).saturating_sub(dead + dropped);
            self.stats.dropped += dropped;
            if let Some(etag) = etag {
                self.cache.put(id, Cached { etag, record: out.record, live, shape });
            }
        }
        if next.is_empty() {
            g.phase = Phase::LogActivities;
        } else {
            self.stats.reruns += next.len() as u64;
            g.pending = next;
            g.phase = Phase::Step;
        }
    }

    /// Turn the outbound entries into records to produce; with `run_here`, activity invocations
    /// are returned to run now instead (with the offset they answer to).
    fn outgoing(&mut self, g: &mut InFlight, run_here: bool) -> (Vec<Outgoing>, Vec<(i64, Envelope, ActivityRequest)>) {
        let p = self.settings.partition;
        let mut records = Vec::new();
        let mut local = Vec::new();
        for (offset, out) in mem::take(&mut g.outbound) {
            match out {
                Out::Effects(effects) => {
                    for effect in effects {
                        match effect {
                            Effect::Emit(e) if !self.settings.spread_activities && Kind::Activity.owns(&e.target) => {
                                if run_here {
                                    match self.invocation(&e) {
                                        Ok(req) => local.push((offset, e, req)),
                                        Err(reason) => records.push(self.dead_letter(&e, offset, &reason)),
                                    }
                                } else {
                                    records.push(Outgoing::event(&e, Some(p)));
                                }
                            }
                            Effect::Emit(e) => records.push(Outgoing::event(&e, None)),
                            Effect::StateChanged(change) => match g.states.get(&change.instance) {
                                Some(kept) if kept.version > change.version => {}
                                _ => {
                                    g.states.insert(change.instance.clone(), change);
                                }
                            },
                            Effect::Delay { .. } => {} // parked in the store with the commit
                            Effect::DeadLetter { key, value, truncated_from, reason } => {
                                self.stats.dead_letters += 1;
                                let source = dead_letter::Source {
                                    topic: &self.settings.events_topic,
                                    partition: p as i32,
                                    offset,
                                };
                                let truncated_from = truncated_from.map(|n| n as usize);
                                records.push(Outgoing::dead_copy(
                                    key.into_bytes(),
                                    value,
                                    truncated_from,
                                    &reason,
                                    source,
                                ));
                            }
                        }
                    }
                }
                Out::Dead { key, payload, reason, offset } => {
                    self.stats.dead_letters += 1;
                    let source =
                        dead_letter::Source { topic: &self.settings.events_topic, partition: p as i32, offset };
                    records.push(Outgoing::dead(key, &payload, &reason, source));
                }
            }
        }
        (records, local)
    }

    /// A dead letter for an event this core made itself.
    fn dead_letter(&mut self, envelope: &Envelope, offset: i64, reason: &str) -> Outgoing {
        self.stats.dead_letters += 1;
        let source = dead_letter::Source {
            topic: &self.settings.events_topic,
            partition: self.settings.partition as i32,
            offset,
        };
        Outgoing::dead(envelope.target.as_bytes().to_vec(), &envelope.encode(), reason, source)
    }

    /// A local round's replies: those for callers among the group's instances wait for the
    /// callers' records; everything else goes out through the log.
    fn collect_replies(&mut self, g: &mut InFlight, ran: Vec<(i64, Out)>) {
        for (offset, out) in ran {
            match out {
                Out::Effects(effects) => {
                    for effect in effects {
                        match effect {
                            Effect::Emit(reply) if g.groups.contains_key(&reply.target) => {
                                g.replies.entry(reply.target.clone()).or_default().push((offset, reply));
                            }
                            other => g.outbound.push((offset, Out::Effects(vec![other]))),
                        }
                    }
                }
                dead => g.outbound.push((offset, dead)),
            }
        }
        let ids = Self::to_fetch(g);
        if let Some(Io::Load(missing)) = self.fetch(g, &ids) {
            g.to_load = missing;
            g.phase = Phase::LocalLoad;
        } else {
            let records = Self::fetched_from_cache(g);
            self.step_local(g, records);
        }
    }

    /// The callers of a local round's replies whose records must be fetched: those with no
    /// deferred step.
    fn to_fetch(g: &InFlight) -> Vec<String> {
        g.replies.keys().filter(|id| !g.deferred.contains_key(*id)).cloned().collect()
    }

    /// Step the replies of a local round into their callers (`records`: those of
    /// [`Self::to_fetch`], in order; the others continue their deferred step). A step that may
    /// stay local is deferred while another round follows, else committed; a step that may not
    /// is dropped, its replies go through the log, and its caller's deferred step, if any, is
    /// committed instead (see the module docs).
    fn step_local(&mut self, g: &mut InFlight, records: Vec<Loaded>) {
        let p = self.settings.partition;
        g.stepped.clear();
        // A deferred caller that got no reply (its call was cancelled): commit it as it is.
        let idle: Vec<String> = g.deferred.keys().filter(|id| !g.replies.contains_key(*id)).cloned().collect();
        for id in idle {
            let Chain { stepped, base } = g.deferred.remove(&id).expect("listed");
            g.stepped.push(LocalStep { stepped, since: base.since, ran: Some(Vec::new()) });
        }
        let defer = self.settings.defer_local && g.rounds < self.settings.local_rounds;
        let mut records = records.into_iter();
        let ids: Vec<String> = g.replies.keys().cloned().collect();
        for id in ids {
            let replies = g.replies.remove(&id).unwrap_or_default();
            // `ran`: the calls of a deferred step this one continues, which ran.
            let (record, live, etag, shape, mut base, ran) = match g.deferred.remove(&id) {
                Some(Chain { stepped: Stepped { out, live, etag, shape, .. }, base }) => {
                    let ran = calls(&out.record);
                    (out.record, live, etag, shape, base, Some(ran))
                }
                None => match records.next() {
                    Some(Ok(Some(Cached { etag, record, live, shape }))) => {
                        // Kept in case this step is deferred and its chain must be stepped again.
                        let base = Base { record: record.clone(), inputs: Vec::new(), since: Since::default() };
                        (record, live, Some(etag), shape, base, None)
                    }
                    _ => {
                        unapplied(&mut g.outbound, replies);
                        continue;
                    }
                },
            };
            let input = StepInput {
                deliveries: replies
                    .iter()
                    .map(|(_, e)| Delivery { envelope: e.clone(), offset: None, sealed: true })
                    .collect(),
                now: g.now,
                partition: Some(p),
                trigger: record.outbox.offset,
            };
            let target = g.groups[&id].id.clone();
            let (out, live) = self.step(&target, Some(record), live, input.clone());
            if !out.stays_local() {
                // Not committed here: the replies go through the log, and the record leaves the
                // cache (the step consumed it; it is loaded again when they arrive) — unless a
                // deferred step came before, which is committed now, these replies after it.
                match ran {
                    Some(ran) => self.commit_deferred(g, (id, &target), (etag, shape), base, ran, replies),
                    None => unapplied(&mut g.outbound, replies),
                }
                continue;
            }
            let dropped = out.dropped.len() as u64;
            base.since.applied += (replies.len() as u64).saturating_sub(dropped);
            base.since.dropped += dropped;
            if ran.is_none() {
                base.since.answered = replies;
            }
            base.inputs.push(input);
            let stepped = Stepped { id: id.clone(), out, live, etag, shape };
            if defer && self.defers(&stepped) {
                self.stats.deferred += 1;
                let trigger = stepped.out.record.outbox.offset.unwrap_or(0);
                for call in calls(&stepped.out.record) {
                    g.outbound.push((trigger, Out::Effects(vec![Effect::Emit(call)])));
                }
                g.deferred.insert(id, Chain { stepped, base });
            } else {
                g.stepped.push(LocalStep { stepped, since: base.since, ran: None });
            }
        }
        g.outbound.sort_by_key(|(offset, _)| *offset);
        g.phase = Phase::WaitLocalCommit;
    }

    /// Commit a deferred step whose caller's next step could not stay local: step the chain
    /// again from the record last committed with the same inputs (the engine is deterministic,
    /// so this is the deferred step again, making the calls `ran`), commit that, and send
    /// `replies` — to those calls — through the log after it.
    fn commit_deferred(
        &mut self,
        g: &mut InFlight,
        (id, target): (String, &InstanceId),
        (etag, shape): (Option<u64>, Shape),
        base: Base,
        ran: Vec<Envelope>,
        replies: Vec<(i64, Envelope)>,
    ) {
        let Base { record, inputs, since } = base;
        let (mut from, mut live, mut out) = (Some(record), None, None::<StepOutput>);
        for input in inputs {
            let record = from.take().or_else(|| out.take().map(|o| o.record)).expect("a record to step");
            let (o, l) = self.step(target, Some(record), live.take(), input);
            (out, live) = (Some(o), l);
        }
        let out = out.expect("a deferred chain has a step");
        if !out.stays_local() || calls(&out.record) != ran {
            // The engine is deterministic, so this does not happen; should it, say so (the
            // simulator fails on it) and let the log repair it: the calls of the committed record
            // are answered through it, and a replay makes the others again.
            self.mismatches.push(format!("{target}: a deferred chain stepped again made other calls"));
            unapplied(&mut g.outbound, since.answered);
            return;
        }
        let stepped = Stepped { id, out, live, etag, shape };
        g.stepped.push(LocalStep { stepped, since, ran: Some(replies) });
    }

    /// Whether a step that may stay local may also wait for the caller's next step to be
    /// committed with it: it calls activities, all of which run here next round, and nothing
    /// else it does needs its own commit (no timers).
    fn defers(&self, s: &Stepped) -> bool {
        // The step's own effects, not its outbox: the outbox never holds the timers it parks
        // (they are written with its commit), and a step that parks one must be committed.
        let effects = &s.out.effects;
        effects.iter().any(|e| matches!(e, Effect::Emit(_)))
            && effects.iter().all(|e| match e {
                Effect::Emit(e) => self.invocation(e).is_ok(),
                Effect::StateChanged(_) => true,
                _ => false,
            })
    }

    /// Apply the outcomes of a local round's commit.
    fn after_local_commit(&mut self, g: &mut InFlight, outcomes: Vec<CommitOutcome>) {
        let mut outcomes = outcomes.into_iter();
        for LocalStep { stepped, since, ran } in mem::take(&mut g.stepped) {
            let Stepped { id, out, live, shape, .. } = stepped;
            match outcomes.next() {
                Some(CommitOutcome::Committed { etag }) => {
                    self.stats.commits += 1;
                    self.stats.applied += since.applied;
                    self.stats.dropped += since.dropped;
                    let trigger = out.record.outbox.offset.unwrap_or(0);
                    let effects = match ran {
                        // Its calls ran already: only their replies leave, through the log.
                        Some(replies) => {
                            unapplied(&mut g.outbound, replies);
                            let kept = out.record.outbox.effects.iter().filter(|e| !matches!(e, Effect::Emit(_)));
                            kept.cloned().collect()
                        }
                        None => out.record.outbox.effects.clone(),
                    };
                    g.outbound.push((trigger, Out::Effects(effects)));
                    g.readers.insert(out.record.id.clone(), out.record.access.readers());
                    self.cache.put(id, Cached { etag, record: out.record, live, shape });
                }
                // Someone else wrote the caller, or a newer owner fenced this core out (a
                // rebalance): the replies to its committed calls reach it through the log.
                _ => {
                    self.stats.conflicts += 1;
                    unapplied(&mut g.outbound, since.answered);
                }
            }
        }
        g.outbound.sort_by_key(|(offset, _)| *offset);
        g.phase = Phase::Send;
    }
}

/// Replies that were not applied in process: they go through the log.
fn unapplied(outbound: &mut Vec<(i64, Out)>, replies: Vec<(i64, Envelope)>) {
    outbound.extend(replies.into_iter().map(|(offset, reply)| (offset, Out::Effects(vec![Effect::Emit(reply)]))));
}

/// The write of a changed step; a record left empty (purged, or nothing it was sent applied) and
/// holding no creation that waits for its ledger leaves the index and expires after `grace` ms.
/// A running orchestration that only carried its stored history on appends a delta while the
/// deltas stay smaller than the blob last written whole ([`Shape`]); `s.shape` becomes what the
/// store holds once this write commits.
fn write(s: &mut Stepped, grace: u64) -> Write {
    let out = &mut s.out;
    let timers = out.delayed().map(|(fire_at, e)| TimerEntry { fire_at, envelope: e.encode() }).collect();
    let index = crate::index::Summary::of(&out.record).map(|s| crate::store::Indexed::of(&s));
    // An empty record that holds a creation waiting for its ledger is not done with: kept.
    let expire =
        (matches!(out.record.body, crate::history::Body::Empty) && out.record.quota.waiting.is_none()).then_some(grace);
    let delta = match (s.etag, expire) {
        // Once the deltas fill the whole part no delta fits: do not encode one.
        (Some(_), None) if s.shape.tail < s.shape.base => s
            .shape
            .extended_by(&out.record)
            .and_then(|(commands, log)| out.record.to_delta(commands, log))
            .filter(|delta| s.shape.tail + delta.len() <= s.shape.base),
        _ => None,
    };
    let (blob, append) = match delta {
        Some(delta) => {
            s.shape = Shape::of(&out.record, s.shape.base, s.shape.tail + delta.len());
            (delta, true)
        }
        None => {
            let blob = out.record.to_blob();
            s.shape = Shape::of(&out.record, blob.len(), 0);
            (blob, false)
        }
    };
    Write { id: s.id.clone(), expected: s.etag, blob, append, timers, index, expire }
}
