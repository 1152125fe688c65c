//! One partition's worker: groups of records through the commit protocol, and its timers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durable_kafka::dead_letter;
use durable_schemas::{Envelope, Origin, Payload};
use rdkafka::consumer::Consumer;
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{instrument, warn};

use super::Shared;
use crate::context::ActivityRequest;
use crate::effect::{Effect, StateChange};
use crate::engine::{Delivery, StepInput};
use crate::history::InstanceRecord;
use crate::id::{InstanceId, Kind};
use crate::metrics::METRICS;
use crate::store::{CommitOutcome, Store, TimerEntry, Write};

/// Wall-clock milliseconds: the runtime is the only place that reads the clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The worker loop of one partition.
#[instrument(skip_all, fields(partition))]
pub async fn work(
    shared: Arc<Shared>,
    partition: i32,
    mut rx: mpsc::Receiver<OwnedMessage>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(shared.config.timer_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u64 = 0;
    let mut last_offset: Option<i64> = None;
    let mut cache = RecordCache::default();
    // This worker's epoch of the partition: its local rounds' commits are fenced with it, so
    // that once a newer owner started, an older one (a zombie of a rebalance) commits none.
    let epoch = loop {
        match shared.store.fence(partition as u32).await {
            Ok(epoch) => break epoch,
            Err(e) => {
                warn!(partition, error = %e, "cannot fence the partition; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopped_for(&mut stop, Duration::ZERO) => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            // Not `stop.changed()`: a stop that arrived while a group was in flight was already
            // seen there (by `stopped_for`), and `changed` would then wait for another one.
            _ = stopped_for(&mut stop, Duration::ZERO) => return,
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < shared.config.batch {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let mut backoff = Duration::from_millis(100);
                // The part of the batch applied now: all of it, unless a group has to end early
                // (see `commit_groups`).
                let (mut from, mut to) = (0, batch.len());
                while from < batch.len() {
                    let part = &batch[from..to];
                    let applied = tokio::select! {
                        applied = apply_group(&shared, partition, epoch, part, &mut cache) => applied,
                        _ = stopped_for(&mut stop, DRAIN_GRACE) => {
                            // Its offsets were not stored: the next owner applies it again, and
                            // whatever part of it was committed or produced is deduplicated.
                            warn!(partition, "stopping: a group still in flight after the grace period is abandoned");
                            return;
                        }
                    };
                    match applied {
                        Ok(None) => (from, to) = (to, batch.len()),
                        Ok(Some(cut)) => {
                            let end = from + (cut - part[0].offset()).max(1) as usize;
                            to = end.min(to);
                        }
                        Err(e) => {
                            warn!(partition, error = %e, "group not applied; retrying (offsets not stored)");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stopped_for(&mut stop, Duration::ZERO) => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                last_offset = batch.last().map(|m| m.offset());
            }
            _ = tick.tick() => {
                ticks += 1;
                // Timers claimed but not acknowledged are released again (same seq) by the next
                // owner, so a release may be abandoned at a stop.
                let released = tokio::select! {
                    released = release_timers(&shared, partition, ticks % 10 == 0) => released,
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

/// How long a stopping worker lets the group in flight finish (so the next owner does not redo
/// it) before it abandons the group.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

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

/// Committed records of this partition kept between groups, with the etag they were committed
/// at. A cached record is used instead of loading it: if someone else wrote the instance since
/// (another owner during a rebalance), the commit's etag check fails and the instance is
/// reloaded and re-run, so the cache can only save round trips, never serve stale state. A record
/// leaves the cache while it is being stepped and comes back only once its commit is confirmed.
#[derive(Default)]
pub struct RecordCache {
    records: std::collections::HashMap<String, (u64, InstanceRecord)>,
}

/// Most records one partition worker keeps (it forgets all of them past this).
const CACHE_LIMIT: usize = 20_000;

impl RecordCache {
    fn take(&mut self, id: &str) -> Option<(u64, InstanceRecord)> {
        self.records.remove(id)
    }

    fn put(&mut self, id: String, etag: u64, record: InstanceRecord) {
        if self.records.len() >= CACHE_LIMIT {
            self.records.clear();
        }
        self.records.insert(id, (etag, record));
    }
}

/// An instance's part of a group.
struct Group {
    id: InstanceId,
    deliveries: Vec<Delivery>,
}

/// Something to produce after the commit.
enum Out {
    Effects(Vec<Effect>),
    Dead { key: Option<Vec<u8>>, payload: Option<Vec<u8>>, reason: String, offset: i64 },
}

/// A record of the state feed (`<prefix>.state`, key = instance id): JSON.
#[derive(Serialize)]
struct StateRecord<'a> {
    instance: &'a str,
    kind: &'static str,
    name: &'a str,
    key: &'a str,
    version: u64,
    status: &'a str,
    state: Option<serde_json::Value>,
    custom_status: Option<serde_json::Value>,
    failure: Option<&'a durable_schemas::Failure>,
    updated_at: i64,
}

/// A payload as JSON (its bytes if they are JSON, else a description).
pub fn payload_json(p: &Payload) -> serde_json::Value {
    serde_json::from_slice(&p.data)
        .unwrap_or_else(|_| serde_json::json!({ "content_type": p.content_type, "bytes": p.data.len() }))
}

fn state_record(change: &StateChange) -> Option<Vec<u8>> {
    let id = InstanceId::parse(&change.instance).ok()?;
    let record = StateRecord {
        instance: &change.instance,
        kind: id.kind().prefix(),
        name: id.name(),
        key: id.key(),
        version: change.version,
        status: &change.status,
        state: change.state.as_ref().map(payload_json),
        custom_status: change.custom_status.as_ref().map(payload_json),
        failure: change.failure.as_ref(),
        updated_at: change.updated_at,
    };
    serde_json::to_vec(&record).ok()
}

/// A dead letter for an event this worker made itself (it has no record of its own).
fn dead_envelope(envelope: &Envelope, offset: i64, reason: String) -> (i64, Out) {
    let out =
        Out::Dead { key: Some(envelope.target.as_bytes().to_vec()), payload: Some(envelope.encode()), reason, offset };
    (offset, out)
}

fn dead(message: &OwnedMessage, reason: impl Into<String>) -> (i64, Out) {
    let out = Out::Dead {
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        reason: reason.into(),
        offset: message.offset(),
    };
    (message.offset(), out)
}

/// Apply one group of records (see the module docs of `runtime` for the steps).
async fn apply_group(
    shared: &Arc<Shared>,
    partition: i32,
    epoch: u64,
    batch: &[OwnedMessage],
    cache: &mut RecordCache,
) -> Result<Option<i64>, String> {
    let started = Instant::now();
    let p = partition as u32;
    let label = partition.to_string();
    let now = now_ms();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut activities = Vec::new();
    let mut outbound: Vec<(i64, Out)> = Vec::new();
    for message in batch {
        let size = message.payload().map_or(0, <[u8]>::len);
        if size > shared.config.max_event_bytes {
            let limit = shared.config.max_event_bytes;
            let reason = format!("event of {size} bytes is over the limit of {limit} bytes (DURABLE_MAX_EVENT_BYTES)");
            outbound.push(dead(message, reason));
            continue;
        }
        let envelope = match message.payload().map(Envelope::decode) {
            None => {
                outbound.push(dead(message, "empty record: expected an Avro single-object encoded envelope"));
                continue;
            }
            Some(Err(e)) => {
                outbound.push(dead(message, format!("cannot decode: {e}")));
                continue;
            }
            Some(Ok(e)) => e,
        };
        let id = match InstanceId::parse(&envelope.target) {
            Ok(id) => id,
            Err(e) => {
                outbound.push(dead(message, format!("bad target: {e}")));
                continue;
            }
        };
        if id.kind() == Kind::Activity {
            // Stateless: an invocation runs wherever it arrives (its caller's partition, unless
            // activities are spread).
            activities.push((message.offset(), envelope, Some(message)));
            continue;
        }
        let home = id.partition(shared.partitions) as i32;
        if home != partition {
            let reason = format!(
                "{} belongs to partition {home} but arrived in {partition}: produce with key = target id and the murmur2 partitioner",
                envelope.target
            );
            outbound.push(dead(message, reason));
            continue;
        }
        groups
            .entry(envelope.target.clone())
            .or_insert_with(|| Group { id, deliveries: Vec::new() })
            .deliveries
            .push(Delivery { envelope, offset: Some(message.offset()) });
    }
    tracing::debug!(
        partition,
        first = batch.first().map(|m| m.offset()),
        last = batch.last().map(|m| m.offset()),
        records = batch.len(),
        "applying group"
    );
    if let Some(cut) = commit_groups(shared, p, &label, now, &groups, &mut outbound, cache).await? {
        tracing::debug!(partition, cut, "a resend comes first: the group ends before offset {cut}");
        return Ok(Some(cut));
    }
    run_activities(shared, &label, now, activities, &mut outbound).await;
    outbound.sort_by_key(|(offset, _)| *offset);
    let mut producer = Producer::new(shared, partition, &label);
    let mut rounds = 0;
    loop {
        let run_here = !shared.config.spread_activities && rounds < LOCAL_ROUNDS;
        let requests = producer.send(outbound, run_here).await?;
        if requests.is_empty() {
            break;
        }
        // Local rounds: the invocations just committed run now, in this process, and their
        // replies are applied to their callers here instead of after a trip through the
        // broker. An instance's next commit replaces its outbox, so whatever events that outbox
        // held must be in the log first.
        producer.settle_events().await?;
        rounds += 1;
        let mut ran = Vec::new();
        run_activities(shared, &label, now_ms(), requests.into_iter().map(|(o, e)| (o, e, None)).collect(), &mut ran)
            .await;
        outbound = commit_local(shared, p, &label, now_ms(), epoch, ran, &groups, cache).await?;
    }
    producer.settle().await?;
    if let Some(last) = batch.last() {
        shared
            .consumer
            .store_offset(&shared.config.events_topic(), partition, last.offset())
            .map_err(|e| format!("cannot store offset: {e}"))?;
    }
    METRICS.batch_latency.observe(started.elapsed().as_secs_f64());
    Ok(None)
}

/// Most local rounds (activities run and their replies applied in process) one group runs; the
/// replies of a further round go through the broker, so that an orchestration calling
/// activities in a long loop cannot hold its partition's other records back.
const LOCAL_ROUNDS: usize = 16;

/// Apply activity replies (`ran`: what [`run_activities`] gave) to their callers among the
/// instances of this group, as a local round. A caller's step is committed only if its outbox
/// holds nothing but activity invocations and its state (nothing that needs an origin stamp of
/// the partition's stream), and only while `epoch` is the partition's epoch: the replies are in
/// no log, so the new outbox answers to the record the caller's stored outbox answers to (a
/// record of this group, which a next owner reads again, since this group's offsets are not
/// stored yet), and a zombie that a next owner fenced out cannot replace an outbox behind that
/// owner's back. Replies that were not applied (any other step, a conflict, a fenced-out
/// worker) go out through the log like any event. Returns what to send next.
#[allow(clippy::too_many_arguments)]
async fn commit_local(
    shared: &Arc<Shared>,
    p: u32,
    label: &str,
    now: i64,
    epoch: u64,
    ran: Vec<(i64, Out)>,
    groups: &BTreeMap<String, Group>,
    cache: &mut RecordCache,
) -> Result<Vec<(i64, Out)>, String> {
    let mut outbound = Vec::new();
    let mut by_caller: BTreeMap<String, Vec<(i64, Envelope)>> = BTreeMap::new();
    for (key, out) in ran {
        match out {
            Out::Effects(effects) => {
                for effect in effects {
                    match effect {
                        Effect::Emit(reply) if groups.contains_key(&reply.target) => {
                            by_caller.entry(reply.target.clone()).or_default().push((key, reply));
                        }
                        other => outbound.push((key, Out::Effects(vec![other]))),
                    }
                }
            }
            dead => outbound.push((key, dead)),
        }
    }
    let unapplied = |replies: Vec<(i64, Envelope)>, outbound: &mut Vec<(i64, Out)>| {
        outbound.extend(replies.into_iter().map(|(key, reply)| (key, Out::Effects(vec![Effect::Emit(reply)]))));
    };
    let ids: Vec<String> = by_caller.keys().cloned().collect();
    let mut writes = Vec::new();
    let mut stepped = Vec::new();
    for (id, stored) in ids.iter().zip(records(shared, p, label, &ids, cache).await?) {
        let replies = by_caller.remove(id).unwrap_or_default();
        let Some((record, etag)) = stored.ok().flatten() else {
            unapplied(replies, &mut outbound);
            continue;
        };
        let input = StepInput {
            deliveries: replies.iter().map(|(_, e)| Delivery { envelope: e.clone(), offset: None }).collect(),
            now,
            partition: Some(p),
            trigger: record.outbox.offset,
        };
        let out = shared.engine.step(&groups[id].id, Some(record.clone()), input);
        if !out.stays_local() {
            cache.put(id.clone(), etag, record);
            unapplied(replies, &mut outbound);
            continue;
        }
        let timers = out.delayed().map(|(fire_at, e)| TimerEntry { fire_at, envelope: e.encode() }).collect();
        writes.push(Write { id: id.clone(), expected: Some(etag), blob: out.record.to_blob(), timers });
        stepped.push((id.clone(), out, replies));
    }
    let t = Instant::now();
    let outcomes = shared.store.commit_fenced(p, epoch, writes).await.map_err(|e| e.to_string())?;
    METRICS.commit_latency.with_label_values(&[label]).observe(t.elapsed().as_secs_f64());
    for ((id, out, replies), outcome) in stepped.into_iter().zip(outcomes) {
        match outcome {
            CommitOutcome::Committed { etag } => {
                METRICS.commits.with_label_values(&[label]).inc();
                let dropped = out.dropped.len() as u64;
                METRICS
                    .events
                    .with_label_values(&[label, "applied"])
                    .inc_by((replies.len() as u64).saturating_sub(dropped));
                METRICS.events.with_label_values(&[label, "dropped"]).inc_by(dropped);
                let trigger = out.record.outbox.offset.unwrap_or(0);
                outbound.push((trigger, Out::Effects(out.record.outbox.effects.clone())));
                cache.put(id, etag, out.record);
            }
            // Someone else wrote the caller, or a newer owner fenced this worker out (a
            // rebalance): the replies reach the caller through the log.
            CommitOutcome::Conflict => {
                METRICS.conflicts.with_label_values(&[label]).inc();
                unapplied(replies, &mut outbound);
            }
        }
    }
    outbound.sort_by_key(|(offset, _)| *offset);
    Ok(outbound)
}

/// The records of `ids` with their etags, from the cache or else from the store (one round trip
/// for all the missing ones): `Ok(None)` for an instance that does not exist, `Err` with the
/// reason for a stored blob that does not decode.
async fn records(
    shared: &Arc<Shared>,
    p: u32,
    label: &str,
    ids: &[String],
    cache: &mut RecordCache,
) -> Result<Vec<Result<Option<(InstanceRecord, u64)>, String>>, String> {
    let cached: Vec<Option<(u64, InstanceRecord)>> = ids.iter().map(|id| cache.take(id)).collect();
    let missing: Vec<String> = ids.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(id, _)| id.clone()).collect();
    METRICS.record_cache.with_label_values(&[label, "hit"]).inc_by((ids.len() - missing.len()) as u64);
    METRICS.record_cache.with_label_values(&[label, "miss"]).inc_by(missing.len() as u64);
    let mut loaded = if missing.is_empty() {
        Vec::new()
    } else {
        shared.store.load(p, &missing).await.map_err(|e| e.to_string())?
    }
    .into_iter();
    Ok(cached
        .into_iter()
        .map(|cached| match cached {
            Some((etag, record)) => Ok(Some((record, etag))),
            None => match loaded.next().flatten() {
                None => Ok(None),
                Some(s) => InstanceRecord::from_blob(&s.blob).map(|r| Some((r, s.etag))).map_err(|e| e.to_string()),
            },
        })
        .collect())
}

/// Step and commit every instance of the group; re-run the ones that lose the etag check.
///
/// Returns `Some(offset)`, committing nothing of this pass, when an instance's step would both
/// resend an earlier outbox (some of its records came again) and commit a new one: the commit
/// would replace an outbox that may never have left. The group must then end before `offset`
/// (the instance's first new record), so that the resend is produced before the next group
/// commits.
async fn commit_groups(
    shared: &Arc<Shared>,
    p: u32,
    label: &str,
    now: i64,
    groups: &BTreeMap<String, Group>,
    outbound: &mut Vec<(i64, Out)>,
    cache: &mut RecordCache,
) -> Result<Option<i64>, String> {
    let mut pending: Vec<String> = groups.keys().cloned().collect();
    let mut rerun = false;
    while !pending.is_empty() {
        if rerun {
            METRICS.reruns.with_label_values(&[label]).inc_by(pending.len() as u64);
        }
        let stored = records(shared, p, label, &pending, cache).await?;
        let mut computed = Vec::with_capacity(pending.len());
        let mut writes = Vec::new();
        let mut cut: Option<i64> = None;
        for (id, stored) in pending.iter().zip(stored) {
            let group = &groups[id];
            let (record, etag) = match stored {
                Ok(Some((record, etag))) => (Some(record), Some(etag)),
                Ok(None) => (None, None),
                Err(e) => {
                    // Never overwrite state we cannot read: dead-letter what was meant for it.
                    for d in &group.deliveries {
                        let reason = format!("stored state of {id} is unreadable ({e}); event not applied");
                        let out = Out::Dead {
                            key: Some(id.as_bytes().to_vec()),
                            payload: Some(d.envelope.encode()),
                            reason,
                            offset: d.offset.unwrap_or(0),
                        };
                        outbound.push((d.offset.unwrap_or(0), out));
                    }
                    continue;
                }
            };
            let input = StepInput { deliveries: group.deliveries.clone(), now, partition: Some(p), trigger: None };
            let out = shared.engine.step(&group.id, record, input);
            if let Some(o) = out.end_before {
                cut = Some(cut.map_or(o, |c: i64| c.min(o)));
            }
            if out.changed {
                let timers = out.delayed().map(|(fire_at, e)| TimerEntry { fire_at, envelope: e.encode() }).collect();
                writes.push(Write { id: id.clone(), expected: etag, blob: out.record.to_blob(), timers });
            }
            computed.push((id.clone(), out, etag));
        }
        if cut.is_some() {
            return Ok(cut);
        }
        let t = Instant::now();
        let outcomes = shared.store.commit(p, writes).await.map_err(|e| e.to_string())?;
        METRICS.commit_latency.with_label_values(&[label]).observe(t.elapsed().as_secs_f64());
        let mut outcomes = outcomes.into_iter();
        let mut next = Vec::new();
        for (id, out, loaded_etag) in computed {
            let mut etag = loaded_etag;
            if out.changed {
                match outcomes.next() {
                    Some(CommitOutcome::Committed { etag: new }) => {
                        METRICS.commits.with_label_values(&[label]).inc();
                        etag = Some(new);
                    }
                    _ => {
                        METRICS.conflicts.with_label_values(&[label]).inc();
                        next.push(id);
                        continue;
                    }
                }
            }
            let deliveries = &groups[&id].deliveries;
            let last = deliveries.last().and_then(|d| d.offset).unwrap_or(0);
            if let Some(resend) = &out.resend {
                // Committed before, maybe not produced: send that outbox again.
                outbound.push((resend.offset.unwrap_or(last), Out::Effects(resend.effects.clone())));
            }
            if out.changed {
                outbound.push((last, Out::Effects(out.record.outbox.effects.clone())));
            }
            for d in &out.dead_letters {
                let out = Out::Dead {
                    key: Some(d.envelope.target.as_bytes().to_vec()),
                    payload: Some(d.envelope.encode()),
                    reason: d.reason.clone(),
                    offset: last,
                };
                outbound.push((last, out));
            }
            let dead = out.dead_letters.len() as u64;
            let dropped = out.dropped.len() as u64;
            let applied = (deliveries.len() as u64).saturating_sub(dead + dropped);
            METRICS.events.with_label_values(&[label, "applied"]).inc_by(applied);
            METRICS.events.with_label_values(&[label, "dropped"]).inc_by(dropped);
            if let Some(etag) = etag {
                cache.put(id, etag, out.record);
            }
        }
        pending = next;
        rerun = true;
    }
    Ok(None)
}

/// Run the group's activity invocations concurrently; their replies go out in offset order.
async fn run_activities(
    shared: &Arc<Shared>,
    label: &str,
    now: i64,
    activities: Vec<(i64, Envelope, Option<&OwnedMessage>)>,
    outbound: &mut Vec<(i64, Out)>,
) {
    // The record as it arrived if there is one, else the envelope this worker made.
    let dead = |envelope: &Envelope, message: Option<&OwnedMessage>, offset: i64, reason: String| match message {
        Some(m) => dead(m, reason),
        None => dead_envelope(envelope, offset, reason),
    };
    let mut running = Vec::with_capacity(activities.len());
    for (offset, envelope, message) in activities {
        match ActivityRequest::parse(&envelope) {
            Err(reason) => outbound.push(dead(&envelope, message, offset, reason)),
            Ok(req) => match shared.engine.registry().run_activity(req.id.name(), req.context(), req.input.clone()) {
                None => {
                    let reason = format!("no activity named {:?} is registered", req.id.name());
                    outbound.push(dead(&envelope, message, offset, reason));
                }
                Some(future) => running.push((offset, envelope, message, req, tokio::spawn(future))),
            },
        }
    }
    for (offset, envelope, message, req, handle) in running {
        let result = match handle.await {
            Ok(result) => {
                let outcome = if result.is_ok() { "completed" } else { "failed" };
                METRICS.activities.with_label_values(&[label, outcome]).inc();
                result
            }
            Err(join) => {
                METRICS.activities.with_label_values(&[label, "panicked"]).inc();
                let reason = format!("activity {} panicked: {join}", req.id);
                outbound.push(dead(&envelope, message, offset, reason.clone()));
                Err(durable_schemas::Failure::new("Panic", reason))
            }
        };
        outbound.push((offset, Out::Effects(vec![Effect::Emit(req.reply(result, now))])));
    }
}

/// Whether a produce error concerns this one record and no retry can cure it (too large or
/// malformed for the producer's or the broker's limits). Such a record is dead-lettered, so that
/// it cannot hold its partition forever; every other error (broker unavailable, not the leader,
/// not authorized) is retried with the whole group, offsets not stored.
fn undeliverable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::InvalidMessage
                | Code::InvalidMessageSize
        )
    )
}

/// The dead letter of a record that cannot be produced to `topic`: its first bytes and the
/// reason (the caller keeps its key).
fn undeliverable_letter(topic: &str, payload: &[u8], error: &rdkafka::error::KafkaError) -> (Vec<u8>, OwnedHeaders) {
    let reason = format!("cannot produce a record of {} bytes to {topic}: {error}", payload.len());
    warn!(%topic, bytes = payload.len(), %error, "an outgoing record cannot be produced: dead-lettered");
    METRICS.undeliverable.with_label_values(&[topic_kind(topic)]).inc();
    let (copy, truncated) = dead_letter::copy(payload);
    let headers =
        dead_letter::headers("processor", &reason, dead_letter::Source { topic, partition: -1, offset: -1 }, truncated);
    (copy.to_vec(), headers)
}

/// `events` or `state` for the metric label (the topic name carries the prefix).
fn topic_kind(topic: &str) -> &'static str {
    if topic.ends_with(".state") {
        "state"
    } else {
        "events"
    }
}

/// Enqueue one record (to `partition`, or where the key's hash puts it); waits while the
/// producer's queue is full. A record the producer refuses as too large goes to the dead-letter
/// topic instead (see [`undeliverable`]).
async fn enqueue(
    shared: &Shared,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    partition: Option<i32>,
) -> Result<DeliveryFuture, String> {
    let dead_topic = shared.config.dead_topic();
    let mut letter: Option<(Vec<u8>, OwnedHeaders)> = None;
    loop {
        let (to, value, headers, partition) = match &letter {
            Some((copy, h)) => (dead_topic.as_str(), copy.as_slice(), Some(h), None),
            None => (topic, payload, headers.as_ref(), partition),
        };
        let mut record = FutureRecord::to(to).key(key).payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h.clone());
        }
        match shared.producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) if letter.is_none() && to != dead_topic && undeliverable(&e) => {
                letter = Some(undeliverable_letter(topic, payload, &e));
            }
            Err((e, _)) => return Err(format!("cannot produce to {to}: {e}")),
        }
    }
}

/// A group's output on its way to Kafka: records are enqueued in order as they are sent and
/// acknowledged in [`Producer::settle`].
struct Producer<'a> {
    shared: &'a Arc<Shared>,
    partition: i32,
    label: &'a str,
    started: Option<Instant>,
    /// Events and dead letters not acknowledged yet.
    events: Vec<DeliveryFuture>,
    /// The latest state change of each instance the group committed: one state record per
    /// instance and group, produced at the end (the state topic is compacted, a reader wants the
    /// latest state, and a local round would otherwise publish every step of a chain).
    states: BTreeMap<String, StateChange>,
}

impl<'a> Producer<'a> {
    fn new(shared: &'a Arc<Shared>, partition: i32, label: &'a str) -> Self {
        Self { shared, partition, label, started: None, events: Vec::new(), states: BTreeMap::new() }
    }

    /// Enqueue `outbound` in order. With `run_here`, activity invocations are not produced but
    /// returned, to be run by the caller now; otherwise they go to this partition.
    async fn send(&mut self, outbound: Vec<(i64, Out)>, run_here: bool) -> Result<Vec<(i64, Envelope)>, String> {
        let shared = self.shared;
        let (events, dead_topic) = (shared.config.events_topic(), shared.config.dead_topic());
        let label = self.label;
        let mut local = Vec::new();
        for (key, out) in outbound {
            self.started.get_or_insert_with(Instant::now);
            match out {
                Out::Effects(effects) => {
                    for effect in effects {
                        match effect {
                            Effect::Emit(e) if !shared.config.spread_activities && Kind::Activity.owns(&e.target) => {
                                if run_here {
                                    local.push((key, e));
                                } else {
                                    let here = Some(self.partition);
                                    self.events.push(
                                        enqueue(shared, &events, e.target.as_bytes(), &e.encode(), None, here).await?,
                                    );
                                }
                            }
                            Effect::Emit(e) => self
                                .events
                                .push(enqueue(shared, &events, e.target.as_bytes(), &e.encode(), None, None).await?),
                            Effect::StateChanged(change) => match self.states.get(&change.instance) {
                                Some(kept) if kept.version > change.version => {}
                                _ => {
                                    self.states.insert(change.instance.clone(), change);
                                }
                            },
                            Effect::Delay { .. } => {} // parked in Redis with the commit
                        }
                    }
                }
                Out::Dead { key, payload, reason, offset } => {
                    METRICS.dead_letters.with_label_values(&[label]).inc();
                    METRICS.events.with_label_values(&[label, "dead"]).inc();
                    warn!(partition = label, offset, %reason, "dead letter");
                    let key = key.unwrap_or_default();
                    let payload = payload.unwrap_or_default();
                    let (copy, truncated) = dead_letter::copy(&payload);
                    let source = dead_letter::Source { topic: &events, partition: self.partition, offset };
                    let headers = dead_letter::headers("processor", &reason, source, truncated);
                    self.events.push(enqueue(shared, &dead_topic, &key, copy, Some(headers), None).await?);
                }
            }
        }
        Ok(local)
    }

    /// Wait until every event and dead letter sent so far is acknowledged.
    async fn settle_events(&mut self) -> Result<(), String> {
        for delivery in self.events.drain(..) {
            acknowledged(self.shared, delivery).await?;
        }
        Ok(())
    }

    /// Produce the state records and wait until everything sent is acknowledged.
    async fn settle(mut self) -> Result<(), String> {
        let topic = self.shared.config.state_topic();
        let mut states = Vec::with_capacity(self.states.len());
        for change in std::mem::take(&mut self.states).into_values() {
            if let Some(json) = state_record(&change) {
                self.started.get_or_insert_with(Instant::now);
                states.push(enqueue(self.shared, &topic, change.instance.as_bytes(), &json, None, None).await?);
            }
        }
        self.settle_events().await?;
        for delivery in states {
            acknowledged(self.shared, delivery).await?;
        }
        if let Some(started) = self.started {
            METRICS.produce_latency.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// Wait for a record's acknowledgement. A record the broker refused as too large or malformed
/// is dead-lettered (and that acknowledged) instead of failing the group again and again.
async fn acknowledged(shared: &Shared, delivery: DeliveryFuture) -> Result<(), String> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, message))) if undeliverable(&e) && message.topic() != shared.config.dead_topic() => {
            let key = message.key().unwrap_or_default();
            let (copy, headers) = undeliverable_letter(message.topic(), message.payload().unwrap_or_default(), &e);
            let dead_topic = shared.config.dead_topic();
            let letter = FutureRecord::to(&dead_topic).key(key).payload(&copy).headers(headers);
            match shared.producer.send(letter, Duration::from_secs(60)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(format!("cannot dead-letter an undeliverable record: {e}")),
            }
        }
        Ok(Err((e, _))) => Err(format!("produce failed: {e}")),
        Err(_) => Err("produce cancelled".into()),
    }
}

/// Release the partition's due timers: produce them stamped `t<partition>`/seq, then ack.
async fn release_timers(shared: &Arc<Shared>, partition: i32, gauge: bool) -> Result<(), String> {
    let p = partition as u32;
    let released = shared.store.claim_due_timers(p, now_ms(), 512).await.map_err(|e| e.to_string())?;
    if let Some(last) = released.last().map(|t| t.seq) {
        let events = shared.config.events_topic();
        let mut deliveries = Vec::with_capacity(released.len());
        for timer in &released {
            let mut e = Envelope::decode(&timer.envelope).map_err(|e| format!("parked timer does not decode: {e}"))?;
            e.origin = Some(Origin { stream: format!("t{p}"), seq: timer.seq });
            deliveries.push(enqueue(shared, &events, e.target.as_bytes(), &e.encode(), None, None).await?);
        }
        for d in deliveries {
            acknowledged(shared, d).await.map_err(|e| format!("timer {e}"))?;
        }
        shared.store.ack_timers(p, last).await.map_err(|e| e.to_string())?;
    }
    if gauge {
        let (_, backlog) = shared.store.timer_backlog(p).await.map_err(|e| e.to_string())?;
        METRICS.timer_backlog.with_label_values(&[&partition.to_string()]).set(backlog as i64);
    }
    Ok(())
}
