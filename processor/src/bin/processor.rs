//! `processor`: applies events from Kafka to instances in Redis, with the bundled examples
//! registered. Thin: parse the configuration, set up logging, call `runtime::run`.

use std::process::ExitCode;

use clap::Parser;
use durable_processor::config::ProcessorConfig;
use durable_processor::{examples, runtime, Registry};

/// Durable processor: consumes <prefix>.events, runs orchestrations, entities and activities,
/// commits state to Redis and publishes state records to <prefix>.state.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ProcessorConfig,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "DURABLE_LOG", default_value = "info")]
    log: String,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log)).with_target(false).init();
    match runtime::run(cli.config, examples::register(Registry::new()), shutdown_signal(), None).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
