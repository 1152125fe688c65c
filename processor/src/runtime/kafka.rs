//! Kafka clients: topic creation, the idempotent murmur2 producer, the group consumer whose
//! rebalance callback drains revoked partitions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::ClientContext;
use tracing::info;

use super::Workers;
use crate::config::ProcessorConfig;

/// The consumer type of the processors' group.
pub type GroupConsumer = StreamConsumer<RebalanceContext>;

/// Create `<prefix>.events` (N partitions), `<prefix>.state` (compacted) and `<prefix>.dead` if
/// they do not exist, with the configured replication and retention.
pub async fn ensure_topics(config: &ProcessorConfig) -> anyhow::Result<()> {
    let (settings, topics) = (&config.topic_settings, config.topics());
    let specs = [
        settings.events(&topics, config.partitions),
        settings.state(&topics, config.partitions),
        settings.dead(&topics),
    ];
    settings.ensure(&config.kafka, &specs).await
}

/// How many partitions `<prefix>.events` has: the broker's count, whatever `--partitions` says
/// (it only applies when the processor creates the topic). A difference is logged.
pub async fn partition_count(config: &ProcessorConfig) -> anyhow::Result<u32> {
    let n = durable_kafka::topics::partition_count(&config.kafka, &config.events_topic()).await?;
    if i64::from(n) != i64::from(config.partitions) {
        tracing::warn!(
            topic = %config.events_topic(),
            partitions = n,
            configured = config.partitions,
            "the events topic exists with a different partition count than DURABLE_PARTITIONS: using the topic's"
        );
    }
    Ok(n)
}

/// The producer: idempotent (ordered, no gaps, no duplicates per partition) and partitioning by
/// key with murmur2, like Kafka's Java client.
pub fn producer(config: &ProcessorConfig) -> anyhow::Result<FutureProducer> {
    let settings = [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("partitioner", "murmur2_random"),
        // Every hop of an orchestration waits for its acknowledgement: do not hold records back
        // (hello3 p50 at 100/s: 20 ms with 1 ms, 14 ms with 0; batches still form while requests
        // are in flight).
        ("linger.ms", "0"),
        // Never time a record out: a record that timed out while later ones of the same
        // partition got through would leave a gap in the origin sequence (receivers drop
        // anything below the highest sequence they saw), and its resend would be dropped as a
        // duplicate. With no timeout the idempotent producer retries until the broker is back,
        // in order; a group waiting for it holds its offsets, and a stopping worker abandons it
        // after the grace period (the next owner redoes it). Permanent errors (too large, not
        // authorized) still fail at once.
        ("message.timeout.ms", "0"),
    ];
    config.kafka.client_config(&settings)?.create().context("cannot create the Kafka producer")
}

/// Ask for the metadata of the topics the producer writes, so that the first group does not wait
/// for it: librdkafka looks a topic up on its first record and holds the record until the
/// answer (measured ~0.8 s for a new topic on the earlier test broker), which held that
/// partition's first group (and, through the dispatcher, every other partition) that long. A failure is only logged: the
/// producer looks the topics up again when it needs them.
pub async fn warm_producer(producer: &FutureProducer, config: &ProcessorConfig) {
    let topics = [config.events_topic(), config.state_topic(), config.dead_topic()];
    let producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for topic in topics {
            if let Err(e) = producer.client().fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                tracing::warn!(%topic, error = %e, "no metadata for a topic yet; its first record will wait for it");
            }
        }
    })
    .await;
}

/// Rebalance hook: before partitions are taken away, their workers finish the group in flight
/// and stop, and the stored offsets are committed, so the next owner starts where this one ended.
pub struct RebalanceContext {
    workers: Arc<Workers>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            info!(?partitions, "partitions revoked: draining");
            self.workers.stop(&partitions);
            let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        }
    }

    fn post_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // Where each partition starts: its committed offset, or its beginning if none.
            let committed = consumer.committed_offsets((*list).clone(), Duration::from_secs(10));
            let mut starts = Vec::new();
            let mut committed_offsets = Vec::new();
            for e in list.elements() {
                let from_commit = committed.as_ref().ok().and_then(|c| {
                    c.find_partition(e.topic(), e.partition()).and_then(|tp| match tp.offset() {
                        rdkafka::Offset::Offset(n) => Some(n),
                        _ => None,
                    })
                });
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                    .unwrap_or((0, i64::MAX));
                // A committed offset beyond the log's end (a topic recreated under a group that
                // kept its offsets) makes the consumer start at the beginning: so do we, or every
                // record would look already dispatched. Below the log's start it stays, and the
                // records retention removed count as skipped.
                let start = match from_commit {
                    Some(n) if n <= high => {
                        committed_offsets.push((e.partition(), n));
                        n
                    }
                    Some(n) => {
                        tracing::warn!(
                            partition = e.partition(),
                            committed = n,
                            high,
                            "committed offset beyond the end of the log: starting at its beginning"
                        );
                        low
                    }
                    None => low,
                };
                starts.push((e.partition(), start));
            }
            info!(?starts, "partitions assigned (partition, first offset)");
            self.workers.committed_at_assignment(&committed_offsets);
            self.workers.assign(&starts);
            // A partition paused by a worker of an earlier assignment stays paused in librdkafka
            // across rebalances: start every assigned one fetching.
            if let Err(e) = consumer.resume(list) {
                tracing::warn!(error = %e, "cannot resume the assigned partitions");
            }
        }
    }
}

/// The group consumer, subscribed to `<prefix>.events`. Offsets are stored by the workers after
/// each group is committed and produced, and committed every second.
pub fn consumer(config: &ProcessorConfig, workers: Arc<Workers>) -> anyhow::Result<GroupConsumer> {
    let settings = [
        ("group.id", config.group.as_str()),
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        // Apache Kafka answers a fetch as soon as a record arrives (fetch.min.bytes 1), so the
        // wait only bounds idle polling: 100 ms measured better than 1 ms on Kafka 4.1 (hello3 at
        // 338/s: p50 2.0 → 1.6 ms, p99 10.3 → 6.2 ms; the broker is not kept busy answering empty
        // fetches). Brokers that only answer when the wait runs out (librdkafka's mock cluster
        // of `durable dev`) need a short wait: `durable dev` sets 1 ms.
        ("fetch.wait.max.ms", "100"),
    ];
    let consumer: GroupConsumer = config
        .kafka
        .client_config(&settings)?
        .create_with_context(RebalanceContext { workers })
        .context("cannot create the Kafka consumer")?;
    consumer.subscribe(&[&config.events_topic()]).context("cannot subscribe to the events topic")?;
    Ok(consumer)
}
