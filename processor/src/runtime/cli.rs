//! The processor binary's command line and `main`.

use super::run;
use crate::config::ProcessorConfig;
use crate::registry::Registry;

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
