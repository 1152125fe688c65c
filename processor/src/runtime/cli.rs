//! The processor binary's command line and `main`.

use super::run;
use crate::config::ProcessorConfig;
use crate::registry::Registry;

/// The command line of a processor binary: `--help` lists every flag and its environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Durable processor: consumes <prefix>.events, runs orchestrations, entities and activities, commits state to Redis and publishes state records to <prefix>.state.",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// `dev`: run in one process with no servers instead.
    #[command(subcommand)]
    pub mode: Option<Mode>,
    /// Where and how to run.
    #[command(flatten)]
    pub config: ProcessorConfig,
    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. info,durable_processor=debug).
    #[arg(long, env = "DURABLE_LOG", default_value = "info")]
    pub log: String,
}

/// What else a processor binary can do.
#[derive(Debug, clap::Subcommand)]
pub enum Mode {
    /// Run this application's handlers in one process with no servers: an in-process Kafka,
    /// in-memory state (nothing is kept), the management API, the web console (/ui) and
    /// /metrics, with anonymous access. For development only. Ctrl-C stops it.
    Dev(super::dev::DevArgs),
}

/// How long a processor binary (and `durable dev`) may take to stop once asked before it exits
/// anyway with code 1: a stop must never hang (an orchestrator would SIGKILL it after its own
/// grace period; what was not committed is redelivered either way).
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the shutdown of a processor binary (and of `durable
/// dev`). The handlers are installed when this is called (inside the runtime), not when the
/// future is first polled, so a signal that arrives while the processor is still starting is
/// kept and stops it cleanly once it runs, instead of killing it. From then on the process has
/// [`STOP_GRACE`] to exit.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        arm_stop_watchdog();
    }
}

/// Exit with code 1 if the stop has not finished within [`STOP_GRACE`].
fn arm_stop_watchdog() {
    std::thread::spawn(|| {
        std::thread::sleep(STOP_GRACE);
        eprintln!(
            "error: the stop did not finish within {} s; exiting now (records not yet committed are redelivered to the next owner)",
            STOP_GRACE.as_secs()
        );
        std::process::exit(1);
    });
}

/// Log to stderr with `filter` (a `tracing` filter such as `info` or `durable=debug`), coloured
/// on a terminal: how the processor, projector and `durable dev` log. Does nothing when this
/// process already has a logger (a test running `durable dev` in-process).
pub fn log_to_stderr(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The whole `main` of a processor binary with `registry`'s handlers: parse the command line,
/// log to stderr, run until SIGINT or SIGTERM (`<binary> dev`: in the embedded mode,
/// [`super::dev`]). Exit code 0 after a clean shutdown, 1 when the
/// stop took longer than [`STOP_GRACE`], 2 when it cannot start (the error says what to do).
pub fn main(registry: Registry) -> std::process::ExitCode {
    use clap::Parser as _;
    let cli = Cli::parse();
    let dev = matches!(cli.mode, Some(Mode::Dev(_)));
    // The embedded mode logs warnings only: librdkafka's mock cluster is chatty on the way out.
    log_to_stderr(if dev && cli.log == "info" { "warn,librdkafka=error" } else { &cli.log });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(async {
            match cli.mode {
                Some(Mode::Dev(args)) => super::dev::run(args, registry).await,
                None => run(cli.config, registry, shutdown_signal(), None).await,
            }
        }),
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
