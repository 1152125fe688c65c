//! What a partition's dispatcher and its worker share: the [`Queue`] between them (its depth
//! pauses and resumes the partition at the consumer), the dispatcher's [`Inbox`] end of it, and
//! [`Progress`], how far each worker has stored its offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use crate::partition::Record;

/// How far one worker's queue may fill: pause its partition at `high` records, resume at a
/// quarter of it.
#[derive(Debug)]
pub struct Queue {
    partition: i32,
    high: usize,
    depth: AtomicUsize,
    /// Whether the partition is paused at the consumer; pause and resume happen under this lock,
    /// so the dispatcher's pause and the worker's resume cannot cross.
    paused: Mutex<bool>,
}

impl Queue {
    pub(super) fn new(partition: i32, high: usize) -> Self {
        Self { partition, high: high.max(4), depth: AtomicUsize::new(0), paused: Mutex::new(false) }
    }

    fn set_paused(&self, shared: &Shared, pause: bool) {
        let mut paused = self.paused.lock().expect("pause lock");
        if *paused == pause {
            return;
        }
        let depth = self.depth.load(Ordering::SeqCst);
        if (pause && depth < self.high) || (!pause && depth > self.high / 4) {
            return; // the other side moved the depth back meanwhile
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&shared.config.events_topic(), self.partition);
        let done = if pause { shared.consumer.pause(&tpl) } else { shared.consumer.resume(&tpl) };
        match done {
            Ok(()) => {
                *paused = pause;
                tracing::debug!(partition = self.partition, depth, pause, "partition fetching paused or resumed");
            }
            Err(e) => warn!(partition = self.partition, error = %e, pause, "cannot pause or resume the partition"),
        }
    }

    /// The worker took `n` records off the queue (each was counted before it was queued, so the
    /// depth never goes below zero).
    pub fn taken(&self, shared: &Shared, n: usize) {
        if self.depth.fetch_sub(n, Ordering::SeqCst).saturating_sub(n) <= self.high / 4 {
            self.set_paused(shared, false);
        }
    }

    /// The worker stops: never leave its partition paused (a later owner starts afresh).
    pub fn release(&self, shared: &Shared) {
        self.depth.store(0, Ordering::SeqCst);
        self.set_paused(shared, false);
    }
}

/// Where the dispatcher hands a partition's records: its worker's queue.
pub struct Inbox {
    tx: mpsc::UnboundedSender<Record>,
    queue: Arc<Queue>,
}

impl Inbox {
    /// The dispatcher's end of a worker's channel and queue.
    pub fn new(tx: mpsc::UnboundedSender<Record>, queue: Arc<Queue>) -> Self {
        Self { tx, queue }
    }

    /// Queue `record` for the worker without waiting; `false` if the worker has stopped.
    pub fn push(&self, shared: &Shared, record: Record) -> bool {
        // Counted before it is queued: the worker may take it at once.
        let depth = self.queue.depth.fetch_add(1, Ordering::SeqCst) + 1;
        if self.tx.send(record).is_err() {
            self.queue.depth.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if depth >= self.queue.high {
            self.queue.set_paused(shared, true);
        }
        true
    }
}

/// Per owned partition, where to read it again should its worker die: its first offset at
/// assignment, then one past the last offset its worker stored (everything before it is applied
/// and produced).
#[derive(Debug, Default)]
pub struct Progress(Mutex<HashMap<i32, i64>>);

impl Progress {
    /// Partitions assigned, each starting at the given offset.
    pub fn extend(&self, starts: &[(i32, i64)]) {
        self.0.lock().expect("progress lock").extend(starts.iter().copied());
    }

    /// The worker of `partition` stored the offsets below `next`.
    pub fn stored(&self, partition: i32, next: i64) {
        if let Some(at) = self.0.lock().expect("progress lock").get_mut(&partition) {
            *at = (*at).max(next);
        }
    }

    /// Where to read `partition` again (`None`: not owned).
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.lock().expect("progress lock").get(&partition).copied()
    }

    /// `partition` was revoked.
    pub fn remove(&self, partition: i32) {
        self.0.lock().expect("progress lock").remove(&partition);
    }
}
