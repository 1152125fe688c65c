//! The dispatcher's side of partitions: which partitions this consumer owns, where each record
//! goes (its partition's worker), and stopping workers when partitions are revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::warn;

use super::{worker, Shared};
use crate::metrics::METRICS;
use crate::partition::Record;

/// A running worker.
struct Worker {
    tx: mpsc::Sender<Record>,
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

/// The sender of `partition`'s worker, starting the worker if it has none (or it stopped).
pub fn workers_sender(workers: &Workers, shared: &Arc<Shared>, partition: i32) -> mpsc::Sender<Record> {
    let mut map = workers.map.lock().expect("workers lock");
    if let Some(w) = map.get(&partition).filter(|w| !w.done.is_finished()) {
        return w.tx.clone();
    }
    // Show every partition metric from the start, at zero, rather than only after its first event.
    let label = partition.to_string();
    for counter in
        [&METRICS.commits, &METRICS.conflicts, &METRICS.reruns, &METRICS.dead_letters, &METRICS.offsets_skipped]
    {
        counter.with_label_values(&[&label]);
    }
    for outcome in ["applied", "dropped", "dead"] {
        METRICS.events.with_label_values(&[&label, outcome]);
    }
    METRICS.commit_latency.with_label_values(&[&label]);
    METRICS.timer_backlog.with_label_values(&[&label]);
    METRICS.consumer_lag.with_label_values(&[&label]);
    tracing::debug!(partition, "starting a worker");
    let (tx, rx) = mpsc::channel(shared.config.batch * 4);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let done = tokio::spawn(worker::work(shared.clone(), partition, rx, stopped));
    map.insert(partition, Worker { tx: tx.clone(), stop, done });
    METRICS.owned.with_label_values(&[] as &[&str]).set(map.len() as i64);
    tx
}
