//! The projector's configuration: flags with environment fallbacks, like the processor's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::mapping::SchemaConfig;

/// Where and how to project.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectorConfig {
    /// Kafka bootstrap servers.
    #[arg(long, env = "DURABLE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic prefix: reads <prefix>.state, dead-letters to <prefix>.dead; collection aliases
    /// are <prefix>_entity_<Name> and <prefix>_orchestrations.
    #[arg(long, env = "DURABLE_PREFIX", default_value = "durable")]
    pub prefix: String,
    /// Consumer group of the projectors.
    #[arg(long, env = "DURABLE_PROJECTOR_GROUP", default_value = "durable-projector")]
    pub group: String,
    /// Typesense base URL.
    #[arg(long, env = "DURABLE_TYPESENSE_URL", default_value = "http://127.0.0.1:8108")]
    pub typesense_url: String,
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
    /// Raw librdkafka options as KEY=VALUE, repeatable or comma separated.
    #[arg(long = "kafka-option", env = "DURABLE_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    if s.trim().is_empty() {
        return Ok((String::new(), String::new()));
    }
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

impl ProjectorConfig {
    /// Defaults, for tests and embedding.
    pub fn new(brokers: &str, prefix: &str, typesense_url: &str, api_key: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            group: format!("{prefix}-projector"),
            typesense_url: typesense_url.to_owned(),
            typesense_api_key: api_key.to_owned(),
            batch: 500,
            linger: Duration::from_millis(200),
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            schemas: None,
            kafka_options: Vec::new(),
        }
    }

    /// The state feed.
    pub fn state_topic(&self) -> String {
        format!("{}.state", self.prefix)
    }

    /// The dead-letter topic.
    pub fn dead_topic(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// A Kafka client configuration with the brokers and the raw options.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in self.kafka_options.iter().filter(|(k, _)| !k.is_empty()) {
            c.set(k, v);
        }
        c
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
    let admin: AdminClient<DefaultClientContext> =
        config.client().create().context("cannot create a Kafka admin client")?;
    let topic = config.dead_topic();
    let unreachable =
        || format!("cannot reach Kafka at {}: is the broker running? set DURABLE_BROKERS", config.brokers);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        admin.create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &options),
    )
    .await
    .map_err(|_| anyhow::anyhow!(unreachable()))?
    .with_context(unreachable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}
