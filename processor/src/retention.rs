//! Retention: how long a finished instance is kept before it is purged. Pure.
//!
//! When a step leaves an instance *done* — an orchestration completed, failed or terminated (or
//! pending: events raised on it wait for a start that has not come), or
//! an entity whose state was deleted and that holds no lock and has nothing queued — and its
//! type has a retention period, the step parks a `Purge` with reason [`REASON`] to the instance
//! itself, due after that period, in the partition's timer set (committed with the step, like
//! every timer). When it comes due the instance is purged if it is still done; an orchestration
//! restarted since is left alone (its current generation started after the timer was set, and
//! its next end parks a new one). A purge publishes a tombstone on the state topic; the store
//! lets the emptied record expire (`DURABLE_PURGE_GRACE`), so its memory comes back.
//!
//! Instances that were already done when a retention period was configured have no timer: purge
//! them by filter (`durable purge --status completed …`).

use std::collections::BTreeMap;

use crate::history::{Body, InstanceRecord};
use crate::id::InstanceId;

/// The reason a retention timer's `Purge` carries.
pub const REASON: &str = "retention";

/// Retention periods, in milliseconds: one for every type, and per type name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// For every type without its own period; `None` keeps them.
    pub default: Option<i64>,
    /// By orchestration or entity name.
    pub by_name: BTreeMap<String, i64>,
}

impl Retention {
    /// The period for `id`'s type, if it has one (never for Durable's own `durable.` types).
    pub fn of(&self, id: &InstanceId) -> Option<i64> {
        if id.name().starts_with("durable.") {
            return None;
        }
        self.by_name.get(id.name()).copied().or(self.default).filter(|ms| *ms >= 0)
    }

    /// Whether any type has a period.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_name.is_empty()
    }
}

/// Whether `record` is done: retention counts from here.
pub fn done(record: &InstanceRecord) -> bool {
    match &record.body {
        Body::Empty => false,
        Body::Orchestration(h) => h.status.is_finished() || h.status.is_pending(),
        Body::Entity(e) => e.state.is_none() && e.lock.is_none() && e.queue.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Kind;

    #[test]
    fn a_type_of_its_own_beats_the_default_and_durables_own_types_are_kept() {
        let r = Retention { default: Some(1000), by_name: [("Cart".to_owned(), 50)].into() };
        let id = |kind, name: &str| InstanceId::new(kind, name, "k").unwrap();
        assert_eq!(r.of(&id(Kind::Entity, "Cart")), Some(50));
        assert_eq!(r.of(&id(Kind::Orchestration, "Transfer")), Some(1000));
        assert_eq!(r.of(&id(Kind::Entity, "durable.quota")), None);
        assert_eq!(Retention::default().of(&id(Kind::Entity, "Cart")), None);
    }
}
