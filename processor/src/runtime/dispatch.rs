//! The dispatcher's side of partitions: which partitions this consumer owns, where each record
//! goes (its partition's worker), and stopping workers when partitions are revoked.
//!
//! The single dispatcher never waits for one partition: each worker's queue is unbounded, and a
//! partition whose worker falls behind by four groups (`DURABLE_BATCH` × 4 records) is paused at
//! the consumer until the worker is back under a quarter of that. librdkafka drops what it
//! prefetched for a paused partition and fetches again from the next record the dispatcher has
//! not seen, so nothing is skipped and the queue stays bounded. A hung or slow partition holds
//! back its own records only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use durable_schemas::contract::seal;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::queue::{Inbox, Progress, Queue};
use super::{worker, Shared};
use crate::metrics::METRICS;
use crate::partition::Record;

/// A running worker.
struct Worker {
    tx: mpsc::UnboundedSender<Record>,
    queue: Arc<Queue>,
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

/// Workers by partition, and the partitions assigned now; the rebalance callbacks keep both.
#[derive(Default)]
pub struct Workers {
    map: Mutex<HashMap<i32, Worker>>,
    /// Per owned partition, the offset of the next record to hand to its worker: the committed
    /// offset at assignment, then one past each record dispatched. A record below it was
    /// dispatched already (a redelivery after a seek) and is dropped; a record above it follows
    /// a gap, which Kafka logs have for good reasons — a transaction's commit or abort marker,
    /// an aborted transaction's records (not delivered under `read_committed`), records removed
    /// by retention, compaction or `DeleteRecords` — and is dispatched, the gap counted. The
    /// consumer only delivers a partition's records in order (librdkafka drops what it fetched
    /// before a rebalance or a seek), so a gap is never records still to come. A partition not
    /// in the map is not owned.
    expected: Mutex<HashMap<i32, i64>>,
    /// Per owned partition, the group's committed offset at assignment (absent: none), which
    /// its worker checks the store against (see [`crate::store::Taken::check`]).
    committed: Mutex<HashMap<i32, i64>>,
    /// Per owned partition, where to read it again should its worker die: its first offset at
    /// assignment, then one past the last offset its worker stored (everything before it is
    /// applied and produced).
    resume: Arc<Progress>,
}

/// What to do with a received record.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Hand it to the partition's worker.
    Dispatch,
    /// Hand it to the partition's worker; the offsets from `skipped_from` up to it were never
    /// delivered (a gap in the log).
    AfterGap {
        /// The first offset not delivered.
        skipped_from: i64,
    },
    /// Drop it: already dispatched, or the partition is not owned.
    Skip,
}

impl Workers {
    /// The partitions were assigned to this consumer, each starting at the given offset.
    pub fn assign(&self, starts: &[(i32, i64)]) {
        self.expected.lock().expect("assignment lock").extend(starts.iter().copied());
        self.resume.extend(starts);
    }

    /// The worker of `partition` stored the offsets below `next`.
    pub fn stored(&self, partition: i32, next: i64) {
        self.resume.stored(partition, next);
    }

    /// If the worker of `partition`, still owned, has died (a panic, a fatal error) — its queue
    /// and its group in flight are lost with it — where to read the partition again: one past
    /// the last offset it stored.
    pub fn died(&self, partition: i32) -> Option<i64> {
        let dead = self.map.lock().expect("workers lock").get(&partition).is_some_and(|w| w.done.is_finished());
        if !dead {
            return None;
        }
        self.resume.get(partition)
    }

    /// The consumer reads `partition` again from `from` (after a seek): forget its dead worker and
    /// expect that offset next; the next record starts a new worker.
    pub fn restart(&self, partition: i32, from: i64) {
        self.map.lock().expect("workers lock").remove(&partition);
        if let Some(next) = self.expected.lock().expect("assignment lock").get_mut(&partition) {
            *next = from;
        }
    }

    /// The group's committed offsets of newly assigned partitions (those that have one).
    pub fn committed_at_assignment(&self, committed: &[(i32, i64)]) {
        let mut map = self.committed.lock().expect("assignment lock");
        for (p, _) in committed {
            map.remove(p);
        }
        map.extend(committed.iter().copied());
    }

    /// Decide about the record at `offset` of `partition` (and advance past it unless skipped).
    pub fn admit(&self, partition: i32, offset: i64) -> Admit {
        let mut expected = self.expected.lock().expect("assignment lock");
        match expected.get_mut(&partition) {
            None => Admit::Skip,
            Some(next) if offset < *next => Admit::Skip,
            Some(next) => {
                let skipped_from = *next;
                *next = offset + 1;
                if offset == skipped_from {
                    Admit::Dispatch
                } else {
                    Admit::AfterGap { skipped_from }
                }
            }
        }
    }

    /// Forget `partitions` (no more records of them are dispatched), then stop their workers
    /// after the group in flight, and wait for them.
    pub fn stop(&self, partitions: &[i32]) {
        {
            let mut expected = self.expected.lock().expect("assignment lock");
            for p in partitions {
                expected.remove(p);
            }
        }
        let stopping: Vec<Worker> = {
            let mut map = self.map.lock().expect("workers lock");
            partitions.iter().filter_map(|p| map.remove(p)).collect()
        };
        {
            let mut committed = self.committed.lock().expect("assignment lock");
            for p in partitions {
                committed.remove(p);
                self.resume.remove(*p);
            }
        }
        if stopping.is_empty() {
            return;
        }
        for w in &stopping {
            let _ = w.stop.send(true);
        }
        // Called from the rebalance callback on a runtime thread: let tokio move other tasks away.
        // Workers abandon their group after `DRAIN_GRACE`; the deadline only guards against a
        // worker stuck outside a group.
        let deadline = tokio::time::Instant::now() + worker::DRAIN_GRACE + std::time::Duration::from_secs(5);
        tokio::task::block_in_place(|| {
            let handle = tokio::runtime::Handle::current();
            for w in stopping {
                let abort = w.done.abort_handle();
                if handle.block_on(tokio::time::timeout_at(deadline, w.done)).is_err() {
                    warn!("a worker did not stop in time: aborted");
                    abort.abort();
                }
            }
        });
        METRICS.owned.with_label_values(&[] as &[&str]).set(self.map.lock().expect("workers lock").len() as i64);
    }

    /// The partitions assigned to this consumer now.
    pub fn owned(&self) -> Vec<i32> {
        self.expected.lock().expect("assignment lock").keys().copied().collect()
    }

    /// Every partition with a worker.
    pub fn all(&self) -> Vec<i32> {
        self.map.lock().expect("workers lock").keys().copied().collect()
    }
}

/// Hand one received record to its partition's worker: read the partition again first if its
/// worker died, skip what was dispatched already or is not owned, count gaps, check the seal.
/// An error stops the processor (a dead worker's partition could not be read again).
pub fn dispatch(shared: &Arc<Shared>, workers: &Arc<Workers>, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
    let (partition, offset) = (message.partition(), message.offset());
    if let Some(from) = workers.died(partition) {
        return read_again(shared, workers, partition, from);
    }
    match workers.admit(partition, offset) {
        Admit::Dispatch => {}
        Admit::Skip => return Ok(()),
        Admit::AfterGap { skipped_from } => {
            // Transaction markers leave one-offset gaps all the time: log those at debug, larger
            // ones (retention, DeleteRecords) at info.
            let skipped = offset - skipped_from;
            if skipped > 1 {
                info!(
                    partition,
                    from = skipped_from,
                    to = offset - 1,
                    skipped,
                    "offsets skipped: not in the log (retention, compaction, DeleteRecords or aborted transactions)"
                );
            } else {
                tracing::debug!(partition, offset = skipped_from, "offset skipped (a transaction marker)");
            }
            METRICS.offsets_skipped.with_label_values(&[&partition.to_string()]).inc_by(skipped as u64);
        }
    }
    let key = message.key().map(<[u8]>::to_vec);
    let payload = message.payload().map(<[u8]>::to_vec);
    let mac = message.headers().and_then(|h| h.iter().find(|h| h.key == seal::HEADER)).and_then(|h| h.value);
    let sealed = shared.seal.verify(key.as_deref().unwrap_or_default(), payload.as_deref().unwrap_or_default(), mac);
    let record = Record { offset, key, payload, sealed };
    shared.watching.saw(&record);
    if !workers_inbox(workers, shared, partition).push(shared, record) {
        warn!(partition, "worker stopped while a record was handed to it; it will be redelivered");
    }
    Ok(())
}

/// The worker of `partition` died while this processor owns it: its queue and group in flight
/// died with it, so never skip them. Read the partition again from the last offset it stored
/// (librdkafka drops what it fetched before the seek); the next record starts a new worker.
fn read_again(shared: &Shared, workers: &Workers, partition: i32, from: i64) -> anyhow::Result<()> {
    error!(partition, from, "the worker of this partition died while this processor owns it: reading the partition again from the last offset it stored");
    METRICS.worker_restarts.with_label_values(&[&partition.to_string()]).inc();
    let topic = shared.config.events_topic();
    let seek = tokio::task::block_in_place(|| {
        shared.consumer.seek(&topic, partition, rdkafka::Offset::Offset(from), std::time::Duration::from_secs(10))
    });
    if let Err(e) = seek {
        // Not read again here: stop, so that the group gives the partition to a processor that
        // starts at its committed offset.
        error!(partition, error = %e, "cannot read the partition again after its worker died: the processor stops");
        workers.stop(&workers.all());
        anyhow::bail!("the worker of partition {partition} died and its records could not be read again: {e}");
    }
    workers.restart(partition, from);
    Ok(())
}

/// The inbox of `partition`'s worker, starting the worker if it has none (or it stopped).
pub fn workers_inbox(workers: &Arc<Workers>, shared: &Arc<Shared>, partition: i32) -> Inbox {
    let mut map = workers.map.lock().expect("workers lock");
    if let Some(w) = map.get(&partition).filter(|w| !w.done.is_finished()) {
        return Inbox::new(w.tx.clone(), w.queue.clone());
    }
    // Show every partition metric from the start, at zero, rather than only after its first event.
    let label = partition.to_string();
    for counter in [
        &METRICS.commits,
        &METRICS.conflicts,
        &METRICS.reruns,
        &METRICS.dead_letters,
        &METRICS.offsets_skipped,
        &METRICS.worker_restarts,
    ] {
        counter.with_label_values(&[&label]);
    }
    for outcome in ["applied", "dropped", "dead"] {
        METRICS.events.with_label_values(&[&label, outcome]);
    }
    METRICS.commit_latency.with_label_values(&[&label]);
    METRICS.timer_backlog.with_label_values(&[&label]);
    METRICS.consumer_lag.with_label_values(&[&label]);
    tracing::debug!(partition, "starting a worker");
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue::new(partition, shared.config.batch * 4));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let committed = workers.committed.lock().expect("assignment lock").get(&partition).copied();
    let done = tokio::spawn(worker::work(
        shared.clone(),
        workers.resume.clone(),
        partition,
        committed,
        rx,
        queue.clone(),
        stopped,
    ));
    map.insert(partition, Worker { tx: tx.clone(), queue: queue.clone(), stop, done });
    METRICS.owned.with_label_values(&[] as &[&str]).set(map.len() as i64);
    Inbox::new(tx, queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that died while its partition stays owned is found, with where to read again:
    /// one past the last offset it stored (its assignment's start before it stored any); after
    /// the restart the dispatcher expects that offset, and a revoked partition is never restarted.
    #[tokio::test]
    async fn a_dead_worker_is_found_and_its_partition_read_again_from_its_last_stored_offset() {
        let workers = Workers::default();
        workers.assign(&[(3, 100)]);
        for offset in 100..120 {
            assert_ne!(workers.admit(3, offset), Admit::Skip);
        }
        let dead = tokio::spawn(async { panic!("a bug in the worker") });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !dead.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let (stop, _) = tokio::sync::watch::channel(false);
        let queue = Arc::new(Queue::new(3, 16));
        workers.map.lock().unwrap().insert(3, Worker { tx, queue, stop, done: dead });
        assert_eq!(workers.died(3), Some(100), "nothing stored: from the assignment's start");
        workers.stored(3, 110);
        workers.stored(3, 105);
        assert_eq!(workers.died(3), Some(110), "one past the last offset stored");
        workers.restart(3, 110);
        assert_eq!(workers.died(3), None, "forgotten");
        assert_eq!(workers.admit(3, 110), Admit::Dispatch, "read again from there");
        assert_eq!(workers.died(4), None, "not owned");
    }
}
