//! Releasing a partition's due timers: claim from the store, produce the records the partition
//! core makes of them, wait for the acknowledgements, then acknowledge in the store.

use std::sync::Arc;

use super::produce::{acknowledged, enqueue_outgoing};
use super::{now_ms, Shared};
use crate::error::Error;
use crate::metrics::METRICS;
use crate::partition::timer_records;
use crate::store::Store;

/// Release the partition's due timers (at most 512 per call); with `gauge`, update the backlog
/// metric. Timers claimed but not acknowledged are released again (same seq) by the next call
/// or owner; receivers drop the copies.
pub async fn release(shared: &Arc<Shared>, partition: u32, gauge: bool) -> Result<(), Error> {
    let released = shared.store.claim_due_timers(partition, now_ms(), 512).await?;
    if let Some(last) = released.last().map(|t| t.seq) {
        let records = timer_records(partition, &shared.config.events_topic(), &released);
        let label = partition.to_string();
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            if r.reason().is_some() {
                METRICS.dead_letters.with_label_values(&[&label]).inc();
            }
            deliveries.push(enqueue_outgoing(shared, r, &label).await?);
        }
        for d in deliveries {
            acknowledged(shared, d).await.map_err(|e| Error { message: format!("timer {e}"), ..e })?;
        }
        shared.store.ack_timers(partition, last).await?;
    }
    if gauge {
        let (_, backlog) = shared.store.timer_backlog(partition).await?;
        METRICS.timer_backlog.with_label_values(&[&partition.to_string()]).set(backlog as i64);
    }
    Ok(())
}
