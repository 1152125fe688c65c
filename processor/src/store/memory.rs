//! [`MemoryStore`]: the [`Store`] contract in process memory, for simulation and `durable dev`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::{CommitOutcome, ReleasedTimer, Secrets, Store, StoreResult, Stored, Taken, Write};

/// In-memory store. Deterministic: iteration orders do not depend on hashing.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// id → (blob, etag).
    instances: HashMap<String, (Vec<u8>, u64)>,
    /// Last etag handed out (etags are unique store-wide).
    last_etag: u64,
    partitions: BTreeMap<u32, Timers>,
    /// Partition → owner epoch (see [`Store::take`]).
    epochs: BTreeMap<u32, u64>,
    /// Partition → applied mark (see [`Store::mark_applied`]).
    applied: BTreeMap<u32, i64>,
    /// Partitions whose loss is recorded → whether an operator accepted it (see
    /// [`Store::accept_loss`]).
    losses: BTreeMap<u32, bool>,
    /// See [`Store::deployment_secret`].
    secret: Option<Vec<u8>>,
    /// The secrets accepted, newest first.
    secrets: Vec<Vec<u8>>,
    /// Partition → its instance index (see [`Store::list`]).
    indexes: BTreeMap<u32, Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// id → (group, entry).
    entries: BTreeMap<String, (String, String)>,
    /// group → instances in it.
    counts: BTreeMap<String, u64>,
    /// (updated_at, id) of every entry, for [`Store::recent`].
    recent: std::collections::BTreeSet<(i64, String)>,
}

#[derive(Debug, Default)]
struct Timers {
    /// Parked: (fire_at, arrival number) → envelope.
    parked: BTreeMap<(i64, u64), Vec<u8>>,
    arrivals: u64,
    /// Claimed, not yet acknowledged.
    released: VecDeque<ReleasedTimer>,
    /// Last seq of the timer stream.
    last_seq: i64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every stored instance id, sorted.
    pub fn ids(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("store lock");
        let mut ids: Vec<String> = inner.instances.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The blob of `id`, if any (synchronous, for inspection).
    pub fn get(&self, id: &str) -> Option<Stored> {
        let inner = self.inner.lock().expect("store lock");
        inner.instances.get(id).map(|(blob, etag)| Stored { blob: blob.clone(), etag: *etag })
    }

    /// Lose the deployment secrets, as a Redis restarted without its data does.
    pub fn forget_secrets(&self) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.secret = None;
        inner.secrets.clear();
    }

    /// Parked plus released-but-unacknowledged timers over all partitions.
    pub fn pending_timers(&self) -> usize {
        let inner = self.inner.lock().expect("store lock");
        inner.partitions.values().map(|t| t.parked.len() + t.released.len()).sum()
    }

    /// Partitions with released timers not yet acknowledged (they must be produced again).
    pub fn unacknowledged(&self) -> Vec<u32> {
        let inner = self.inner.lock().expect("store lock");
        inner.partitions.iter().filter(|(_, t)| !t.released.is_empty()).map(|(p, _)| *p).collect()
    }

    /// The earliest fire time over all partitions.
    pub fn next_due(&self) -> Option<i64> {
        let inner = self.inner.lock().expect("store lock");
        inner.partitions.values().filter_map(|t| t.parked.keys().next().map(|(at, _)| *at)).min()
    }
}

/// One instance fewer in `group`; a group with none left is dropped.
fn uncount(counts: &mut BTreeMap<String, u64>, group: String) {
    if let std::collections::btree_map::Entry::Occupied(mut n) = counts.entry(group) {
        *n.get_mut() -= 1;
        if *n.get() == 0 {
            n.remove();
        }
    }
}

impl Inner {
    /// Raise the applied mark of `partition` to `next`, unless it is below `floor`.
    fn raise_mark(&mut self, partition: u32, floor: Option<i64>, next: i64) -> Result<(), Option<i64>> {
        let mark = self.applied.get(&partition).copied();
        if floor.is_some_and(|f| mark.unwrap_or(-1) < f) {
            return Err(mark);
        }
        self.applied.insert(partition, mark.map_or(next, |m| m.max(next)));
        Ok(())
    }

    fn commit(&mut self, partition: u32, writes: Vec<Write>) -> Vec<CommitOutcome> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            let current = self.instances.get(&write.id).map(|(_, etag)| *etag);
            if current != write.expected {
                outcomes.push(CommitOutcome::Conflict);
                continue;
            }
            self.last_etag += 1;
            let etag = self.last_etag;
            let id = write.id;
            match self.instances.get_mut(&id) {
                Some((blob, stored)) if write.append => {
                    blob.extend_from_slice(&write.blob);
                    *stored = etag;
                }
                _ => {
                    self.instances.insert(id.clone(), (write.blob, etag));
                }
            }
            // An emptied record leaves the index (this store has no clock: the key stays).
            if write.expire.is_some() {
                let index = self.indexes.entry(partition).or_default();
                if let Some((g, entry)) = index.entries.remove(&id) {
                    index.recent.remove(&(crate::index::changed_at(&entry), id.clone()));
                    uncount(&mut index.counts, g);
                }
            } else if let Some(indexed) = write.index {
                let index = self.indexes.entry(partition).or_default();
                let group = indexed.group();
                let at = crate::index::changed_at(&indexed.entry);
                let old = index.entries.insert(id.clone(), (group.clone(), indexed.entry));
                if let Some((_, entry)) = &old {
                    index.recent.remove(&(crate::index::changed_at(entry), id.clone()));
                }
                index.recent.insert((at, id.clone()));
                if old.as_ref().map(|(g, _)| g) != Some(&group) {
                    if let Some((g, _)) = old {
                        uncount(&mut index.counts, g);
                    }
                    *index.counts.entry(group).or_default() += 1;
                }
            }
            let timers = self.partitions.entry(partition).or_default();
            for t in write.timers {
                timers.arrivals += 1;
                let key = (t.fire_at, timers.arrivals);
                timers.parked.insert(key, t.envelope);
            }
            outcomes.push(CommitOutcome::Committed { etag });
        }
        outcomes
    }
}

impl Store for MemoryStore {
    async fn load(&self, _partition: u32, ids: &[String]) -> StoreResult<Vec<Option<Stored>>> {
        Ok(ids.iter().map(|id| self.get(id)).collect())
    }

    async fn commit(&self, partition: u32, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        let mut inner = self.inner.lock().expect("store lock");
        Ok(inner.commit(partition, writes))
    }

    async fn take(&self, partition: u32) -> StoreResult<Taken> {
        let mut inner = self.inner.lock().expect("store lock");
        let known = inner.epochs.contains_key(&partition);
        let epoch = inner.epochs.entry(partition).or_default();
        *epoch += 1;
        let epoch = *epoch;
        Ok(Taken { epoch, applied: inner.applied.get(&partition).copied(), known })
    }

    async fn commit_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        applied: i64,
        writes: Vec<Write>,
    ) -> StoreResult<Result<Vec<CommitOutcome>, Option<i64>>> {
        let mut inner = self.inner.lock().expect("store lock");
        if let Err(mark) = inner.raise_mark(partition, floor, applied) {
            return Ok(Err(mark));
        }
        Ok(Ok(inner.commit(partition, writes)))
    }

    async fn mark_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        next: i64,
    ) -> StoreResult<Result<(), Option<i64>>> {
        Ok(self.inner.lock().expect("store lock").raise_mark(partition, floor, next))
    }

    async fn record_loss(&self, partition: u32) -> StoreResult<()> {
        self.inner.lock().expect("store lock").losses.entry(partition).or_insert(false);
        Ok(())
    }

    async fn accept_loss(&self, partition: u32) -> StoreResult<bool> {
        let mut inner = self.inner.lock().expect("store lock");
        Ok(inner.losses.get_mut(&partition).map(|accepted| *accepted = true).is_some())
    }

    async fn loss_accepted(&self, partition: u32) -> StoreResult<bool> {
        let mut inner = self.inner.lock().expect("store lock");
        let accepted = inner.losses.get(&partition) == Some(&true);
        if accepted {
            inner.losses.remove(&partition);
        }
        Ok(accepted)
    }

    async fn commit_fenced(&self, partition: u32, epoch: u64, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        let mut inner = self.inner.lock().expect("store lock");
        if inner.epochs.get(&partition).copied().unwrap_or(0) != epoch {
            return Ok(vec![CommitOutcome::Conflict; writes.len()]);
        }
        Ok(inner.commit(partition, writes))
    }

    async fn claim_due_timers(&self, partition: u32, now: i64, max: usize) -> StoreResult<Vec<ReleasedTimer>> {
        let mut inner = self.inner.lock().expect("store lock");
        let timers = inner.partitions.entry(partition).or_default();
        while timers.released.len() < max {
            let Some(entry) = timers.parked.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let ((fire_at, _), envelope) = entry.remove_entry();
            timers.last_seq += 1;
            timers.released.push_back(ReleasedTimer { seq: timers.last_seq, fire_at, envelope });
        }
        Ok(timers.released.iter().cloned().collect())
    }

    async fn ack_timers(&self, partition: u32, up_to_seq: i64) -> StoreResult<()> {
        let mut inner = self.inner.lock().expect("store lock");
        let timers = inner.partitions.entry(partition).or_default();
        while timers.released.front().is_some_and(|t| t.seq <= up_to_seq) {
            timers.released.pop_front();
        }
        Ok(())
    }

    async fn timer_backlog(&self, partition: u32) -> StoreResult<(Option<i64>, usize)> {
        let inner = self.inner.lock().expect("store lock");
        Ok(inner
            .partitions
            .get(&partition)
            .map_or((None, 0), |t| (t.parked.keys().next().map(|(at, _)| *at), t.parked.len() + t.released.len())))
    }

    async fn list(
        &self,
        partition: u32,
        prefix: &str,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        use std::ops::Bound;
        let inner = self.inner.lock().expect("store lock");
        let Some(index) = inner.indexes.get(&partition) else { return Ok(Vec::new()) };
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        Ok(index
            .entries
            .range((start, Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix))
            .take(count)
            .map(|(id, (_, summary))| (id.clone(), summary.clone()))
            .collect())
    }

    async fn recent(
        &self,
        partition: u32,
        before: Option<(i64, &str)>,
        count: usize,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        use std::ops::Bound;
        let inner = self.inner.lock().expect("store lock");
        let Some(index) = inner.indexes.get(&partition) else { return Ok(Vec::new()) };
        let end = match before {
            Some((at, id)) => Bound::Excluded((at, id.to_owned())),
            None => Bound::Unbounded,
        };
        Ok(index
            .recent
            .range((Bound::Unbounded, end))
            .rev()
            .take(count)
            .filter_map(|(at, id)| Some((*at, id.clone(), index.entries.get(id)?.1.clone())))
            .collect())
    }

    async fn counts(&self, partition: u32) -> StoreResult<Vec<(String, u64)>> {
        let inner = self.inner.lock().expect("store lock");
        Ok(inner
            .indexes
            .get(&partition)
            .map_or_else(Vec::new, |i| i.counts.iter().map(|(g, n)| (g.clone(), *n)).collect()))
    }

    async fn deployment_secret(&self, offer: Vec<u8>, sealed_with: Option<Vec<u8>>) -> StoreResult<Secrets> {
        let mut inner = self.inner.lock().expect("store lock");
        let current = inner.secret.get_or_insert(offer).clone();
        for s in sealed_with.iter().chain([&current]) {
            if !inner.secrets.contains(s) {
                inner.secrets.insert(0, s.clone());
                inner.secrets.truncate(Secrets::KEPT);
            }
        }
        Ok(Secrets::new(current, inner.secrets.clone()))
    }
}
