//! The record cache of one partition core.

use std::collections::HashMap;

use crate::history::InstanceRecord;

/// Committed records of this partition kept between groups, with the etag they were committed
/// at. A cached record is used instead of loading it: if someone else wrote the instance since
/// (another owner during a rebalance), the commit's etag check fails and the instance is
/// reloaded and re-run, so the cache can only save round trips, never serve stale state. A record
/// leaves the cache while it is being stepped and comes back only once its commit is confirmed.
#[derive(Debug, Default)]
pub struct RecordCache {
    records: HashMap<String, (u64, InstanceRecord)>,
    limit: usize,
}

impl RecordCache {
    /// A cache of at most `limit` records (it forgets all of them past this).
    pub fn new(limit: usize) -> Self {
        Self { records: HashMap::new(), limit }
    }

    /// Take the record of `id` out of the cache: `(etag, record)`.
    pub fn take(&mut self, id: &str) -> Option<(u64, InstanceRecord)> {
        self.records.remove(id)
    }

    /// Keep `record`, committed at `etag`.
    pub fn put(&mut self, id: String, etag: u64, record: InstanceRecord) {
        if self.limit == 0 {
            return;
        }
        if self.records.len() >= self.limit {
            self.records.clear();
        }
        self.records.insert(id, (etag, record));
    }
}
