//! The command line's arguments: every command and option, with the help text `--help` shows.

use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use durable_schemas::{Action, Status};
use serde_json::Value;

use crate::{client, demo, dev};

pub(crate) const AFTER_HELP: &str = "\
Instances are named by id: orch:<orchestration>:<key> or entity:<entity>:<key>.
Every command talks to the management API of any processor (or of `durable dev`): set --api or
DURABLE_API (default http://127.0.0.1:9464).

Requests act for the principal of --token/DURABLE_TOKEN (a JWT); without one they are anonymous,
which only a deployment with anonymous access (DURABLE_ANONYMOUS, `durable dev`) allows.

Exit codes: 0 ok · 1 wait: the instance failed or was terminated · 2 wrong arguments or the API
cannot be reached · 3 wait: timed out · 4 the API refused (unknown instance or name, bad input, no
or a wrong token, not allowed).";

/// Which instances: the filters of `durable list` and `durable batch`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Filter {
    /// Only orchestrations (orch) or entities (entity).
    #[arg(long, value_parser = ["orch", "entity"])]
    pub(crate) kind: Option<String>,
    /// Only this orchestration or entity name (needs --kind).
    #[arg(long, requires = "kind")]
    pub(crate) name: Option<String>,
    /// Only this status: running, suspended, completed, failed, terminated (orchestrations),
    /// active or deleted (entities).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Status::LISTED.map(|s| s.as_str())))]
    pub(crate) status: Option<String>,
    /// Only instances that changed within this long (e.g. 10m, 2h, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) changed_within: Option<Duration>,
    /// Only instances that did not change for this long (e.g. 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) unchanged_for: Option<Duration>,
}

impl Filter {
    /// The query parameters of `GET /v1/instances` (and of a batch) for these filters.
    pub(crate) fn query(&self) -> Vec<String> {
        let mut query: Vec<String> = [("kind", &self.kind), ("name", &self.name), ("status", &self.status)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", client::segment(v))))
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Some(within) = self.changed_within {
            query.push(format!("updated_from={}", now.saturating_sub(within).as_millis()));
        }
        if let Some(quiet) = self.unchanged_for {
            query.push(format!("updated_before={}", now.saturating_sub(quiet).as_millis()));
        }
        query
    }
}

/// Durable's command line.
#[derive(Debug, Parser)]
#[command(name = "durable", version, about = "Drive and inspect Durable orchestrations and entities", after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Base URL of a processor's management API (http:// or https://).
    #[arg(long, env = "DURABLE_API", default_value = "http://127.0.0.1:9464", global = true)]
    pub(crate) api: String,
    /// Bearer token (a JWT) the API requests act for; unset: anonymous (only where the
    /// deployment allows it). `durable token` makes one for development.
    #[arg(long, env = "DURABLE_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// PEM file of the CA certificate that signed the API's (https:// with a CA of its own).
    #[arg(long, env = "DURABLE_API_CA", global = true)]
    pub(crate) api_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start an orchestration (prints its instance id).
    Start {
        /// Registered orchestration name, e.g. HelloSequence.
        name: String,
        /// Instance key (default: a fresh unique key). Starting a running key again is ignored;
        /// starting a finished one restarts it.
        #[arg(long)]
        key: Option<String>,
        /// Input as JSON, e.g. '["Tokyo"]' or '{"from":"a","to":"b","amount":5}'.
        #[arg(long, value_parser = parse_json)]
        input: Option<Value>,
        /// Event id, to make a retried start idempotent.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Send an operation to an entity (fire and forget).
    Signal {
        /// Registered entity name, e.g. Counter.
        entity: String,
        /// Entity key.
        key: String,
        /// Operation, e.g. add.
        operation: String,
        /// Operation input as JSON, e.g. 5.
        #[arg(long, value_parser = parse_json)]
        input: Option<Value>,
        /// Event id, to make a retried signal idempotent.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Raise an external event on an orchestration (for its wait_for_event). Raised before the
    /// orchestration starts, it waits for the start (status pending).
    Raise {
        /// Orchestration instance id, e.g. orch:Approval:a1.
        instance: String,
        /// Event name, e.g. approve.
        event: String,
        /// Event payload as JSON, e.g. true.
        #[arg(long, value_parser = parse_json)]
        payload: Option<Value>,
        /// Event id, to make a retried raise idempotent.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Show an instance's status (orchestration: status, input, output or failure; entity: state).
    Status {
        /// Instance id.
        instance: String,
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Wait until an orchestration finishes; exit 0 if it completed, 1 if it failed or was
    /// terminated, 3 on timeout.
    Wait {
        /// Orchestration instance id.
        instance: String,
        /// Give up after this long (e.g. 30s, 2m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print an instance's user state as JSON: an entity's state; an orchestration's output
    /// once completed, else its custom status.
    State {
        /// Instance id.
        instance: String,
    },
    /// List the instances you may read, most recently changed first (or by id: --order id), with
    /// their status and when they last changed (a table, or --json), from the processors'
    /// index: no Typesense needed. Filters combine.
    /// --counts prints how many there are per type and status instead.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Most instances to print (pages are followed until this many).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// In which order: changed (most recently changed first) or id (partition by
        /// partition, by id: each instance exactly once even while they change).
        #[arg(long, default_value = "changed", value_parser = ["changed", "id"])]
        order: String,
        /// Print how many instances there are per type and status instead.
        #[arg(long, conflicts_with_all = ["changed_within", "unchanged_for", "limit", "order"])]
        counts: bool,
        /// Print the API's JSON (an array of instance summaries, or the counts).
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's history as a timeline: an orchestration's input, each command with
    /// what answered it and when, and its inbox; an entity's state, lock and queued operations.
    /// --json prints the API's JSON instead.
    History {
        /// Instance id.
        instance: String,
        /// Print the API's JSON instead of the timeline.
        #[arg(long)]
        json: bool,
    },
    /// Accept that Redis lost state of a partition (its owner stopped it: /status shows it in
    /// lost_partitions, the log says why): the owner goes on from Kafka's committed offset with
    /// what Redis still has. Exit 4 if no loss of that partition is recorded.
    AcceptLoss {
        /// The partition of <prefix>.events.
        partition: u32,
    },
    /// Share an instance with a user or a role: they may then do the given operations (needs
    /// `share`; you grant only what you hold).
    Share {
        /// Instance id.
        instance: String,
        /// The user to share with.
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        user: Option<String>,
        /// The role to share with.
        #[arg(long)]
        role: Option<String>,
        /// Operations, comma separated: start, signal, call, read, terminate, lock, share, own.
        #[arg(long, value_delimiter = ',', required = true)]
        operations: Vec<String>,
    },
    /// Withdraw everything shared with a user or a role (needs `share`).
    Revoke {
        /// Instance id.
        instance: String,
        /// The user.
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        user: Option<String>,
        /// The role.
        #[arg(long)]
        role: Option<String>,
    },
    /// Make a user the only owner of an instance (needs `own`; you stop owning it).
    TransferOwnership {
        /// Instance id.
        instance: String,
        /// The new owner.
        user: String,
    },
    /// Add an owner to an instance (needs `own`).
    AddOwner {
        /// Instance id.
        instance: String,
        /// The new owner.
        user: String,
    },
    /// Make a bearer token for development: HS256, signed with the first of DURABLE_JWT_SECRETS,
    /// for DURABLE_JWT_AUDIENCE and DURABLE_JWT_ISSUER (as the processors are configured).
    /// Prints it: `export DURABLE_TOKEN=$(durable token --user alice)`.
    Token {
        /// The user (`sub`).
        #[arg(long)]
        user: String,
        /// Roles, comma separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The signing secrets (the first signs).
        #[arg(long, env = "DURABLE_JWT_SECRETS", hide_env_values = true, value_delimiter = ',', required = true)]
        jwt_secrets: Vec<String>,
        /// The audience the processors check.
        #[arg(long, env = "DURABLE_JWT_AUDIENCE")]
        jwt_audience: String,
        /// The issuer the processors check.
        #[arg(long, env = "DURABLE_JWT_ISSUER")]
        jwt_issuer: String,
        /// The claim that lists the roles.
        #[arg(long, env = "DURABLE_JWT_ROLES_CLAIM", default_value = "roles")]
        jwt_roles_claim: String,
    },
    /// Terminate a running or suspended orchestration; the sub-orchestrations it still waits
    /// for are terminated with it, and its locks are released.
    Terminate {
        /// Orchestration instance id.
        instance: String,
        /// Why (kept in its status).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause a running orchestration: what reaches it (replies, events, timers) is kept and
    /// applied when it is resumed. Exit 4 if it is not running.
    Suspend {
        /// Orchestration instance id.
        instance: String,
        /// Why (shown in its status).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a suspended orchestration go on: what it kept is applied in arrival order. Exit 4 if
    /// it is not suspended.
    Resume {
        /// Orchestration instance id.
        instance: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start a completed, failed or terminated orchestration again from its input: a new
    /// generation of the same id. Exit 4 if it is still running.
    Restart {
        /// Orchestration instance id.
        instance: String,
    },
    /// Run a failed orchestration on from the activity failure that ended it, keeping what
    /// succeeded: that activity is called again. Only for an orchestration that failed in an
    /// activity, is no sub-orchestration, and uses no critical section (else exit 4 with why;
    /// restart runs it again from its input instead).
    Rewind {
        /// Orchestration instance id.
        instance: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a finished orchestration (completed, failed, terminated) or an entity that is in
    /// no critical section, with its history; its search document goes too. Exit 4 if it is
    /// running.
    Purge {
        /// Instance id.
        instance: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Terminate, suspend, resume, restart, rewind or purge every instance you may read that matches
    /// the filters, page by page, showing progress; --dry-run only counts them. Exit 4 if some
    /// were refused (the first reasons are printed).
    Batch {
        /// What to do to each.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(Action::OPERATOR.map(Action::as_str)).map(|s| s.parse::<Action>().expect("an operator action")))]
        action: Action,
        #[command(flatten)]
        filter: Filter,
        /// Why (for terminate, suspend, resume and purge).
        #[arg(long)]
        reason: Option<String>,
        /// Count what matches; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The dead letters: records the processors or the projector refused, with why (admins
    /// only).
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Search the projected state in Typesense: an entity type's documents (e.g. Account) or
    /// `orchestrations`; prints one JSON document per line.
    Search(SearchArgs),
    /// Run the bank example's workload (accounts, deposits, transfers) against a deployment and
    /// wait until every transfer finished.
    Demo(demo::DemoArgs),
    /// Check that the server at --api answers /status (exit 0) — the compose healthcheck.
    Health,
    /// Run Durable in this process on embedded defaults: an in-process Kafka, in-memory state,
    /// the bundled examples, the management API and /metrics; then a short demo workload.
    Dev(dev::DevArgs),
}

/// `durable dead …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeadCommand {
    /// List the newest dead letters, newest first: id, when, the event and its target, why.
    List {
        /// Most letters to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON (an array of letters).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: why, where it came from, its event decoded, whether it can be
    /// redriven.
    Show {
        /// Its id, <partition>-<offset>, as `durable dead list` prints it.
        id: String,
    },
    /// Send dead letters' events back to the events topic as your own writes (re-checked: a
    /// letter that cannot be sent back says why; an event already applied is dropped as a
    /// duplicate). Exit 4 if some were refused.
    Redrive {
        /// Their ids, <partition>-<offset>.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub(crate) fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON ({e}); strings need quotes: '\"Tokyo\"'"))
}

/// `durable search`.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    /// Entity name (e.g. Account) or `orchestrations`.
    pub(crate) r#type: String,
    /// Text to find in the string fields; `*` matches everything.
    pub(crate) query: String,
    /// Typesense filter, e.g. 'owner:=alice && balance:>100'.
    #[arg(long)]
    pub(crate) filter: Option<String>,
    /// Most documents to print.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
    /// Typesense base URL (https:// for TLS).
    #[arg(long, env = "DURABLE_TYPESENSE_URL", default_value = "http://127.0.0.1:8108")]
    pub(crate) typesense_url: String,
    /// PEM file of the CA certificate that signed Typesense's (https:// with a CA of its own).
    #[arg(long, env = "DURABLE_TYPESENSE_CA")]
    pub(crate) typesense_ca: Option<std::path::PathBuf>,
    /// Typesense API key (a search-only key is enough). Unset: a key scoped to what you may
    /// read, from the API (POST /v1/search/key, as --token).
    #[arg(long, env = "DURABLE_TYPESENSE_API_KEY", hide_env_values = true)]
    pub(crate) typesense_api_key: Option<String>,
    /// Topic prefix the projector runs with (collection aliases start with it).
    #[arg(long, env = "DURABLE_PREFIX", default_value = durable_schemas::contract::DEFAULT_PREFIX)]
    pub(crate) prefix: String,
}
