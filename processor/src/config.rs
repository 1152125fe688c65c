//! The processor's configuration: flags with environment fallbacks (see `example.env`).

use std::net::SocketAddr;
use std::time::Duration;

use durable_kafka::{KafkaConnection, Secret, TopicSettings, Topics};

use crate::engine::Limits;

/// How a processor connects and behaves. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorConfig {
    /// Where the brokers are and how to connect to them.
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// How missing topics are created.
    #[command(flatten)]
    pub topic_settings: TopicSettings,
    /// Name prefix: topics <prefix>.events, <prefix>.state, <prefix>.dead and Redis keys <prefix>:…
    #[arg(long, env = "DURABLE_PREFIX", default_value = "durable")]
    pub prefix: String,
    /// Partitions of <prefix>.events when this processor creates it (fixed afterwards: the most
    /// processors that can share the work). An existing topic keeps its own count, which the
    /// processor reads from the broker.
    #[arg(long, env = "DURABLE_PARTITIONS", default_value_t = 32)]
    pub partitions: i32,
    /// Consumer group the processors share.
    #[arg(long, env = "DURABLE_GROUP", default_value = "durable-processors")]
    pub group: String,
    /// Redis URL of the state store (redis://[user:password@]host:port[/db], rediss:// for TLS).
    #[arg(long, env = "DURABLE_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// DURABLE_REDIS_URL names nodes of a Redis Cluster, comma separated (some of them are
    /// enough: the client learns the rest).
    #[arg(long, env = "DURABLE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// PEM file of the CA certificate that signed the Redis server's (for a rediss:// URL);
    /// unset: the system's trusted roots.
    #[arg(long, env = "DURABLE_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// Start even though Redis evicts keys under memory pressure (a maxmemory-policy other than
    /// noeviction): evicted instance state is lost without a trace. Without it such a Redis is
    /// refused at start.
    #[arg(long, env = "DURABLE_REDIS_ALLOW_EVICTION")]
    pub redis_allow_eviction: bool,
    /// Address serving the management API (/v1/…), /metrics and /status.
    #[arg(long, env = "DURABLE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Most records a partition applies and commits in one group.
    #[arg(long, env = "DURABLE_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Largest event (encoded record value) a processor applies; larger records go to the
    /// dead-letter topic with their first 64 KiB. Keep it at or below the brokers'
    /// message.max.bytes (1 MB by default).
    #[arg(long, env = "DURABLE_MAX_EVENT_BYTES", default_value_t = 1_000_000)]
    pub max_event_bytes: usize,
    /// How often each partition looks for due timers.
    #[arg(long, env = "DURABLE_TIMER_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub timer_interval: Duration,
    /// Send each activity invocation to the partition of its own id, so that a fan-out's
    /// activities run on every processor. By default an activity runs in its caller's partition
    /// right after the commit that scheduled it, and its reply is applied there too, which saves
    /// two trips through the broker.
    #[arg(long, env = "DURABLE_SPREAD_ACTIVITIES")]
    pub spread_activities: bool,
    /// How long one activity call may run past its start or its last heartbeat
    /// (ActivityContext::heartbeat): past it the call fails with kind `Timeout` (the caller's
    /// retry policy applies) and its partition goes on.
    #[arg(long, env = "DURABLE_ACTIVITY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub activity_timeout: Duration,
    /// Most activity calls running at once in this process, across all its partitions; more wait
    /// for room.
    #[arg(long, env = "DURABLE_ACTIVITY_CONCURRENCY", default_value_t = 512)]
    pub activity_concurrency: usize,
    /// The deployment secret: processors seal every record they produce to <prefix>.events with
    /// it, and a record without a valid seal may only start, raise, signal or terminate
    /// (schemas/README.md, "Who may send what"). At least 16 bytes; during a rotation give
    /// several, comma separated: the first seals, all are accepted. Unset, the processors share
    /// a random one kept in Redis (<prefix>:secret).
    #[arg(long, env = "DURABLE_SECRET", hide_env_values = true, value_delimiter = ',')]
    pub secret: Vec<Secret>,
    /// Largest entity state, orchestration output or custom status (bytes; it travels in a state
    /// record, so keep it under DURABLE_MAX_EVENT_BYTES): an operation that would store more
    /// fails with kind StateTooLarge and changes nothing; an orchestration fails with it.
    #[arg(long, env = "DURABLE_MAX_STATE_BYTES", default_value_t = Limits::default().max_state_bytes)]
    pub max_state_bytes: usize,
    /// Largest orchestration history (approximate bytes of the current generation): past it the
    /// orchestration fails with kind HistoryTooLarge. Long-running ones use continue_as_new.
    #[arg(long, env = "DURABLE_MAX_HISTORY_BYTES", default_value_t = Limits::default().max_history_bytes)]
    pub max_history_bytes: usize,
    /// Most external events an orchestration buffers before a wait_for_event takes them; more
    /// are dead-lettered.
    #[arg(long, env = "DURABLE_MAX_INBOX", default_value_t = Limits::default().max_inbox)]
    pub max_inbox: usize,
    /// Most operations waiting at a locked entity; more are dead-lettered (calls get QueueFull).
    #[arg(long, env = "DURABLE_MAX_ENTITY_QUEUE", default_value_t = Limits::default().max_entity_queue)]
    pub max_entity_queue: usize,
    /// Most new commands one orchestration issues in one step: past it, it fails with kind
    /// FanOutTooLarge.
    #[arg(long, env = "DURABLE_MAX_FAN_OUT", default_value_t = Limits::default().max_fan_out)]
    pub max_fan_out: usize,
}

impl ProcessorConfig {
    /// A configuration with the defaults, for tests and embedding.
    pub fn new(brokers: &str, redis_url: &str, prefix: &str) -> Self {
        Self {
            kafka: KafkaConnection::plaintext(brokers),
            topic_settings: TopicSettings::default(),
            prefix: prefix.to_owned(),
            partitions: 32,
            group: format!("{prefix}-processors"),
            redis_url: redis_url.to_owned(),
            redis_ca: None,
            redis_cluster: false,
            redis_allow_eviction: false,
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            batch: 256,
            max_event_bytes: 1_000_000,
            timer_interval: Duration::from_millis(100),
            spread_activities: false,
            activity_timeout: Duration::from_secs(300),
            activity_concurrency: 512,
            secret: Vec::new(),
            max_state_bytes: Limits::default().max_state_bytes,
            max_history_bytes: Limits::default().max_history_bytes,
            max_inbox: Limits::default().max_inbox,
            max_entity_queue: Limits::default().max_entity_queue,
            max_fan_out: Limits::default().max_fan_out,
        }
    }

    /// The limits the engine enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.max_state_bytes,
            max_history_bytes: self.max_history_bytes,
            max_inbox: self.max_inbox,
            max_entity_queue: self.max_entity_queue,
            max_fan_out: self.max_fan_out,
        }
    }

    /// The topics of this prefix.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.prefix)
    }

    /// The events topic.
    pub fn events_topic(&self) -> String {
        self.topics().events
    }

    /// The compacted state-record topic.
    pub fn state_topic(&self) -> String {
        self.topics().state
    }

    /// The dead-letter topic.
    pub fn dead_topic(&self) -> String {
        self.topics().dead
    }
}

/// `url` with the password of its user-info part (`scheme://user:password@host`) replaced by
/// `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redis_urls_lose_their_password() {
        assert_eq!(redact_url("redis://u:pa:ss@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact_url("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
