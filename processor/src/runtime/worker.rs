//! One partition's worker: it drives the partition core ([`crate::partition`]) with the store,
//! the producer and the application's activities, stores offsets, and releases timers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, instrument, warn};

use super::produce::Producer;
use super::queue::{Progress, Queue};
use super::{now_ms, timers, Shared};
use crate::context::{ActivityContext, ActivityRequest};
use crate::error::{Error, ErrorKind};
use crate::history::InstanceRecord;
use crate::id::InstanceId;
use crate::metrics::METRICS;
use crate::partition::{Done, Io, Partition, Ran, Record, Settings, Stats};
use crate::store::{Continuity, Store};

/// How long a stopping worker lets the group in flight finish (so the next owner does not redo
/// it) before it abandons the group.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The worker loop of one partition: take the partition (its fencing epoch, whether the store
/// is whole), then apply its records group by group and release its due timers on every tick,
/// until it is told to stop.
#[instrument(skip_all, fields(partition))]
pub async fn work(
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    partition: i32,
    committed: Option<i64>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    queue: Arc<Queue>,
    mut stop: watch::Receiver<bool>,
) {
    /// However the worker ends, its partition is not left paused, and what it kept live is
    /// gone with it.
    struct Leave(Arc<Shared>, Arc<Queue>, String);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.1.release(&self.0);
            record_stats(&self.2, Stats::default(), (0, 0));
        }
    }
    let label = partition.to_string();
    let _leave = Leave(shared.clone(), queue.clone(), label.clone());
    let p = partition as u32;
    let Some((epoch, mut floor)) = take(&shared, p, committed, &mut stop).await else { return };
    let mut core = Partition::new(settings(&shared, p), shared.engine.clone(), epoch);
    let mut tick = tokio::time::interval(shared.config.timer_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut ticks, mut last_offset): (u64, Option<i64>) = (0, None);
    loop {
        tokio::select! {
            biased;
            // Not `stop.changed()`: a stop that arrived while a group was in flight was already
            // seen there (by `stopped_for`), and `changed` would then wait for another one.
            _ = stopped_for(&mut stop, Duration::ZERO) => return,
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut records = vec![first];
                while records.len() < shared.config.batch {
                    match rx.try_recv() {
                        Ok(r) => records.push(r),
                        Err(_) => break,
                    }
                }
                queue.taken(&shared, records.len());
                last_offset = records.last().map(|r| r.offset);
                let group = Group { shared: &shared, progress: &progress, core: &mut core, floor: &mut floor, stop: &mut stop, label: &label };
                if !group.apply_until_done(records).await {
                    return;
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                // Timers claimed but not acknowledged are released again (same seq) by the next
                // owner, so a release may be abandoned at a stop.
                let released = tokio::select! {
                    released = timers::release(&shared, p, ticks % 10 == 0) => released,
                    _ = stopped_for(&mut stop, DRAIN_GRACE) => return,
                };
                if let Err(e) = released {
                    warn!(partition, error = %e, "timers not released; retrying");
                }
                if ticks % 50 == 0 {
                    update_lag(&shared, partition, last_offset);
                }
            }
        }
    }
}

/// Take the partition: this worker's epoch of it (its local rounds' commits are fenced with it,
/// so that once a newer owner started, an older one — a zombie of a rebalance — commits none),
/// and the applied mark it goes on from, once the store is found whole against Kafka's
/// `committed` offset (or its loss accepted). `None` if told to stop first.
async fn take(
    shared: &Shared,
    p: u32,
    committed: Option<i64>,
    stop: &mut watch::Receiver<bool>,
) -> Option<(u64, Floor)> {
    let pause = Duration::from_millis(500);
    let taken = retry_until_stopped(stop, p, "cannot fence the partition", pause, || async {
        shared.store.take(p).await.map(Some)
    })
    .await?;
    let mut floor = Floor { mark: taken.applied };
    match (taken.check(committed), committed) {
        (Continuity::Whole, _) | (_, None) => {}
        (Continuity::Adopt, Some(committed)) => {
            info!(partition = p, committed, "the partition has no applied mark yet (written by an older version): adopting Kafka's committed offset");
            mark_until_done(shared, p, committed, stop).await?;
            floor.mark = Some(committed);
        }
        (Continuity::Lost, Some(committed)) => {
            wait_for_acceptance(shared, p, committed, taken.applied, stop).await?;
            floor.mark = Some(committed);
        }
    }
    Some((taken.epoch, floor))
}

/// The partition core's settings for partition `p` under this processor's configuration.
fn settings(shared: &Shared, p: u32) -> Settings {
    Settings {
        partition: p,
        partitions: shared.partitions,
        events_topic: shared.config.events_topic(),
        max_event_bytes: shared.config.max_event_bytes,
        spread_activities: shared.config.spread_activities,
        local_rounds: Settings::LOCAL_ROUNDS,
        defer_local: true,
        cache_limit: Settings::CACHE_LIMIT,
        cache_bytes: shared.config.cache_bytes,
        live_limit: shared.config.live_bytes,
        check_live: false,
        purge_grace_ms: shared.config.purge_grace_ms(),
    }
}

/// One group of records on its way through a worker.
struct Group<'a> {
    shared: &'a Arc<Shared>,
    progress: &'a Progress,
    core: &'a mut Partition,
    floor: &'a mut Floor,
    stop: &'a mut watch::Receiver<bool>,
    /// The partition's metrics label.
    label: &'a str,
}

impl Group<'_> {
    /// Apply `records`, and what a group leaves for the next, retrying transient failures with
    /// backoff (offsets not stored), until all are applied: false if the worker must stop (told
    /// to, or a fatal error).
    async fn apply_until_done(self, mut records: Vec<Record>) -> bool {
        let Group { shared, progress, core, floor, stop, label } = self;
        let p = core.settings().partition;
        let mut backoff = Duration::from_millis(100);
        while !records.is_empty() {
            let applied = tokio::select! {
                applied = apply(shared, progress, core, label, floor, records) => applied,
                _ = stopped_for(stop, DRAIN_GRACE) => {
                    // Its offsets were not stored: the next owner applies it again, and
                    // whatever part of it was committed or produced is deduplicated.
                    warn!(partition = p, "stopping: a group still in flight after the grace period is abandoned");
                    return false;
                }
            };
            record_stats(label, core.take_stats(), core.live());
            for mismatch in core.take_mismatches() {
                // The core's own consistency checks (the simulator fails on these).
                error!(partition = p, %mismatch, "the partition core disagrees with itself; the log repairs it");
            }
            records = match applied {
                Ok(rest) => rest,
                Err(e) => match e.kind {
                    ErrorKind::Fatal => {
                        warn!(partition = p, error = %e, "the worker stops (offsets of its group not stored)");
                        return false;
                    }
                    ErrorKind::Lost { found } => {
                        let reached = floor.mark.unwrap_or(0);
                        if wait_for_acceptance(shared, p, reached, found, stop).await.is_none() {
                            return false;
                        }
                        core.abandon()
                    }
                    ErrorKind::Transient | ErrorKind::Corrupt => {
                        warn!(partition = p, error = %e, "group not applied; retrying (offsets not stored)");
                        let again = core.abandon();
                        if !pause_unless_stopped(stop, backoff).await {
                            return false;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        again
                    }
                },
            };
        }
        true
    }
}

/// The applied mark this owner saw at its start or raised since.
struct Floor {
    mark: Option<i64>,
}

impl Floor {
    /// What a commit or mark refused for the floor returns: the group stops here.
    fn found_below(&self, p: u32, found: Option<i64>) -> Error {
        Error::lost(
            found,
            format!(
                "Redis's applied mark of partition {p} went back from {:?} to {found:?}: it lost writes",
                self.mark
            ),
        )
    }

    fn raised(&mut self, to: i64) {
        self.mark = Some(self.mark.map_or(to, |m| m.max(to)));
    }
}

/// Apply one group: drive the core through its I/O until it is done, then store the offset.
/// Returns the records the group left for the next one.
async fn apply(
    shared: &Arc<Shared>,
    progress: &Progress,
    core: &mut Partition,
    label: &str,
    floor: &mut Floor,
    records: Vec<Record>,
) -> Result<Vec<Record>, Error> {
    let started = Instant::now();
    let p = core.settings().partition;
    tracing::debug!(
        partition = p,
        first = records.first().map(|r| r.offset),
        last = records.last().map(|r| r.offset),
        records = records.len(),
        "applying group"
    );
    // One past the group's last record: the applied mark its commits raise (see `Store::take`).
    let group_end = records.last().map_or(0, |r| r.offset + 1);
    let mut marked = false;
    shared.config.faults.before_group(p);
    core.begin(records, now_ms());
    let mut producer = Producer::new(shared, label);
    let Done { last, rest } = loop {
        match core.poll() {
            Io::Load(ids) => {
                let stored = shared.store.load(p, &ids).await?;
                core.loaded(stored);
            }
            Io::Commit { writes, epoch } => {
                let t = Instant::now();
                let outcomes = match epoch {
                    Some(epoch) => shared.store.commit_fenced(p, epoch, writes).await?,
                    None => match shared.store.commit_applied(p, floor.mark, group_end, writes).await? {
                        Ok(outcomes) => {
                            floor.raised(group_end);
                            marked = true;
                            outcomes
                        }
                        Err(found) => return Err(floor.found_below(p, found)),
                    },
                };
                METRICS.commit_latency.with_label_values(&[label]).observe(t.elapsed().as_secs_f64());
                core.committed(outcomes);
            }
            Io::Run(invocations) => {
                let results = run_activities(shared, core.settings(), invocations).await;
                core.ran(results, now_ms());
            }
            Io::Produce(out) => producer.send(out).await?,
            Io::Settle => {
                producer.settle().await?;
                core.settled();
            }
            Io::Done(done) => break done,
        }
    };
    if !rest.is_empty() {
        tracing::debug!(partition = p, next = rest[0].offset, "a resend comes first: the group ended early");
    }
    // `store_offset(last)` makes Kafka's committed offset `last + 1`: the mark must be there
    // first. A group that committed nothing (duplicates, dead letters) raises it on its own.
    if !marked {
        match shared.store.mark_applied(p, floor.mark, last + 1).await? {
            Ok(()) => floor.raised(last + 1),
            Err(found) => return Err(floor.found_below(p, found)),
        }
    }
    shared
        .consumer
        .store_offset(&shared.config.events_topic(), p as i32, last)
        .map_err(|e| Error::fatal(format!("cannot store offset {last}: {e} (the partition was probably revoked)")))?;
    progress.stored(p as i32, last + 1);
    METRICS.batch_latency.observe(started.elapsed().as_secs_f64());
    Ok(rest)
}

/// Raise the applied mark of `p` to `next`, retrying while the store is unavailable; `None` if
/// the worker was told to stop first.
async fn mark_until_done(shared: &Shared, p: u32, next: i64, stop: &mut watch::Receiver<bool>) -> Option<()> {
    retry_until_stopped(stop, p, "cannot raise the applied mark", Duration::from_millis(500), || async {
        shared.store.mark_applied(p, None, next).await.map(|_| Some(()))
    })
    .await
}

/// Call `attempt` until it answers `Ok(Some(_))`, pausing `pause` after each `Ok(None)` (not
/// yet) or error (logged with `what`); `None` if the worker is told to stop first. The worker's
/// waits on the store — fencing, marks, a loss and its acceptance — are all this loop.
async fn retry_until_stopped<T, E, F>(
    stop: &mut watch::Receiver<bool>,
    p: u32,
    what: &str,
    pause: Duration,
    mut attempt: impl FnMut() -> F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<Option<T>, E>>,
{
    loop {
        match attempt().await {
            Ok(Some(done)) => return Some(done),
            Ok(None) => {}
            Err(e) => warn!(partition = p, error = %e, "{what}; retrying"),
        }
        if !pause_unless_stopped(stop, pause).await {
            return None;
        }
    }
}

/// Sleep for `pause`: false if the worker was told to stop first.
async fn pause_unless_stopped(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = stopped_for(stop, Duration::ZERO) => false,
    }
}

/// The store lost state of `p` (see [`crate::store::Taken::check`]): process nothing of it until
/// an operator accepts the loss (`durable accept-loss`), then go on from Kafka's committed
/// offset. Its records wait in the worker's queue (the partition is paused when it is full).
/// `None` if the worker was told to stop first.
async fn wait_for_acceptance(
    shared: &Shared,
    p: u32,
    committed: i64,
    applied: Option<i64>,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    let label = p.to_string();
    let pause = Duration::from_millis(500);
    retry_until_stopped(stop, p, "cannot record the loss of state", pause, || async {
        shared.store.record_loss(p).await.map(Some)
    })
    .await?;
    METRICS.state_lost.with_label_values(&[&label]).set(1);
    shared.lost.lock().expect("lost lock").insert(p);
    let applied_text = applied.map_or_else(|| "nothing (no mark)".to_owned(), |a| format!("offsets below {a}"));
    error!(
        partition = p,
        committed,
        applied = applied.unwrap_or(-1),
        "Redis lost state of this partition: it was processed up to offset {committed} (Kafka's committed offset, or what this processor applied) but Redis holds the effects of {applied_text} (Redis restarted without its data, failed over to a replica that lagged, or was restored from an older copy). The partition is stopped: its instances would run on stale state. Restore Redis, or accept the loss with `durable accept-loss {p}` to go on with what Redis has"
    );
    let cleared = || {
        METRICS.state_lost.with_label_values(&[&label]).set(0);
        shared.lost.lock().expect("lost lock").remove(&p);
    };
    let accepted =
        retry_until_stopped(stop, p, "cannot read whether the loss was accepted", Duration::from_secs(1), || async {
            shared.store.loss_accepted(p).await.map(|yes| yes.then_some(()))
        })
        .await;
    // Stopped first: no longer this processor's to report, its next owner finds the loss itself.
    let marked = match accepted {
        Some(()) => mark_until_done(shared, p, committed, stop).await,
        None => None,
    };
    cleared();
    if marked.is_some() {
        warn!(
            partition = p,
            committed,
            "the loss of state was accepted by an operator: processing goes on from Kafka's committed offset"
        );
    }
    marked
}

/// Run activity invocations concurrently, each when the process-wide pool
/// (`DURABLE_ACTIVITY_CONCURRENCY`) has room; results in order. A call that runs its timeout (its
/// caller's option, else `DURABLE_ACTIVITY_TIMEOUT`) past its start or its last heartbeat is
/// aborted and fails with kind `Timeout`.
async fn run_activities(shared: &Arc<Shared>, settings: &Settings, invocations: Vec<ActivityRequest>) -> Vec<Ran> {
    let registry = shared.engine.registry();
    let running: Vec<_> = invocations
        .iter()
        .map(|req| {
            let timeout = req.timeout.unwrap_or(shared.config.activity_timeout);
            let ctx = req.context();
            let beats = ctx.clone();
            let call = registry.run_activity(req.id.name(), ctx, req.input.clone())?;
            let pool = shared.activity_pool.clone();
            let (shared, settings, req) = (shared.clone(), settings.clone(), req.clone());
            let watch = shared.watching.watch(&req.reply_to);
            Some(tokio::spawn(async move {
                let _watch = watch;
                let _slot = pool.acquire_owned().await.expect("the pool is never closed");
                let result = watched(&shared, &settings, call, &beats, timeout, &req).await;
                (result, beats.is_cancelled())
            }))
        })
        .collect();
    let mut results = Vec::with_capacity(running.len());
    for (req, handle) in invocations.iter().zip(running) {
        results.push(match handle {
            None => Ran::Panicked(format!("no activity named {:?} is registered", req.id.name())),
            Some(handle) => match handle.await {
                Ok((result, true)) => Ran::Cancelled(result),
                Ok((result, false)) => Ran::Returned(result),
                Err(join) => Ran::Panicked(join.to_string()),
            },
        });
    }
    results
}

/// How often a running call's caller is read to see whether it still waits for the result.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// Run one call under the watchdog: past `timeout` since its start or its last heartbeat, it is
/// dropped (aborted at its next await) and fails with kind `Timeout`. Every [`CANCEL_CHECK`]
/// its caller's record is read, with the records for the caller that arrived in this partition
/// behind the call applied to it in a dry run ([`crate::partition::peek`]): once the caller no
/// longer waits for the call (terminated, finished, restarted, purged), the call is cancelled
/// ([`ActivityContext::cancelled`]) and runs on until it returns or times out.
async fn watched(
    shared: &Shared,
    settings: &Settings,
    call: impl std::future::Future<Output = Result<durable_schemas::Payload, durable_schemas::Failure>>,
    ctx: &ActivityContext,
    timeout: Duration,
    req: &ActivityRequest,
) -> Result<durable_schemas::Payload, durable_schemas::Failure> {
    let id = &req.id;
    let mut call = std::pin::pin!(call);
    let mut seen = ctx.heartbeats();
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + CANCEL_CHECK, CANCEL_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut call => return result,
            () = tokio::time::sleep_until(deadline) => {
                if ctx.heartbeats() != seen {
                    seen = ctx.heartbeats();
                    deadline = tokio::time::Instant::now() + timeout;
                    continue;
                }
                warn!(activity = %id, ?timeout, "an activity timed out: aborted, its caller gets a Timeout failure");
                let message = format!(
                    "activity {id} did not finish within {timeout:?} of its start or last heartbeat (its call's timeout, or DURABLE_ACTIVITY_TIMEOUT)"
                );
                return Err(durable_schemas::Failure::new("Timeout", message));
            }
            _ = check.tick(), if !ctx.is_cancelled() => {
                if !caller_waits(shared, settings, req).await {
                    tracing::info!(activity = %id, caller = %req.reply_to, "its caller no longer waits for it: the activity is cancelled");
                    METRICS.activities_cancelled.with_label_values(&[] as &[&str]).inc();
                    ctx.cancel();
                }
            }
        }
    }
}

/// Whether `req`'s caller still waits for its result, once the records for it queued behind
/// the call are applied; true when that cannot be read (the store is unavailable, the record
/// does not decode): a call is cancelled only on evidence.
async fn caller_waits(shared: &Shared, settings: &Settings, req: &ActivityRequest) -> bool {
    let Ok(caller) = InstanceId::parse(&req.reply_to) else { return true };
    let canonical = caller.canonical();
    let stored = match shared.store.load(caller.partition(shared.partitions), std::slice::from_ref(&canonical)).await {
        Ok(mut rows) => match rows.pop().flatten().map(|s| InstanceRecord::from_blob(&s.blob)) {
            None => None,
            Some(Ok(record)) => Some(record),
            Some(Err(_)) => return true,
        },
        Err(_) => return true,
    };
    let behind = shared.watching.behind(&canonical);
    let peeked = crate::partition::peek(&shared.engine, settings, &caller, stored, &behind, now_ms());
    req.awaited_by(peeked.as_ref())
}

/// The callers whose activity calls run in this process now, with the records for them that
/// arrived behind the calls: a partition runs its calls before it reads on, so a terminate for a
/// caller whose call runs in its own partition waits in the worker's queue; the dispatcher keeps
/// a copy here ([`Watching::saw`]) for the call's watchdog to see.
#[derive(Debug, Default)]
pub struct Watching {
    /// How many calls are watched (the dispatcher's fast path: none).
    calls: std::sync::atomic::AtomicUsize,
    /// By caller: its calls running, and the records for it seen since the first started.
    callers: std::sync::Mutex<std::collections::HashMap<String, (usize, Vec<Record>)>>,
    /// Bytes of the records kept, over every caller.
    bytes: std::sync::atomic::AtomicUsize,
}

/// Most records kept per watched caller.
const MAX_BEHIND: usize = 64;
/// Largest record kept (what ends a caller — a terminate, a purge — is small).
const MAX_BEHIND_RECORD: usize = 16 * 1024;
/// Most bytes kept over every caller. Past these bounds a record is not kept, and a call it
/// would cancel runs to its end, as it would without cancellation.
const MAX_BEHIND_BYTES: usize = 4 * 1024 * 1024;

impl Watching {
    /// Watch `caller` while the returned guard lives.
    pub fn watch(self: &Arc<Self>, caller: &str) -> WatchGuard {
        use std::sync::atomic::Ordering;
        let mut callers = self.callers.lock().expect("watching lock");
        callers.entry(caller.to_owned()).or_default().0 += 1;
        self.calls.fetch_add(1, Ordering::SeqCst);
        WatchGuard { watching: self.clone(), caller: caller.to_owned() }
    }

    /// The dispatcher handed `record` to a worker: keep a copy if it is for a watched caller.
    pub fn saw(&self, record: &Record) {
        if self.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return;
        }
        let Some(key) = record.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else { return };
        let size = record.payload.as_ref().map_or(0, Vec::len);
        if size > MAX_BEHIND_RECORD {
            return;
        }
        if let Some((_, behind)) = self.callers.lock().expect("watching lock").get_mut(key) {
            use std::sync::atomic::Ordering;
            if behind.len() < MAX_BEHIND && self.bytes.load(Ordering::SeqCst) + size <= MAX_BEHIND_BYTES {
                self.bytes.fetch_add(size, Ordering::SeqCst);
                behind.push(record.clone());
            }
        }
    }

    /// The records for `caller` seen since its first running call started, in order.
    pub fn behind(&self, caller: &str) -> Vec<Record> {
        self.callers.lock().expect("watching lock").get(caller).map(|(_, r)| r.clone()).unwrap_or_default()
    }
}

/// Stops watching a caller's call when dropped.
#[derive(Debug)]
pub struct WatchGuard {
    watching: Arc<Watching>,
    caller: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut callers = self.watching.callers.lock().expect("watching lock");
        if let Some(entry) = callers.get_mut(&self.caller) {
            entry.0 -= 1;
            if entry.0 == 0 {
                let kept: usize = entry.1.iter().map(|r| r.payload.as_ref().map_or(0, Vec::len)).sum();
                self.watching.bytes.fetch_sub(kept, std::sync::atomic::Ordering::SeqCst);
                callers.remove(&self.caller);
            }
        }
        self.watching.calls.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The core's counts into the partition's metrics.
fn record_stats(label: &str, s: Stats, live: (usize, usize)) {
    let m = &METRICS;
    m.live_steps.with_label_values(&[label]).inc_by(s.live_steps);
    m.live_evictions.with_label_values(&[label]).inc_by(s.live_evicted);
    m.deferred.with_label_values(&[label]).inc_by(s.deferred);
    m.live_orchestrations.with_label_values(&[label]).set(live.0 as i64);
    m.live_bytes.with_label_values(&[label]).set(live.1 as i64);
    m.commits.with_label_values(&[label]).inc_by(s.commits);
    m.conflicts.with_label_values(&[label]).inc_by(s.conflicts);
    m.reruns.with_label_values(&[label]).inc_by(s.reruns);
    m.dead_letters.with_label_values(&[label]).inc_by(s.dead_letters);
    m.events.with_label_values(&[label, "applied"]).inc_by(s.applied);
    m.events.with_label_values(&[label, "dropped"]).inc_by(s.dropped);
    m.events.with_label_values(&[label, "dead"]).inc_by(s.dead_letters);
    m.record_cache.with_label_values(&[label, "hit"]).inc_by(s.cache_hits);
    m.record_cache.with_label_values(&[label, "miss"]).inc_by(s.cache_misses);
    m.activities.with_label_values(&[label, "completed"]).inc_by(s.activities_completed);
    m.activities.with_label_values(&[label, "failed"]).inc_by(s.activities_failed);
    m.activities.with_label_values(&[label, "panicked"]).inc_by(s.activities_panicked);
}

/// Resolves `grace` after the worker was told to stop (never, if the stop sender is gone without
/// a stop).
async fn stopped_for(stop: &mut watch::Receiver<bool>, grace: Duration) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

fn update_lag(shared: &Arc<Shared>, partition: i32, last_offset: Option<i64>) {
    let consumer = shared.consumer.clone();
    let topic = shared.config.events_topic();
    tokio::task::spawn_blocking(move || {
        if let Ok((_, high)) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1)) {
            let next = last_offset.map_or(0, |o| o + 1);
            METRICS.consumer_lag.with_label_values(&[&partition.to_string()]).set((high - next).max(0));
        }
    });
}
