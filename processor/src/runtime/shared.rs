//! What every worker, the dispatcher and the API share: [`Shared`], built once at start from the
//! configuration (the seal, the store's health, the engine with its limits and policy).

use std::sync::Arc;

use durable_schemas::contract::seal::Seal;
use tracing::warn;

use super::{auth, kafka, secret, worker};
use crate::config::ProcessorConfig;
use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::AnyStore;

/// What every worker shares.
pub struct Shared {
    /// The configuration.
    pub config: ProcessorConfig,
    /// The pure engine with the application's handlers.
    pub engine: Engine,
    /// The state store.
    pub store: AnyStore,
    /// Partitions of `<prefix>.events` (read from the broker at start).
    pub partitions: u32,
    /// Producer for events, state records and dead letters.
    pub producer: rdkafka::producer::FutureProducer,
    /// The group consumer (workers store offsets through it).
    pub consumer: Arc<kafka::GroupConsumer>,
    /// Room for activity calls running at once, across every partition of this process
    /// (`DURABLE_ACTIVITY_CONCURRENCY`).
    pub activity_pool: Arc<tokio::sync::Semaphore>,
    /// Seals the records this processor produces to the events topic and checks the seals of
    /// the records it reads ([`crate::trust`]).
    pub seal: secret::Keeper,
    /// Partitions whose state the store lost, waiting for an operator (see
    /// [`crate::store::Taken::check`]).
    pub lost: std::sync::Mutex<std::collections::BTreeSet<u32>>,
    /// What the store's settings promise (`None`: the in-memory store of `durable dev`).
    pub store_health: Option<crate::store::StoreHealth>,
    /// Verifies the API's bearer tokens.
    pub auth: auth::Authenticator,
    /// The callers of the activity calls running here, and what arrived for them since.
    pub watching: Arc<worker::Watching>,
}

impl Shared {
    /// Everything the processor shares, from its configuration: the producer (warmed), the
    /// partition count, the seal (configured or kept in the store), the store's health.
    pub async fn start(
        config: ProcessorConfig,
        registry: Registry,
        store: AnyStore,
        consumer: Arc<kafka::GroupConsumer>,
    ) -> anyhow::Result<Self> {
        let auth = auth::Authenticator::new(&config.auth)?;
        let policy = config.auth.policy().map_err(|e| anyhow::anyhow!(e))?;
        let retention = config.retention().map_err(|e| anyhow::anyhow!(e))?;
        if policy.anonymous {
            warn!("anonymous access is on (DURABLE_ANONYMOUS): requests without a token and outside events may do everything; for development only");
        }
        let producer = kafka::producer(&config)?;
        kafka::warm_producer(&producer, &config).await;
        let partitions = kafka::partition_count(&config).await?;
        let seal = match configured_seal(&config)? {
            Some(seal) => secret::Keeper::configured(seal),
            None => secret::Keeper::kept(&store).await?,
        };
        let store_health = store_health(&config, &store).await?;
        let limits = config.limits();
        let activity_concurrency = config.activity_concurrency.max(1);
        Ok(Self {
            config,
            engine: Engine::new(registry).with_limits(limits).with_policy(policy).with_retention(retention),
            store,
            partitions,
            producer,
            consumer,
            activity_pool: Arc::new(tokio::sync::Semaphore::new(activity_concurrency)),
            seal,
            lost: Default::default(),
            store_health,
            auth,
            watching: Default::default(),
        })
    }
}

/// The seal of `DURABLE_SECRET`, if it is set; an error (which never shows the secret) if it is
/// not usable.
pub(super) fn configured_seal(config: &ProcessorConfig) -> anyhow::Result<Option<Seal>> {
    // An empty value (`DURABLE_SECRET=` in an env file) means none.
    let secrets: Vec<&str> = config.secret.iter().map(|s| s.expose()).filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return Ok(None);
    }
    Seal::new(&secrets).map(Some).map_err(|e| anyhow::anyhow!("DURABLE_SECRET is not usable: {e}"))
}

/// Read the Redis server's settings: refuse one that evicts keys (unless allowed), warn about
/// commits that a crash of Redis can lose, and report both in `/status` and the metrics.
async fn store_health(config: &ProcessorConfig, store: &AnyStore) -> anyhow::Result<Option<crate::store::StoreHealth>> {
    let AnyStore::Redis(redis) = store else {
        METRICS.store_durable.with_label_values(&[] as &[&str]).set(0);
        return Ok(None);
    };
    let health = redis.health().await;
    if health.evicts() {
        let policy = health.maxmemory_policy.as_deref().unwrap_or_default();
        if !config.redis_allow_eviction {
            anyhow::bail!(
                "Redis evicts keys under memory pressure (maxmemory-policy {policy}): instance state would disappear without a trace. Set maxmemory-policy noeviction on the server, or start with DURABLE_REDIS_ALLOW_EVICTION=true to accept it"
            );
        }
        warn!(policy, "Redis evicts keys under memory pressure and DURABLE_REDIS_ALLOW_EVICTION is set: evicted instance state is lost");
    }
    if health.maxmemory_policy.is_none() {
        warn!("cannot read Redis's maxmemory-policy (CONFIG GET refused, as managed Redis often does): make sure it is noeviction, or instance state can be evicted");
    }
    METRICS.store_durable.with_label_values(&[] as &[&str]).set(i64::from(health.durable()));
    if !health.durable() {
        warn!(
            appendonly = ?health.appendonly,
            appendfsync = ?health.appendfsync,
            replicas = ?health.replicas,
            "a crash of the Redis machine can lose the last acknowledged commits (durable commits need appendonly yes and appendfsync always); the processors detect such a loss and stop the affected partitions"
        );
    }
    Ok(Some(health))
}
