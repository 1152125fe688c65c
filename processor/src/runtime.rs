//! The runtime: the engine on real Kafka and Redis — the I/O around the pure partition core.
//!
//! One consumer in the processors' group reads `<prefix>.events`. The dispatcher ([`dispatch`])
//! hands each record of an assigned partition to that partition's worker task ([`worker`]); a
//! worker owns one [`Partition`](crate::partition::Partition) core and does what it asks, group by
//! group: loads and compare-and-set commits on Redis (fenced ones for local rounds), activity
//! runs, produces on the idempotent producer ([`produce`]) and waits for their
//! acknowledgements; when the core says the group is done, it stores the group's last offset
//! (committed to Kafka by the auto-committer). The protocol itself — grouping, the record cache,
//! partial reruns, resends, local rounds, the output order — is the core's, written once and
//! shared with the simulator; see [`crate::partition`].
//!
//! **Guarantee (at least once in, exactly once in effect):** a record's offset is stored only
//! after its effects are committed in Redis and produced, so a crash anywhere before that
//! redelivers the record; redeliveries and re-sends are dropped by the receivers' dedup marks
//! (`history`), so the state sees each event once. The producer is idempotent: each partition's
//! output reaches each target partition in order and without gaps, which the origin marks rely on.
//!
//! Failures have kinds ([`crate::error`]): a transient one (Redis or Kafka unavailable) abandons
//! the group and retries it with backoff, offsets not stored; a fatal one (the offset cannot be
//! stored: the partition was revoked) stops the worker.
//!
//! Timers ([`timers`]): every worker periodically claims its partition's due timers from Redis,
//! produces them stamped with origin `t<partition>`/seq, and acknowledges them after the produce.
//! On revoke, a worker finishes the group in flight and stops before the partition moves.
//!
//! The processor binary's command line and `main` are in [`cli`].

pub mod api;
pub mod auth;
mod cli;
pub mod dead;
pub mod dev;
mod dispatch;
pub mod http;
pub mod kafka;
mod produce;
pub mod secret;
mod timers;
pub mod ui;
mod worker;

pub use cli::{log_to_stderr, main, shutdown_signal, Cli, Mode, STOP_GRACE};
pub use dispatch::{Admit, Workers};
pub use worker::DRAIN_GRACE;

/// The memory allocator Durable's own binaries use (mimalloc). A step allocates many small,
/// short-lived values on every worker thread; against the system allocator it measured 20–45 %
/// more throughput on every bench workload (`BENCHMARKS.md`). An application built on [`main`]
/// opts in with one line in its binary:
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;
/// ```
pub use mimalloc::MiMalloc as Allocator;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use durable_schemas::contract::seal::{self, Seal};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Headers as _;
use rdkafka::Message;
use tracing::{error, info, warn};

use crate::config::ProcessorConfig;
use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::partition::Record;
use crate::registry::Registry;
use crate::store::{AnyStore, RedisStore};

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

/// The seal of `DURABLE_SECRET`, if it is set; an error (which never shows the secret) if it is
/// not usable.
fn configured_seal(config: &ProcessorConfig) -> anyhow::Result<Option<Seal>> {
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

/// Wall-clock milliseconds: the runtime is the only place that reads the clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Run a processor on Redis until `shutdown` resolves: create topics if absent, serve the
/// management API, `/metrics` and `/status`, consume and apply events. Returns the address the
/// HTTP server listens on through `ready` as soon as it is listening.
pub async fn run(
    config: ProcessorConfig,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    config.kafka.validate()?;
    configured_seal(&config)?;
    auth::Authenticator::new(&config.auth)?;
    config.auth.policy().map_err(|e| anyhow::anyhow!(e))?;
    config.retention().map_err(|e| anyhow::anyhow!(e))?;
    // The store's error names the URL (without its password) and what to set.
    let store = if config.redis_cluster {
        let seeds: Vec<&str> = config.redis_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        RedisStore::connect_cluster(&seeds, &config.prefix, config.redis_ca.as_deref()).await
    } else {
        RedisStore::connect_with(&config.redis_url, &config.prefix, config.redis_ca.as_deref()).await
    }
    .map_err(|e| anyhow::anyhow!("{}", e.0))?;
    kafka::ensure_topics(&config).await?;
    run_with(config, registry, AnyStore::Redis(store), shutdown, ready).await
}

/// [`run`] on any store, with the topics already created (`durable dev` creates them on its
/// in-process broker, which has no CreateTopics).
pub async fn run_with(
    config: ProcessorConfig,
    registry: Registry,
    store: AnyStore,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let auth = auth::Authenticator::new(&config.auth)?;
    let policy = config.auth.policy().map_err(|e| anyhow::anyhow!(e))?;
    let retention = config.retention().map_err(|e| anyhow::anyhow!(e))?;
    if policy.anonymous {
        warn!("anonymous access is on (DURABLE_ANONYMOUS): requests without a token and outside events may do everything; for development only");
    }
    let producer = kafka::producer(&config)?;
    kafka::warm_producer(&producer, &config).await;
    let workers = Arc::new(Workers::default());
    let consumer = Arc::new(kafka::consumer(&config, workers.clone())?);
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics: set DURABLE_METRICS_ADDR", config.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    let api_tls = http::api_tls(&config)?;
    let api_listener = match config.api_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the management API: set DURABLE_API_ADDR"))?,
        ),
        None => None,
    };
    let partitions = kafka::partition_count(&config).await?;
    let seal = match configured_seal(&config)? {
        Some(seal) => secret::Keeper::configured(seal),
        None => secret::Keeper::kept(&store).await?,
    };
    let store_health = store_health(&config, &store).await?;
    let limits = config.limits();
    let activity_concurrency = config.activity_concurrency.max(1);
    let shared = Arc::new(Shared {
        config,
        engine: Engine::new(registry).with_limits(limits).with_policy(policy).with_retention(retention),
        store,
        partitions,
        producer,
        consumer: consumer.clone(),
        activity_pool: Arc::new(tokio::sync::Semaphore::new(activity_concurrency)),
        seal,
        lost: Default::default(),
        store_health,
        auth,
        watching: Default::default(),
    });
    let refresher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(secret::REFRESH).await;
                if let Err(e) = shared.seal.refresh(&shared.store).await {
                    warn!(error = %e, "cannot read the deployment secret again; retrying");
                }
            }
        })
    };
    let status = http::status_router(shared.clone(), workers.clone());
    let mut servers = Vec::new();
    match api_listener {
        None => {
            let app = api::router(shared.clone()).merge(status);
            servers.push(tokio::spawn(http::serve(listener, app, api_tls)));
        }
        Some(api_listener) => {
            servers.push(tokio::spawn(http::serve(listener, status, None)));
            servers.push(tokio::spawn(http::serve(api_listener, api::router(shared.clone()), api_tls)));
        }
    }
    info!(%metrics_addr, api = ?shared.config.api_addr, https = shared.config.api_tls_cert.is_some(), topic = %shared.config.events_topic(), group = %shared.config.group, "processor running");
    if let Some(ready) = ready {
        let _ = ready.send(metrics_addr);
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            received = consumer.recv() => match received {
                Ok(message) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    if let Some(from) = workers.died(partition) {
                        // Its queue and group in flight died with it: never skip them. Read the
                        // partition again from the last offset it stored (librdkafka drops what
                        // it fetched before the seek); the next record starts a new worker.
                        error!(partition, from, "the worker of this partition died while this processor owns it: reading the partition again from the last offset it stored");
                        METRICS.worker_restarts.with_label_values(&[&partition.to_string()]).inc();
                        let topic = shared.config.events_topic();
                        let seek = tokio::task::block_in_place(|| {
                            consumer.seek(&topic, partition, rdkafka::Offset::Offset(from), std::time::Duration::from_secs(10))
                        });
                        match seek {
                            Ok(()) => {
                                workers.restart(partition, from);
                                continue;
                            }
                            Err(e) => {
                                // Not read again here: stop, so that the group gives the
                                // partition to a processor that starts at its committed offset.
                                error!(partition, error = %e, "cannot read the partition again after its worker died: the processor stops");
                                workers.stop(&workers.all());
                                anyhow::bail!("the worker of partition {partition} died and its records could not be read again: {e}");
                            }
                        }
                    }
                    match workers.admit(partition, offset) {
                        Admit::Dispatch => {}
                        Admit::Skip => continue,
                        Admit::AfterGap { skipped_from } => {
                            // Transaction markers leave one-offset gaps all the time: log those
                            // at debug, larger ones (retention, DeleteRecords) at info.
                            let skipped = offset - skipped_from;
                            if skipped > 1 {
                                info!(partition, from = skipped_from, to = offset - 1, skipped, "offsets skipped: not in the log (retention, compaction, DeleteRecords or aborted transactions)");
                            } else {
                                tracing::debug!(partition, offset = skipped_from, "offset skipped (a transaction marker)");
                            }
                            METRICS.offsets_skipped.with_label_values(&[&partition.to_string()]).inc_by(skipped as u64);
                        }
                    }
                    let key = message.key().map(<[u8]>::to_vec);
                    let payload = message.payload().map(<[u8]>::to_vec);
                    let mac = message.headers().and_then(|h| h.iter().find(|h| h.key == seal::HEADER)).and_then(|h| h.value);
                    let sealed = shared.seal.verify(key.as_deref().unwrap_or_default(), payload.as_deref().unwrap_or_default(), mac);
                    let record = Record { offset, key, payload, sealed };
                    shared.watching.saw(&record);
                    let inbox = dispatch::workers_inbox(&workers, &shared, partition);
                    if !inbox.push(&shared, record) {
                        warn!(partition, "worker stopped while a record was handed to it; it will be redelivered");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "consumer error: is the broker running? (DURABLE_BROKERS)");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            },
        }
    }
    info!("shutting down: finishing groups in flight");
    workers.stop(&workers.all());
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last commit: nothing to commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) | Ok(()) => {}
        Err(e) => warn!(error = %e, "final offset commit failed; the last records will be redelivered (harmless)"),
    }
    refresher.abort();
    for server in servers {
        server.abort();
    }
    info!("stopped");
    Ok(())
}
