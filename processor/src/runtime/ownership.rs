//! The owners' liveness view, and the safety net built on it.
//!
//! Every second each processor promises in the store that the partitions it owns have a live
//! owner for the next few seconds ([`Store::renew_ownership`]), and reads which partitions have
//! one. The consumer group is what assigns partitions; this view only *checks* it: a partition
//! that stays without a live owner for longer than `--orphan-timeout` means the group assigned it
//! to a member that is gone and did not take it back (tansu 0.6.0 does this after a SIGKILL: the
//! dead member's session expires, but the generation does not change, so the live members keep
//! their old assignment). The processor then leaves and rejoins the group, which forces a new
//! generation computed from the live members only. On a broker that expires members correctly
//! the check never fires; `durable_unowned_partitions` shows the view either way.
//!
//! Correctness never depends on this view: two owners of one partition for a moment are safe
//! (every commit is a compare-and-set on the instance's etag, and receivers drop duplicates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tracing::{info, warn};

use super::{Shared, Workers};
use crate::metrics::METRICS;
use crate::runtime::partition::now_ms;
use crate::store::Store;

/// How long one renewal promises liveness.
const LEASE: Duration = Duration::from_secs(5);
/// How often ownership is renewed and checked.
const PERIOD: Duration = Duration::from_secs(1);

/// Partitions missing from `owned` among `0..partitions`.
pub fn unowned(partitions: u32, owned: &[u32]) -> Vec<u32> {
    (0..partitions).filter(|p| !owned.contains(p)).collect()
}

/// Renew and check until the task is aborted.
pub async fn watch(shared: Arc<Shared>, workers: Arc<Workers>) {
    let topic = shared.config.events_topic();
    let timeout = shared.config.orphan_timeout;
    let mut since: Option<Instant> = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mine: Vec<u32> = workers.owned().into_iter().map(|p| p as u32).collect();
        let now = now_ms();
        if let Err(e) = shared.store.renew_ownership(&mine, now + LEASE.as_millis() as i64).await {
            warn!(error = %e, "cannot renew partition ownership in the store");
            continue;
        }
        let n = shared.partitions;
        let owned = match shared.store.owned_partitions(now).await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(error = %e, "cannot read partition ownership from the store");
                continue;
            }
        };
        let missing = unowned(n, &owned);
        METRICS.unowned.with_label_values(&[] as &[&str]).set(missing.len() as i64);
        if missing.is_empty() || timeout.is_zero() {
            since = None;
            continue;
        }
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() < timeout {
            continue;
        }
        warn!(?missing, after = ?started.elapsed(), "partitions have had no live owner: leaving and rejoining the consumer group to have them reassigned");
        METRICS.rejoins.with_label_values(&[] as &[&str]).inc();
        let consumer = shared.consumer.clone();
        let t = topic.clone();
        let rejoined = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            consumer.subscribe(&[&t])
        })
        .await;
        match rejoined {
            Ok(Ok(())) => info!("rejoined the consumer group"),
            Ok(Err(e)) => warn!(error = %e, "cannot resubscribe to the events topic; retrying"),
            Err(e) => warn!(error = %e, "rejoin task failed; retrying"),
        }
        // Give the new generation a full timeout to settle before judging again.
        since = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unowned_lists_the_partitions_nobody_renewed() {
        assert_eq!(unowned(4, &[0, 2]), vec![1, 3]);
        assert_eq!(unowned(3, &[2, 1, 0]), Vec::<u32>::new());
        assert_eq!(unowned(2, &[]), vec![0, 1]);
    }
}
