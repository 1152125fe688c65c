//! The runtime: the engine on real Kafka and Redis.
//!
//! One consumer in the processors' group reads `<prefix>.events`; each assigned partition gets a
//! worker task ([`partition`]) that applies its records in groups:
//!
//! 1. decode (undecodable bytes and unknown events → `<prefix>.dead`, with the reason in headers);
//! 2. load the instances of the group from Redis (one round trip), run [`Engine::step`] for each,
//!    commit all changed instances with one compare-and-set script; instances that lost the
//!    etag check are reloaded and re-run until every write is committed. If an instance's step
//!    would both resend an earlier outbox (its records came again) and commit a new one, the
//!    group ends before that instance's first new record: the resend leaves first;
//! 3. run the activity invocations that arrived through the log (with `--spread-activities`,
//!    or past the local rounds' limit);
//! 4. produce, in input-offset order, everything the group emits — events, dead letters — with
//!    an idempotent producer;
//! 5. **local rounds** (unless activities are spread): the activity invocations the group's
//!    commits scheduled are not produced but run here, right away. Once the events produced so
//!    far are acknowledged (an instance's next commit replaces its outbox), their replies are
//!    applied to their callers in this process, without going through the log: a caller's step
//!    is committed only if it emits nothing but more activity invocations (the next round) and
//!    its state, and only if no newer owner has fenced the partition since this worker started
//!    (each worker takes the partition's next *epoch* from Redis when it starts, and local
//!    commits carry it). The new outbox answers to the same record as the outbox it replaces —
//!    a record of this group, whose offset is not stored yet — so if the worker dies before the
//!    outbox leaves, the next owner reads that record again and sends the outbox; and a zombie
//!    of a rebalance cannot replace an outbox behind the next owner's back, since its fenced
//!    commits fail. Replies that were not applied go through the log like any event. At most
//!    16 rounds per group;
//! 6. produce one state record per instance changed (its latest state) and wait until Kafka
//!    acknowledged everything;
//! 7. only then store the input offset (committed to Kafka by the auto-committer).
//!
//! **Guarantee (at least once in, exactly once in effect):** a record's offset is stored only
//! after its effects are committed in Redis and produced, so a crash anywhere before that
//! redelivers the record; redeliveries and re-sends are dropped by the receivers' dedup marks
//! (`history`), so the state sees each event once. The producer is idempotent: each partition's
//! output reaches each target partition in order and without gaps, which the origin marks rely on.
//!
//! Timers: every worker periodically claims its partition's due timers from Redis, produces them
//! stamped with origin `t<partition>`/seq, and acknowledges them after the produce.
//! On revoke, a worker finishes the group in flight and stops before the partition moves.

pub mod api;
pub mod http;
pub mod kafka;
pub mod partition;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::ProcessorConfig;
use crate::engine::Engine;
use crate::metrics::METRICS;
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
}

/// A running worker.
struct Worker {
    tx: mpsc::Sender<rdkafka::message::OwnedMessage>,
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

/// Workers by partition, and the partitions assigned now; the rebalance callbacks keep both.
#[derive(Default)]
pub struct Workers {
    map: Mutex<HashMap<i32, Worker>>,
    /// Per owned partition, the offset of the next record to hand to its worker: the committed
    /// offset at assignment, then one past each record dispatched. A record below it was
    /// dispatched already (a redelivery after a seek) and is dropped; a record above it follows
    /// a gap, which Kafka logs have for good reasons — a transaction's commit or abort marker,
    /// an aborted transaction's records (not delivered under `read_committed`), records removed
    /// by retention, compaction or `DeleteRecords` — and is dispatched, the gap counted. The
    /// consumer only delivers a partition's records in order (librdkafka drops what it fetched
    /// before a rebalance or a seek), so a gap is never records still to come. A partition not
    /// in the map is not owned.
    expected: Mutex<HashMap<i32, i64>>,
}

/// What to do with a received record.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Hand it to the partition's worker.
    Dispatch,
    /// Hand it to the partition's worker; the offsets from `skipped_from` up to it were never
    /// delivered (a gap in the log).
    AfterGap {
        /// The first offset not delivered.
        skipped_from: i64,
    },
    /// Drop it: already dispatched, or the partition is not owned.
    Skip,
}

impl Workers {
    /// The partitions were assigned to this consumer, each starting at the given offset.
    pub fn assign(&self, starts: &[(i32, i64)]) {
        self.expected.lock().expect("assignment lock").extend(starts.iter().copied());
    }

    /// Decide about the record at `offset` of `partition` (and advance past it unless skipped).
    pub fn admit(&self, partition: i32, offset: i64) -> Admit {
        let mut expected = self.expected.lock().expect("assignment lock");
        match expected.get_mut(&partition) {
            None => Admit::Skip,
            Some(next) if offset < *next => Admit::Skip,
            Some(next) => {
                let skipped_from = *next;
                *next = offset + 1;
                if offset == skipped_from {
                    Admit::Dispatch
                } else {
                    Admit::AfterGap { skipped_from }
                }
            }
        }
    }

    /// Forget `partitions` (no more records of them are dispatched), then stop their workers
    /// after the group in flight, and wait for them.
    pub fn stop(&self, partitions: &[i32]) {
        {
            let mut expected = self.expected.lock().expect("assignment lock");
            for p in partitions {
                expected.remove(p);
            }
        }
        let stopping: Vec<Worker> = {
            let mut map = self.map.lock().expect("workers lock");
            partitions.iter().filter_map(|p| map.remove(p)).collect()
        };
        if stopping.is_empty() {
            return;
        }
        for w in &stopping {
            let _ = w.stop.send(true);
        }
        // Called from the rebalance callback on a runtime thread: let tokio move other tasks away.
        // Workers abandon their group after `DRAIN_GRACE`; the deadline only guards against a
        // worker stuck outside a group.
        let deadline = tokio::time::Instant::now() + partition::DRAIN_GRACE + std::time::Duration::from_secs(5);
        tokio::task::block_in_place(|| {
            let handle = tokio::runtime::Handle::current();
            for w in stopping {
                let abort = w.done.abort_handle();
                if handle.block_on(tokio::time::timeout_at(deadline, w.done)).is_err() {
                    warn!("a worker did not stop in time: aborted");
                    abort.abort();
                }
            }
        });
        METRICS.owned.with_label_values(&[] as &[&str]).set(self.map.lock().expect("workers lock").len() as i64);
    }

    /// The partitions assigned to this consumer now.
    pub fn owned(&self) -> Vec<i32> {
        self.expected.lock().expect("assignment lock").keys().copied().collect()
    }

    fn all(&self) -> Vec<i32> {
        self.map.lock().expect("workers lock").keys().copied().collect()
    }
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
    // The store's error names the URL (without its password) and what to set.
    let store = RedisStore::connect(&config.redis_url, &config.prefix).await.map_err(|e| anyhow::anyhow!("{}", e.0))?;
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
    let producer = kafka::producer(&config)?;
    kafka::warm_producer(&producer, &config).await;
    let workers = Arc::new(Workers::default());
    let consumer = Arc::new(kafka::consumer(&config, workers.clone())?);
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics: set DURABLE_METRICS_ADDR", config.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    let partitions = kafka::partition_count(&config).await?;
    let shared = Arc::new(Shared {
        config,
        engine: Engine::new(registry),
        store,
        partitions,
        producer,
        consumer: consumer.clone(),
    });
    let server = tokio::spawn(http::serve(listener, shared.clone(), workers.clone()));
    info!(%metrics_addr, topic = %shared.config.events_topic(), group = %shared.config.group, "processor running");
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
                    let message = message.detach();
                    let tx = workers_sender(&workers, &shared, partition);
                    if tx.send(message).await.is_err() {
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
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        warn!(error = %e, "final offset commit failed; the last records will be redelivered (harmless)");
    }
    server.abort();
    Ok(())
}

/// The command line of a processor binary: `--help` lists every flag and its environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Durable processor: consumes <prefix>.events, runs orchestrations, entities and activities, commits state to Redis and publishes state records to <prefix>.state."
)]
pub struct Cli {
    /// Where and how to run.
    #[command(flatten)]
    pub config: ProcessorConfig,
    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. info,durable_processor=debug).
    #[arg(long, env = "DURABLE_LOG", default_value = "info")]
    pub log: String,
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the shutdown of a processor binary (and of `durable dev`).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The whole `main` of a processor binary with `registry`'s handlers: parse the command line,
/// log to stderr, run until SIGINT or SIGTERM. Exit code 0 after a clean shutdown, 2 when it
/// cannot start (the error says what to do).
pub fn main(registry: Registry) -> std::process::ExitCode {
    use clap::Parser as _;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli.config, registry, shutdown_signal(), None)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn workers_sender(
    workers: &Workers,
    shared: &Arc<Shared>,
    partition: i32,
) -> mpsc::Sender<rdkafka::message::OwnedMessage> {
    let mut map = workers.map.lock().expect("workers lock");
    if let Some(w) = map.get(&partition).filter(|w| !w.done.is_finished()) {
        return w.tx.clone();
    }
    // Show every partition metric from the start, at zero, rather than only after its first event.
    let label = partition.to_string();
    for counter in
        [&METRICS.commits, &METRICS.conflicts, &METRICS.reruns, &METRICS.dead_letters, &METRICS.offsets_skipped]
    {
        counter.with_label_values(&[&label]);
    }
    for outcome in ["applied", "dropped", "dead"] {
        METRICS.events.with_label_values(&[&label, outcome]);
    }
    METRICS.commit_latency.with_label_values(&[&label]);
    METRICS.timer_backlog.with_label_values(&[&label]);
    METRICS.consumer_lag.with_label_values(&[&label]);
    tracing::debug!(partition, "starting a worker");
    let (tx, rx) = mpsc::channel(shared.config.batch * 4);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let done = tokio::spawn(partition::work(shared.clone(), partition, rx, stopped));
    map.insert(partition, Worker { tx: tx.clone(), stop, done });
    METRICS.owned.with_label_values(&[] as &[&str]).set(map.len() as i64);
    tx
}
