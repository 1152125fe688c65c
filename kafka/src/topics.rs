//! The topics of a prefix, the settings they are created with, and the partition count.
//!
//! `<prefix>.events` carries every event (keyed by target instance id, murmur2), `<prefix>.state`
//! the latest state of each instance (compacted), `<prefix>.dead` what could not be applied.
//! The partition count of `.events` is fixed when it is created: every component reads the real
//! count from the broker ([`partition_count`]) and never trusts a configured number over it.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use crate::KafkaConnection;

pub use durable_schemas::contract::Topics;

/// How topics are created when a component finds them missing. The defaults leave replication
/// and `min.insync.replicas` to the cluster's own defaults (`default.replication.factor`,
/// `min.insync.replicas`), which is what its operator chose; set them to pin them.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicSettings {
    /// Replication factor of topics this component creates (-1: the cluster's
    /// default.replication.factor). Use 3 on a production cluster.
    #[arg(long, env = "DURABLE_REPLICATION_FACTOR", default_value_t = -1, allow_hyphen_values = true)]
    pub replication_factor: i32,
    /// min.insync.replicas of topics this component creates (unset: the cluster's default). With
    /// replication 3, 2 keeps acknowledged events through the loss of one broker.
    #[arg(long, env = "DURABLE_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<u32>,
    /// How long <prefix>.events keeps events. It must exceed the longest time a partition can
    /// fall behind (processors down or lagging): an event removed before it is applied is lost.
    #[arg(long, env = "DURABLE_EVENTS_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub events_retention: Duration,
    /// How long <prefix>.dead keeps dead letters.
    #[arg(long, env = "DURABLE_DEAD_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub dead_retention: Duration,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            replication_factor: -1,
            min_insync_replicas: None,
            events_retention: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// One topic to create if it is missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Its partitions.
    pub partitions: i32,
    /// Its settings beyond replication (cleanup policy, retention, …).
    pub config: Vec<(&'static str, String)>,
}

impl TopicSettings {
    fn with_isr(&self, mut config: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        if let Some(n) = self.min_insync_replicas {
            config.push(("min.insync.replicas", n.to_string()));
        }
        config
    }

    /// `<prefix>.events` with `partitions` partitions and the events' retention.
    pub fn events(&self, topics: &Topics, partitions: i32) -> TopicSpec {
        let retention = self.events_retention.as_millis().to_string();
        TopicSpec { name: topics.events.clone(), partitions, config: self.with_isr(vec![("retention.ms", retention)]) }
    }

    /// `<prefix>.state`: compacted (the latest record of each instance stays), as many partitions
    /// as the events.
    pub fn state(&self, topics: &Topics, partitions: i32) -> TopicSpec {
        let config = vec![("cleanup.policy", "compact".to_owned())];
        TopicSpec { name: topics.state.clone(), partitions, config: self.with_isr(config) }
    }

    /// `<prefix>.dead`: one partition, the dead letters' retention.
    pub fn dead(&self, topics: &Topics) -> TopicSpec {
        let retention = self.dead_retention.as_millis().to_string();
        TopicSpec { name: topics.dead.clone(), partitions: 1, config: self.with_isr(vec![("retention.ms", retention)]) }
    }

    /// Create the topics that do not exist yet (existing topics are left as they are).
    pub async fn ensure(&self, connection: &KafkaConnection, specs: &[TopicSpec]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            connection.client_config(&[])?.create().context("cannot create a Kafka admin client")?;
        let topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|s| {
                let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(self.replication_factor));
                for (k, v) in &s.config {
                    t = t.set(k, v);
                }
                t
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = tokio::time::timeout(Duration::from_secs(30), admin.create_topics(&topics, &options))
            .await
            .map_err(|_| anyhow::anyhow!(connection.unreachable()))?
            .with_context(|| connection.unreachable())?;
        for result in results {
            match result {
                Ok(topic) => info!(%topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, RDKafkaErrorCode::InvalidReplicationFactor)) => anyhow::bail!(
                    "cannot create topic {topic}: the cluster has fewer brokers than the replication factor \
                     {}; set DURABLE_REPLICATION_FACTOR",
                    self.replication_factor
                ),
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
    }
}

/// How many partitions `topic` has, read from the broker. A topic created a moment ago may not
/// be in every broker's metadata yet (seen on a loaded single broker: the first answer lists
/// it without partitions), so an empty answer is asked again for up to [`METADATA_WAIT`]. Fails
/// with what to do when the topic does not exist or the broker cannot be reached.
pub async fn partition_count(connection: &KafkaConnection, topic: &str) -> anyhow::Result<u32> {
    let client: BaseConsumer = connection.client_config(&[])?.create().context("cannot create a Kafka client")?;
    let (topic, unreachable) = (topic.to_owned(), connection.unreachable());
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + METADATA_WAIT;
        loop {
            let metadata = client
                .fetch_metadata(Some(&topic), Duration::from_secs(20))
                .map_err(|e| anyhow::anyhow!("{unreachable} ({e})"))?;
            let n = metadata.topics().first().map_or(0, |t| t.partitions().len() as u32);
            if n > 0 {
                return Ok(n);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "topic {topic} has no partitions: create it or let the processor create it"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}

/// How long [`partition_count`] waits for a topic's partitions to appear in the metadata.
pub const METADATA_WAIT: Duration = Duration::from_secs(10);
