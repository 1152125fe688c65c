//! The projector's configuration: flags with environment fallbacks, like the processor's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use durable_kafka::{KafkaConnection, TopicSettings, Topics};
use rdkafka::config::ClientConfig;

use crate::mapping::SchemaConfig;

/// Where and how to project.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectorConfig {
    /// Where the brokers are and how to connect to them.
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// How the dead-letter topic is created if it is missing.
    #[command(flatten)]
    pub topic_settings: TopicSettings,
    /// Topic prefix: reads <prefix>.state, dead-letters to <prefix>.dead; collection aliases
    /// are <prefix>_entity_<Name> and <prefix>_orchestrations.
    #[arg(long, env = "DURABLE_PREFIX", default_value = durable_schemas::contract::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Consumer group of the projectors.
    #[arg(long, env = "DURABLE_PROJECTOR_GROUP", default_value = "durable-projector")]
    pub group: String,
    /// Typesense base URL (https:// for TLS).
    #[arg(long, env = "DURABLE_TYPESENSE_URL", default_value = "http://127.0.0.1:8108")]
    pub typesense_url: String,
    /// PEM file of the CA certificate that signed Typesense's (for an https:// URL whose
    /// certificate is not from a public CA).
    #[arg(long, env = "DURABLE_TYPESENSE_CA")]
    pub typesense_ca: Option<std::path::PathBuf>,
    /// Typesense API key (admin key: the projector creates collections and aliases).
    #[arg(long, env = "DURABLE_TYPESENSE_API_KEY", hide_env_values = true)]
    pub typesense_api_key: String,
    /// Most records in one bulk import.
    #[arg(long, env = "DURABLE_PROJECTOR_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// How long a batch waits for more records after its first.
    #[arg(long, env = "DURABLE_PROJECTOR_LINGER", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Address serving /metrics and /status.
    #[arg(long, env = "DURABLE_PROJECTOR_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,
    /// JSON file of per-type collection schemas: {"Account": {"fields": [...],
    /// "default_sorting_field": "balance"}, "orchestrations": {...}}; unlisted types get an
    /// automatic schema. A changed schema takes effect with `projector rebuild`.
    #[arg(long, env = "DURABLE_PROJECTOR_SCHEMAS")]
    pub schemas: Option<std::path::PathBuf>,
}

impl ProjectorConfig {
    /// Defaults, for tests and embedding.
    pub fn new(brokers: &str, prefix: &str, typesense_url: &str, api_key: &str) -> Self {
        Self {
            kafka: KafkaConnection::plaintext(brokers),
            topic_settings: TopicSettings::default(),
            prefix: prefix.to_owned(),
            group: format!("{prefix}-projector"),
            typesense_url: typesense_url.to_owned(),
            typesense_ca: None,
            typesense_api_key: api_key.to_owned(),
            batch: 500,
            linger: Duration::from_millis(200),
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            schemas: None,
        }
    }

    /// The state feed.
    pub fn state_topic(&self) -> String {
        Topics::new(&self.prefix).state
    }

    /// The dead-letter topic.
    pub fn dead_topic(&self) -> String {
        Topics::new(&self.prefix).dead
    }

    /// A Kafka client configuration: the connection (brokers, TLS, SASL) and the raw options.
    pub fn client(&self) -> anyhow::Result<ClientConfig> {
        self.kafka.client_config(&[])
    }

    /// The per-type schemas from `--schemas` (empty without it).
    pub fn schema_config(&self) -> anyhow::Result<SchemaConfig> {
        let Some(path) = &self.schemas else { return Ok(SchemaConfig::new()) };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the schemas file {}: set DURABLE_PROJECTOR_SCHEMAS", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON object of schemas", path.display()))
    }
}

/// Create `<prefix>.dead` if it does not exist.
pub async fn ensure_dead_topic(config: &ProjectorConfig) -> anyhow::Result<()> {
    let spec = config.topic_settings.dead(&Topics::new(&config.prefix));
    config.topic_settings.ensure(&config.kafka, &[spec]).await
}
