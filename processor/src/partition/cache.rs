//! The record cache of one partition core, and the live orchestrations kept with its records.

use std::collections::{BTreeMap, HashMap};

use crate::engine::Live;
use crate::history::{Command, InstanceRecord, LogEntry};

/// A record taken from the cache: the etag it was committed at, the record, and the live code of
/// the step that committed it (an orchestration still running), if it was kept.
#[derive(Debug)]
pub struct Cached {
    /// The etag the record was committed at.
    pub etag: u64,
    /// The record.
    pub record: InstanceRecord,
    /// The orchestration's code where that commit left it.
    pub live: Option<Live>,
    /// What the store holds for it.
    pub shape: Shape,
}

#[derive(Debug)]
struct Entry {
    cached: Cached,
    /// When it was put (its place in `order`).
    tick: u64,
}

/// Committed records of this partition kept between groups, with the etag they were committed
/// at. A cached record is used instead of loading it: if someone else wrote the instance since
/// (another owner during a rebalance), the commit's etag check fails and the instance is
/// reloaded and re-run, so the cache can only save round trips, never serve stale state. A record
/// leaves the cache while it is being stepped and comes back only once its commit is confirmed.
///
/// A running orchestration's record may come with its live code ([`Live`]), which the next step
/// continues instead of replaying the history. The live code is bounded in bytes: past the
/// bound the oldest is dropped (its record stays), which costs that orchestration one replay.
/// Records are bounded in number and in bytes (their stored size): past either the oldest leave;
/// a record larger than the whole byte bound is not kept.
#[derive(Debug, Default)]
pub struct RecordCache {
    records: HashMap<String, Entry>,
    /// Records by the time they were put, oldest first.
    order: BTreeMap<u64, String>,
    /// The records that hold live code, oldest first.
    live_order: BTreeMap<u64, String>,
    tick: u64,
    limit: usize,
    /// Most bytes of records (as stored) kept.
    bytes_limit: usize,
    /// Bytes of the records kept, as stored.
    bytes: usize,
    live_limit: usize,
    live_bytes: usize,
    evicted: u64,
}

impl RecordCache {
    /// A cache of at most `limit` records of at most `bytes_limit` bytes (as stored), and
    /// `live_limit` bytes of live code.
    pub fn new(limit: usize, bytes_limit: usize, live_limit: usize) -> Self {
        Self { limit, bytes_limit, live_limit, ..Self::default() }
    }

    /// How many records it keeps, and their bytes as stored.
    pub fn held(&self) -> (usize, usize) {
        (self.records.len(), self.bytes)
    }

    /// Take the record of `id` out of the cache.
    pub fn take(&mut self, id: &str) -> Option<Cached> {
        let entry = self.records.remove(id)?;
        self.order.remove(&entry.tick);
        self.bytes -= entry.cached.shape.stored();
        if let Some(live) = &entry.cached.live {
            self.live_order.remove(&entry.tick);
            self.live_bytes -= live.approx_bytes();
        }
        Some(entry.cached)
    }

    /// Keep a record as committed, with the live code of the step that committed it.
    pub fn put(&mut self, id: String, cached: Cached) {
        self.take(&id);
        if self.limit == 0 || cached.shape.stored() > self.bytes_limit {
            return;
        }
        // Live code bigger than the whole bound is not kept at all.
        let Cached { etag, record, live, shape } = cached;
        let live = live.filter(|l| l.approx_bytes() <= self.live_limit);
        self.tick += 1;
        let tick = self.tick;
        if let Some(live) = &live {
            self.live_bytes += live.approx_bytes();
            self.live_order.insert(tick, id.clone());
        }
        self.order.insert(tick, id.clone());
        self.bytes += shape.stored();
        self.records.insert(id, Entry { cached: Cached { etag, record, live, shape }, tick });
        while self.records.len() > self.limit || self.bytes > self.bytes_limit {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(entry) = self.records.remove(&oldest) {
                self.bytes -= entry.cached.shape.stored();
                if let Some(live) = entry.cached.live {
                    self.live_order.remove(&entry.tick);
                    self.live_bytes -= live.approx_bytes();
                    self.evicted += 1;
                }
            }
        }
        while self.live_bytes > self.live_limit {
            let Some((_, oldest)) = self.live_order.pop_first() else { break };
            if let Some(live) = self.records.get_mut(&oldest).and_then(|e| e.cached.live.take()) {
                self.live_bytes -= live.approx_bytes();
                self.evicted += 1;
            }
        }
    }

    /// How many live orchestrations it keeps, and about how many bytes they hold.
    pub fn live(&self) -> (usize, usize) {
        (self.live_order.len(), self.live_bytes)
    }

    /// How many live orchestrations were dropped to keep within the bounds since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }
}

/// What the store holds for a record, as much as its next write needs: the length of the blob
/// last written whole, of the delta frames appended since, and where the orchestration's history
/// ended. The next write of a running orchestration appends a delta (its new commands and log
/// entries, and its small fields) while the deltas stay smaller than the whole blob, and rewrites
/// the blob whole past that: the bytes written per step stay flat as the history grows, and a
/// load reads at most about twice the record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// Bytes of the blob last written whole (for a record loaded from the store: its first frame).
    pub base: usize,
    /// Bytes of the deltas appended since.
    pub tail: usize,
    history: Option<End>,
}

/// Where a stored orchestration history ended.
#[derive(Debug, Clone, PartialEq)]
struct End {
    generation: u32,
    commands: usize,
    log: usize,
    last_command: Option<Command>,
    last_entry: Option<LogEntry>,
}

impl Shape {
    /// Bytes the store holds for it.
    pub fn stored(&self) -> usize {
        self.base + self.tail
    }

    /// The shape of `record` stored as `base` bytes written whole and `tail` bytes appended.
    pub fn of(record: &InstanceRecord, base: usize, tail: usize) -> Self {
        let history = record.orchestration().map(|h| End {
            generation: h.generation,
            commands: h.commands.len(),
            log: h.log.len(),
            last_command: h.commands.last().cloned(),
            last_entry: h.log.last().cloned(),
        });
        Self { base, tail, history }
    }

    /// If `record` is the stored history carried on — same generation, every stored command and
    /// log entry still in place (within a generation the engine only appends to both, except a
    /// rewind's removal of the last entry, which the last entry's check catches) — the positions
    /// of its first new command and log entry.
    pub fn extended_by(&self, record: &InstanceRecord) -> Option<(usize, usize)> {
        let end = self.history.as_ref()?;
        let h = record.orchestration()?;
        let same = h.generation == end.generation
            && h.commands.len() >= end.commands
            && h.log.len() >= end.log
            && end.commands.checked_sub(1).map(|i| &h.commands[i]) == end.last_command.as_ref()
            && end.log.checked_sub(1).map(|i| &h.log[i]) == end.last_entry.as_ref();
        same.then_some((end.commands, end.log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(id: &str, bytes: usize) -> Cached {
        let record = InstanceRecord::new(id, 0);
        Cached { etag: 1, shape: Shape::of(&record, bytes, 0), record, live: None }
    }

    /// Past its byte bound the cache drops the least recently put records; a record larger than
    /// the whole bound is not kept at all.
    #[test]
    fn the_cache_is_bounded_in_bytes_not_only_in_records() {
        let mut cache = RecordCache::new(100, 1_000, 0);
        for i in 0..5 {
            cache.put(format!("r{i}"), cached(&format!("r{i}"), 300));
        }
        assert_eq!(cache.held(), (3, 900));
        assert!(cache.take("r0").is_none() && cache.take("r1").is_none());
        assert_eq!(cache.held(), (3, 900), "a miss changes nothing");
        assert!(cache.take("r4").is_some());
        assert_eq!(cache.held(), (2, 600));
        cache.put("huge".into(), cached("huge", 1_001));
        assert_eq!(cache.held(), (2, 600), "larger than the bound: not kept");
        cache.put("r2".into(), cached("r2", 100));
        assert_eq!(cache.held(), (2, 400), "put again: counted once, at its new size");
    }
}
