//! The embedded mode: a processor with librdkafka's in-process mock cluster for Kafka and the
//! in-memory store, serving the management API, the console and `/metrics` — one process, no
//! servers, nothing kept. `durable dev` runs the bundled examples in it; any application binary
//! built on [`super::main`] runs its own handlers in it with its `dev` subcommand (`cargo run
//! -p shop -- dev`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::ProcessorConfig;
use crate::registry::Registry;
use crate::store::{AnyStore, MemoryStore};

/// The flags of the embedded mode.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where to serve the management API, the console (/ui), /metrics and /status.
    #[arg(long, env = "DURABLE_DEV_ADDR", default_value = "127.0.0.1:9464")]
    pub addr: SocketAddr,
    /// Partitions of the in-process events topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,
}

/// The topic prefix of the embedded mode.
pub const PREFIX: &str = "dev";

/// A running embedded processor.
pub struct Embedded {
    /// Where it serves the API, the console and the metrics.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    processor: tokio::task::JoinHandle<anyhow::Result<()>>,
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

/// Start a processor with `registry`'s handlers on an in-process Kafka and in-memory state;
/// resolves once it serves.
pub async fn start(args: &DevArgs, registry: Registry) -> anyhow::Result<Embedded> {
    let cluster = rdkafka::mocking::MockCluster::new(1).context("cannot start the in-process Kafka")?;
    let mut config = ProcessorConfig::new(&cluster.bootstrap_servers(), "memory://", PREFIX);
    config.partitions = args.partitions;
    config.group = "durable-dev".into();
    // The mock cluster answers a fetch only when its wait runs out: every hop of an orchestration
    // would wait the runtime's 100 ms.
    config.kafka.options.push(("fetch.wait.max.ms".into(), "1".into()));
    config.metrics_addr = args.addr;
    for (topic, partitions) in
        [(config.events_topic(), args.partitions), (config.state_topic(), args.partitions), (config.dead_topic(), 1)]
    {
        cluster
            .create_topic(&topic, partitions, 1)
            .with_context(|| format!("cannot create {topic} in the in-process Kafka"))?;
    }
    let store = AnyStore::Memory(Arc::new(MemoryStore::new()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(super::run_with(
        config,
        registry,
        store,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    match ready_rx.await {
        Ok(addr) => Ok(Embedded { addr, stop, processor, cluster }),
        Err(_) => {
            let why = match processor.await {
                Ok(Err(e)) => format!("{e:#}"),
                other => format!("{other:?}"),
            };
            anyhow::bail!(
                "the embedded processor could not start: {why} (is something else serving {}? use --addr)",
                args.addr
            )
        }
    }
}

impl Embedded {
    /// Stop the processor (within 30 s) and the in-process Kafka.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let outcome = match tokio::time::timeout(Duration::from_secs(30), self.processor).await {
            Ok(Ok(Err(e))) => Err(e.context("the embedded processor failed")),
            _ => Ok(()),
        };
        // The in-process Kafka outlives every client: dropped first, it would leave the clients
        // still being torn down reconnecting to it, and printing so, until the process ends.
        std::mem::forget(self.cluster);
        outcome
    }
}

/// Print where it serves and what to try.
pub fn banner(addr: SocketAddr, what: &str) {
    let base = format!("http://{addr}");
    println!("Durable dev is running: in-process Kafka, in-memory state, {what}, anonymous access (no tokens: for development only). Ctrl-C stops it (nothing is kept).");
    println!("  management API  {base}/v1   (the CLI's default; elsewhere set DURABLE_API={base})");
    println!("  web console     {base}/ui");
    println!("  metrics         {base}/metrics");
}

/// An application's `dev` subcommand: run until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs, registry: Registry) -> anyhow::Result<()> {
    let shutdown = super::shutdown_signal();
    let (orchestrations, entities, activities) = registry.names();
    let embedded = start(&args, registry).await?;
    banner(
        embedded.addr,
        &format!(
            "your application ({} orchestrations, {} entities, {} activities)",
            orchestrations.len(),
            entities.len(),
            activities.len()
        ),
    );
    println!("  registered      {}", [orchestrations, entities, activities].concat().join(", "));
    shutdown.await;
    eprintln!("stopping");
    let outcome = embedded.stop().await;
    eprintln!("stopped");
    outcome
}
