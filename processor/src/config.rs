//! The processor's configuration: flags with environment fallbacks (see `example.env`).

use std::net::SocketAddr;
use std::time::Duration;

/// How a processor connects and behaves. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorConfig {
    /// Kafka bootstrap servers (host:port, comma separated).
    #[arg(long, env = "DURABLE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Name prefix: topics <prefix>.events, <prefix>.state, <prefix>.dead and Redis keys <prefix>:…
    #[arg(long, env = "DURABLE_PREFIX", default_value = "durable")]
    pub prefix: String,
    /// Partitions of <prefix>.events when this processor creates it (fixed afterwards: the most
    /// processors that can share the work).
    #[arg(long, env = "DURABLE_PARTITIONS", default_value_t = 32)]
    pub partitions: i32,
    /// Consumer group the processors share.
    #[arg(long, env = "DURABLE_GROUP", default_value = "durable-processors")]
    pub group: String,
    /// Redis URL of the state store.
    #[arg(long, env = "DURABLE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Address serving the management API (/v1/…), /metrics and /status.
    #[arg(long, env = "DURABLE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Most records a partition applies and commits in one group.
    #[arg(long, env = "DURABLE_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// How often each partition looks for due timers.
    #[arg(long, env = "DURABLE_TIMER_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub timer_interval: Duration,
    /// How long a partition of the events topic may stay without a live owner before this
    /// processor leaves and rejoins the consumer group to have the partitions reassigned
    /// (0s: never). A safety net for brokers that keep a dead member's partitions assigned.
    #[arg(long, env = "DURABLE_ORPHAN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub orphan_timeout: Duration,
    /// Send each activity invocation to the partition of its own id, so that a fan-out's
    /// activities run on every processor. By default an activity runs in its caller's partition
    /// right after the commit that scheduled it, and its reply is applied there too, which saves
    /// two trips through the broker.
    #[arg(long, env = "DURABLE_SPREAD_ACTIVITIES")]
    pub spread_activities: bool,
    /// Raw librdkafka options as KEY=VALUE, repeatable or comma separated; applied to every
    /// Kafka client (e.g. security.protocol=SASL_SSL).
    #[arg(long = "kafka-option", env = "DURABLE_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
}

/// `KEY=VALUE`; an empty item (e.g. `DURABLE_KAFKA_OPTIONS=` in an env file) means no option and
/// parses to an empty key, which the clients skip.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    if s.trim().is_empty() {
        return Ok((String::new(), String::new()));
    }
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

impl ProcessorConfig {
    /// A configuration with the defaults, for tests and embedding.
    pub fn new(brokers: &str, redis_url: &str, prefix: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            partitions: 32,
            group: format!("{prefix}-processors"),
            redis_url: redis_url.to_owned(),
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            batch: 256,
            timer_interval: Duration::from_millis(100),
            orphan_timeout: Duration::from_secs(20),
            spread_activities: false,
            kafka_options: Vec::new(),
        }
    }

    /// The events topic.
    pub fn events_topic(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The compacted state-record topic.
    pub fn state_topic(&self) -> String {
        format!("{}.state", self.prefix)
    }

    /// The dead-letter topic.
    pub fn dead_topic(&self) -> String {
        format!("{}.dead", self.prefix)
    }
}
