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
mod queue;
pub mod secret;
mod shared;
mod timers;
pub mod ui;
mod worker;

pub use cli::{log_to_stderr, main, shutdown_signal, Cli, Mode, STOP_GRACE};
pub use dispatch::{Admit, Workers};
pub use shared::Shared;
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

use rdkafka::consumer::{CommitMode, Consumer};
use tracing::{info, warn};

use crate::config::ProcessorConfig;
use crate::registry::Registry;
use crate::store::{AnyStore, RedisStore};

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
    shared::configured_seal(&config)?;
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
    .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let workers = Arc::new(Workers::default());
    let consumer = Arc::new(kafka::consumer(&config, workers.clone())?);
    let listeners = http::Listeners::bind(&config).await?;
    let shared = Arc::new(Shared::start(config, registry, store, consumer.clone()).await?);
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
    let (metrics_addr, servers) = listeners.serve(&shared, &workers)?;
    info!(%metrics_addr, api = ?shared.config.api_addr, https = shared.config.api_tls_cert.is_some(), topic = %shared.config.events_topic(), group = %shared.config.group, "processor running");
    if let Some(ready) = ready {
        let _ = ready.send(metrics_addr);
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            received = consumer.recv() => match received {
                Ok(message) => dispatch::dispatch(&shared, &workers, &message)?,
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
