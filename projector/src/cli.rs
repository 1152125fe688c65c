//! The `projector` command line (here, not in the binary, so that other crates can read its flags).

use clap::{Parser, Subcommand};

use crate::ProjectorConfig;

/// Durable projector: keeps Typesense collections equal to the committed state.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Durable projector: consumes <prefix>.state and keeps Typesense collections (one per entity type, one of orchestrations) up to date, version-guarded."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ProjectorConfig,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "DURABLE_LOG", default_value = "info", global = true)]
    pub log: String,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Project continuously (the default).
    Run,
    /// Re-read the feed from the beginning into fresh collections, then swap the aliases (readers
    /// never see an empty index); exits when done.
    Rebuild,
}
