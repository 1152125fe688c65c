//! `durable`: start, signal, inspect and wait for instances through any processor's management
//! API, and `durable dev` — the whole system in one process on embedded defaults.

mod client;
mod demo;
mod dev;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::Value;

use client::{Api, CliError};

/// Exit codes (also in `durable --help`).
pub mod exit {
    /// The command did what was asked (`wait`: the instance completed).
    pub const OK: u8 = 0;
    /// `wait`: the instance finished, but failed or was terminated.
    pub const FAILED: u8 = 1;
    /// Wrong arguments, or the API/broker could not be reached.
    pub const USAGE_OR_UNREACHABLE: u8 = 2;
    /// `wait`: the timeout passed first.
    pub const TIMEOUT: u8 = 3;
    /// The API refused the request (unknown instance, unregistered name, bad input, no or a
    /// wrong token, not allowed).
    pub const REFUSED: u8 = 4;
}

const AFTER_HELP: &str = "\
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
struct Filter {
    /// Only orchestrations (orch) or entities (entity).
    #[arg(long, value_parser = ["orch", "entity"])]
    kind: Option<String>,
    /// Only this orchestration or entity name (needs --kind).
    #[arg(long, requires = "kind")]
    name: Option<String>,
    /// Only this status: running, suspended, completed, failed, terminated (orchestrations),
    /// active or deleted (entities).
    #[arg(long, value_parser = ["running", "pending", "suspended", "completed", "failed", "terminated", "active", "deleted"])]
    status: Option<String>,
    /// Only instances that changed within this long (e.g. 10m, 2h, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    changed_within: Option<Duration>,
    /// Only instances that did not change for this long (e.g. 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    unchanged_for: Option<Duration>,
}

impl Filter {
    /// The query parameters of `GET /v1/instances` (and of a batch) for these filters.
    fn query(&self) -> Vec<String> {
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
struct Cli {
    /// Base URL of a processor's management API (http:// or https://).
    #[arg(long, env = "DURABLE_API", default_value = "http://127.0.0.1:9464", global = true)]
    api: String,
    /// Bearer token (a JWT) the API requests act for; unset: anonymous (only where the
    /// deployment allows it). `durable token` makes one for development.
    #[arg(long, env = "DURABLE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM file of the CA certificate that signed the API's (https:// with a CA of its own).
    #[arg(long, env = "DURABLE_API_CA", global = true)]
    api_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// List the instances you may read, with their status and when they last changed (a
    /// table, or --json), from the processors' index: no Typesense needed. Filters combine.
    /// --counts prints how many there are per type and status instead.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Most instances to print (pages are followed until this many).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print how many instances there are per type and status instead.
        #[arg(long, conflicts_with_all = ["changed_within", "unchanged_for", "limit"])]
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
        #[arg(value_parser = ["terminate", "suspend", "resume", "restart", "rewind", "purge"])]
        action: String,
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
    Search {
        /// Entity name (e.g. Account) or `orchestrations`.
        r#type: String,
        /// Text to find in the string fields; `*` matches everything.
        query: String,
        /// Typesense filter, e.g. 'owner:=alice && balance:>100'.
        #[arg(long)]
        filter: Option<String>,
        /// Most documents to print.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Typesense base URL (https:// for TLS).
        #[arg(long, env = "DURABLE_TYPESENSE_URL", default_value = "http://127.0.0.1:8108")]
        typesense_url: String,
        /// PEM file of the CA certificate that signed Typesense's (https:// with a CA of its own).
        #[arg(long, env = "DURABLE_TYPESENSE_CA")]
        typesense_ca: Option<std::path::PathBuf>,
        /// Typesense API key (a search-only key is enough). Unset: a key scoped to what you may
        /// read, from the API (POST /v1/search/key, as --token).
        #[arg(long, env = "DURABLE_TYPESENSE_API_KEY", hide_env_values = true)]
        typesense_api_key: Option<String>,
        /// Topic prefix the projector runs with (collection aliases start with it).
        #[arg(long, env = "DURABLE_PREFIX", default_value = "durable")]
        prefix: String,
    },
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
enum DeadCommand {
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

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON ({e}); strings need quotes: '\"Tokyo\"'"))
}

/// Parse the command line; a wrong argument becomes one line that says what to do (exit 2).
fn parse() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(ExitCode::from(exit::USAGE_OR_UNREACHABLE))
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            Err(ExitCode::from(exit::USAGE_OR_UNREACHABLE))
        }
    }
}

/// clap's error text without the usage block, on one line, ending with where to look.
fn one_line(rendered: &str) -> String {
    let mut usage = String::new();
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = u
                .split_whitespace()
                .take_while(|w| !w.starts_with('[') && !w.starts_with('<'))
                .collect::<Vec<_>>()
                .join(" ");
        } else if !line.starts_with("For more information") {
            parts.push(line);
        }
    }
    let help = if usage.is_empty() { "durable --help".to_owned() } else { format!("{usage} --help") };
    format!("{} (see `{help}`)", parts.join(" "))
}

#[global_allocator]
static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::USAGE_OR_UNREACHABLE);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.exit)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    let api = Api::with(&cli.api, cli.token.as_deref(), cli.api_ca.as_deref())?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Demo(args) => demo::run(&api, args).await,
        Command::Health => {
            let status = api.get("/status").await?;
            if status["status"] == "ok" {
                println!("ok");
                Ok(exit::OK)
            } else {
                Err(CliError::unreachable(format!("{} is not healthy: {status}", cli.api)))
            }
        }
        Command::Start { name, key, input, event_id } => {
            let body = serde_json::json!({ "key": key, "input": input, "event_id": event_id });
            let accepted = api.post(&format!("/v1/orchestrations/{}", client::segment(&name)), &body).await?;
            println!("{}", accepted["instance"].as_str().unwrap_or_default());
            Ok(exit::OK)
        }
        Command::Signal { entity, key, operation, input, event_id } => {
            let path = format!(
                "/v1/entities/{}/{}/{}",
                client::segment(&entity),
                client::segment(&key),
                client::segment(&operation)
            );
            let accepted = api.post(&path, &serde_json::json!({ "input": input, "event_id": event_id })).await?;
            println!("{}", accepted["instance"].as_str().unwrap_or_default());
            Ok(exit::OK)
        }
        Command::Raise { instance, event, payload, event_id } => {
            let path = format!("/v1/instances/{}/events/{}", client::segment(&instance), client::segment(&event));
            let accepted = api.post(&path, &serde_json::json!({ "payload": payload, "event_id": event_id })).await?;
            println!("{}", accepted["instance"].as_str().unwrap_or_default());
            Ok(exit::OK)
        }
        Command::Terminate { instance, reason } => {
            let path = format!("/v1/instances/{}/terminate", client::segment(&instance));
            let accepted = api.post(&path, &serde_json::json!({ "reason": reason })).await?;
            println!("{}", accepted["instance"].as_str().unwrap_or_default());
            Ok(exit::OK)
        }
        Command::Suspend { instance, reason } => operate(&api, &instance, "suspend", reason).await,
        Command::Resume { instance, reason } => operate(&api, &instance, "resume", reason).await,
        Command::Purge { instance, reason } => operate(&api, &instance, "purge", reason).await,
        Command::Restart { instance } => operate(&api, &instance, "restart", None).await,
        Command::Rewind { instance, reason } => operate(&api, &instance, "rewind", reason).await,
        Command::Dead(command) => dead(&api, command).await,
        Command::Batch { action, filter, reason, dry_run } => batch(&api, &action, &filter, reason, dry_run).await,
        Command::Share { instance, user, role, operations } => {
            let body = serde_json::json!({ "action": "share", "user": user, "role": role, "operations": operations });
            change_access(&api, &instance, body).await
        }
        Command::Revoke { instance, user, role } => {
            change_access(&api, &instance, serde_json::json!({ "action": "revoke", "user": user, "role": role })).await
        }
        Command::TransferOwnership { instance, user } => {
            change_access(&api, &instance, serde_json::json!({ "action": "transfer", "user": user })).await
        }
        Command::AddOwner { instance, user } => {
            change_access(&api, &instance, serde_json::json!({ "action": "add_owner", "user": user })).await
        }
        Command::Token { user, roles, ttl, jwt_secrets, jwt_audience, jwt_issuer, jwt_roles_claim } => {
            let secret = jwt_secrets.first().map(String::as_str).unwrap_or_default();
            if secret.len() < 32 {
                return Err(CliError::unreachable(format!(
                    "DURABLE_JWT_SECRETS: the first secret is {} bytes; processors accept HS256 secrets of at least 32",
                    secret.len()
                )));
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let mut claims = serde_json::json!({
                "sub": user, "aud": jwt_audience, "iss": jwt_issuer, "iat": now, "exp": now + ttl.as_secs(),
            });
            claims[jwt_roles_claim] = serde_json::json!(roles);
            let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
            let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
                .map_err(|e| CliError::unreachable(format!("cannot make a token: {e}")))?;
            println!("{token}");
            Ok(exit::OK)
        }
        Command::AcceptLoss { partition } => {
            api.post(&format!("/v1/partitions/{partition}/accept-loss"), &serde_json::json!({})).await?;
            println!("partition {partition}: loss accepted; its owner goes on within a second");
            Ok(exit::OK)
        }
        Command::Status { instance, json } => {
            let view = api.get(&format!("/v1/instances/{}", client::segment(&instance))).await?;
            if json {
                println!("{}", pretty(&view));
            } else {
                print!("{}", summary(&view));
            }
            Ok(exit::OK)
        }
        Command::State { instance } => {
            let view = api.get(&format!("/v1/instances/{}", client::segment(&instance))).await?;
            let state = match view["kind"].as_str() {
                Some("entity") => view["state"].clone(),
                _ if view["status"] == "completed" => view["output"].clone(),
                _ => view["custom_status"].clone(),
            };
            println!("{}", pretty(&state));
            Ok(exit::OK)
        }
        Command::List { filter, limit, counts, json } => {
            let query = filter.query();
            if counts {
                let view = api.get(&format!("/v1/counts?{}", query.join("&"))).await?;
                if json {
                    println!("{}", pretty(&view));
                } else {
                    print!("{}", counts_table(&view));
                }
                return Ok(exit::OK);
            }
            let mut found: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            while found.len() < limit {
                let mut q = query.clone();
                q.push(format!("limit={}", (limit - found.len()).min(1000)));
                if let Some(c) = &cursor {
                    q.push(format!("cursor={c}"));
                }
                let page = api.get(&format!("/v1/instances?{}", q.join("&"))).await?;
                found.extend(page["instances"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            if json {
                println!("{}", pretty(&Value::Array(found)));
            } else {
                print!("{}", instances_table(&found));
            }
            Ok(exit::OK)
        }
        Command::History { instance, json } => {
            let view = api.get(&format!("/v1/instances/{}/history", client::segment(&instance))).await?;
            if json {
                println!("{}", pretty(&view));
            } else {
                print!("{}", timeline(&view));
            }
            Ok(exit::OK)
        }
        Command::Wait { instance, timeout } => wait(&api, &instance, timeout).await,
        Command::Search { r#type, query, filter, limit, typesense_url, typesense_ca, typesense_api_key, prefix } => {
            let key = match typesense_api_key.filter(|k| !k.is_empty()) {
                Some(key) => key,
                None => {
                    let scoped = api.post("/v1/search/key", &serde_json::json!({})).await?;
                    scoped["key"].as_str().unwrap_or_default().to_owned()
                }
            };
            let ts = durable_projector::typesense::Typesense::with_ca(
                &typesense_url,
                &key,
                Duration::from_secs(10),
                typesense_ca.as_deref(),
            )
            .map_err(|e| CliError::unreachable(format!("{e:#}")))?;
            search(&ts, &prefix, &r#type, &query, filter.as_deref(), limit).await
        }
    }
}

/// Send a sharing request for `instance`; prints the instance id once Kafka took it.
async fn change_access(api: &Api, instance: &str, body: Value) -> Result<u8, CliError> {
    let accepted = api.post(&format!("/v1/instances/{}/access", client::segment(instance)), &body).await?;
    println!("{}", accepted["instance"].as_str().unwrap_or_default());
    Ok(exit::OK)
}

async fn search(
    ts: &durable_projector::typesense::Typesense,
    prefix: &str,
    type_name: &str,
    query: &str,
    filter: Option<&str>,
    limit: u32,
) -> Result<u8, CliError> {
    use durable_projector::typesense::TsError;
    match durable_projector::search(ts, prefix, type_name, query, filter, limit).await {
        Ok(docs) => {
            for d in docs {
                println!("{d}");
            }
            Ok(exit::OK)
        }
        Err(TsError::Unavailable(e)) => {
            Err(CliError::unreachable(format!("cannot reach Typesense: {e}: is it running? set DURABLE_TYPESENSE_URL")))
        }
        Err(TsError::Refused { status: 401, .. }) => {
            Err(CliError::refused("Typesense refused the API key: set DURABLE_TYPESENSE_API_KEY"))
        }
        Err(TsError::Refused { message, .. }) => Err(CliError::refused(message)),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The human summary `durable status` prints: one `field  value` line each.
fn summary(view: &Value) -> String {
    let mut out = String::new();
    let fields = [
        "instance",
        "status",
        "version",
        "input",
        "output",
        "failure",
        "reason",
        "custom_status",
        "state",
        "locked_by",
    ];
    for field in fields {
        match &view[field] {
            Value::Null => {}
            Value::String(s) => out.push_str(&format!("{field:<14}{s}\n")),
            v => out.push_str(&format!("{field:<14}{v}\n")),
        }
    }
    out
}

/// A time (ms since the Unix epoch) as UTC with milliseconds.
fn utc(ms: &Value) -> String {
    ms.as_u64()
        .map(|ms| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
        .unwrap_or_else(|| "?".into())
}

/// JSON on one line, cut to `max` characters.
fn short(v: &Value, max: usize) -> String {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if text.chars().count() <= max {
        text
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A history (the API's JSON) as a timeline people can read.
fn timeline(view: &Value) -> String {
    let mut out = format!("{}\n", view["instance"].as_str().unwrap_or("?"));
    if let Some(commands) = view["commands"].as_array() {
        out.push_str(&format!(
            "  {}  started {}  generation {}\n  input {}\n",
            view["status"].as_str().unwrap_or("?"),
            utc(&view["started_at"]),
            view["generation"],
            short(&view["input"], 100)
        ));
        let deliveries = view["deliveries"].as_array().cloned().unwrap_or_default();
        for (i, c) in commands.iter().enumerate() {
            let slot = c["slot"].as_u64().unwrap_or(i as u64);
            let what = format!("#{slot} {} {}", c["kind"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or(""));
            let answer = deliveries.iter().find(|d| d["slot"].as_u64() == Some(slot));
            let answer = match answer {
                None => "… waiting".to_owned(),
                Some(d) => {
                    let completion = &d["completion"];
                    let said = if completion == "done" {
                        "done".to_owned()
                    } else if !completion["failure"].is_null() {
                        format!(
                            "failed {}: {}",
                            completion["failure"]["kind"].as_str().unwrap_or("?"),
                            completion["failure"]["message"].as_str().unwrap_or("")
                        )
                    } else {
                        format!("→ {}", short(&completion["value"], 80))
                    };
                    format!("{said}  at {}", utc(&d["at"]))
                }
            };
            out.push_str(&format!("  {what:<36} {answer}\n"));
        }
        if let Some(inbox) = view["inbox"].as_array().filter(|i| !i.is_empty()) {
            for e in inbox {
                out.push_str(&format!("  inbox: {} {}\n", e["name"].as_str().unwrap_or("?"), short(&e["payload"], 80)));
            }
        }
        if let Some(locks) = view["locks"].as_object() {
            out.push_str(&format!("  locks {} (granted: {})\n", locks["participants"], locks["granted"]));
        }
    } else {
        out.push_str(&format!("  state {}\n", short(&view["state"], 200)));
        out.push_str(&format!("  locked by {}\n", view["locked_by"].as_str().unwrap_or("nobody")));
        for q in view["queued"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "  queued {} {}\n",
                q["event"].as_str().unwrap_or("?"),
                q["id"].as_str().unwrap_or("")
            ));
        }
    }
    let totals = &view["page"]["totals"];
    let limit = view["page"]["limit"].as_u64().unwrap_or(u64::MAX);
    if totals.as_object().is_some_and(|t| t.values().any(|n| n.as_u64().unwrap_or(0) > limit)) {
        out.push_str(&format!(
            "  (the first {limit} of each list: --json and the API's ?offset= page through the rest)\n"
        ));
    }
    out
}

/// Instance summaries as a table: id, status, when it last changed (UTC).
fn instances_table(instances: &[Value]) -> String {
    if instances.is_empty() {
        return "no instances\n".into();
    }
    let width = instances.iter().filter_map(|i| i["instance"].as_str()).map(str::len).max().unwrap_or(8).max(8);
    let mut out = format!("{:<width$}  {:<10}  UPDATED\n", "INSTANCE", "STATUS");
    for i in instances {
        let updated = i["updated_at"]
            .as_u64()
            .map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
            .unwrap_or_default();
        let (id, status) = (i["instance"].as_str().unwrap_or("?"), i["status"].as_str().unwrap_or("?"));
        out.push_str(&format!("{id:<width$}  {status:<10}  {updated}\n"));
    }
    out
}

/// Counts per type and status as a table, with the total.
fn counts_table(view: &Value) -> String {
    let rows: Vec<(String, String, u64)> = view["counts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let kind_name =
                        format!("{}:{}", c["kind"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or("?"));
                    (kind_name, c["status"].as_str().unwrap_or("?").to_owned(), c["count"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<10}  {:>8}\n", "TYPE", "STATUS", "COUNT");
    for (kind_name, status, n) in &rows {
        out.push_str(&format!("{kind_name:<width$}  {status:<10}  {n:>8}\n"));
    }
    out.push_str(&format!("{:<width$}  {:<10}  {:>8}\n", "total", "", view["total"].as_u64().unwrap_or(0)));
    if view["complete"] == false {
        out.push_str("(incomplete: more instances are in view than one count reads; narrow it with --kind, --name or --status)\n");
    }
    out
}

async fn wait(api: &Api, instance: &str, timeout: Duration) -> Result<u8, CliError> {
    let path = format!("/v1/instances/{}", client::segment(instance));
    let started = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut delay = Duration::from_millis(50);
    loop {
        let status = match api.get_optional(&path).await? {
            Some(view) => {
                let status = view["status"].as_str().unwrap_or("unknown").to_owned();
                if view["kind"] == "entity" {
                    spinner.finish_and_clear();
                    return Err(CliError::refused(format!(
                        "{instance} is an entity; wait works on orchestrations (use `durable state {instance}`)"
                    )));
                }
                match status.as_str() {
                    "completed" => {
                        spinner.finish_and_clear();
                        print!("{}", summary(&view));
                        return Ok(exit::OK);
                    }
                    "failed" | "terminated" => {
                        spinner.finish_and_clear();
                        print!("{}", summary(&view));
                        return Ok(exit::FAILED);
                    }
                    _ => status,
                }
            }
            None => "not started yet".to_owned(),
        };
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            spinner.finish_and_clear();
            eprintln!(
                "error: {instance} is still {status} after {}; wait longer with --timeout",
                humantime::format_duration(Duration::from_secs(timeout.as_secs()))
            );
            return Ok(exit::TIMEOUT);
        }
        spinner.set_message(format!("waiting for {instance}: {status} ({}s)", elapsed.as_secs()));
        tokio::time::sleep(delay.min(timeout.saturating_sub(elapsed))).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// One operator action on one instance (`POST /v1/instances/{id}/<action>`); prints the id.
async fn operate(api: &Api, instance: &str, action: &str, reason: Option<String>) -> Result<u8, CliError> {
    let path = format!("/v1/instances/{}/{action}", client::segment(instance));
    let body = match reason {
        Some(reason) => serde_json::json!({ "reason": reason }),
        None => serde_json::json!({}),
    };
    let accepted = api.post(&path, &body).await?;
    println!("{}", accepted["instance"].as_str().unwrap_or_default());
    Ok(exit::OK)
}

async fn dead(api: &Api, command: DeadCommand) -> Result<u8, CliError> {
    match command {
        DeadCommand::List { limit, json } => {
            let mut letters: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            while letters.len() < limit {
                let mut path = format!("/v1/dead?limit={}", (limit - letters.len()).min(200));
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", client::segment(c)));
                }
                let page = api.get(&path).await?;
                letters.extend(page["letters"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            letters.truncate(limit);
            if json {
                println!("{}", pretty(&Value::Array(letters)));
            } else {
                print!("{}", letters_table(&letters));
            }
            Ok(exit::OK)
        }
        DeadCommand::Show { id } => {
            println!("{}", pretty(&api.get(&format!("/v1/dead/{}", client::segment(&id))).await?));
            Ok(exit::OK)
        }
        DeadCommand::Redrive { ids } => {
            let mut refused = 0;
            for id in &ids {
                match api.post(&format!("/v1/dead/{}/redrive", client::segment(id)), &serde_json::json!({})).await {
                    Ok(sent) => println!(
                        "{id}: sent back to {} as event {}",
                        sent["instance"].as_str().unwrap_or("?"),
                        sent["event_id"].as_str().unwrap_or("?")
                    ),
                    Err(e) if e.exit == exit::REFUSED => {
                        refused += 1;
                        println!("{id}: refused: {}", e.message);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(if refused > 0 { exit::REFUSED } else { exit::OK })
        }
    }
}

/// Dead letters as a table: id, when (UTC), event and target, why.
fn letters_table(letters: &[Value]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = String::from("ID        DEAD-LETTERED AT      EVENT → TARGET  —  REASON\n");
    for l in letters {
        let at = l["at"]
            .as_u64()
            .map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
            .unwrap_or_else(|| "?".into());
        let what = match (l["event"].as_str(), l["target"].as_str()) {
            (Some(e), Some(t)) => format!("{e} → {t}"),
            _ => format!("(undecodable, key {})", l["key"].as_str().unwrap_or("none")),
        };
        let id = l["id"].as_str().unwrap_or("?");
        let reason: String = l["reason"].as_str().unwrap_or("?").chars().take(200).collect();
        out.push_str(&format!("{id:<8}  {at}  {what}  —  {reason}\n"));
    }
    out
}

/// A batch action, page by page, with progress on stderr and a summary on stdout.
async fn batch(
    api: &Api,
    action: &str,
    filter: &Filter,
    reason: Option<String>,
    dry_run: bool,
) -> Result<u8, CliError> {
    let body = serde_json::json!({ "reason": reason, "dry_run": dry_run });
    let (mut matched, mut sent, mut refused) = (0u64, 0u64, 0u64);
    let mut reasons: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let started = Instant::now();
    loop {
        let mut q = filter.query();
        q.push("limit=500".into());
        if let Some(c) = &cursor {
            q.push(format!("cursor={c}"));
        }
        let page = api.post(&format!("/v1/batch/{action}?{}", q.join("&")), &body).await?;
        matched += page["matched"].as_u64().unwrap_or(0);
        sent += page["sent"].as_u64().unwrap_or(0);
        refused += page["refused"].as_u64().unwrap_or(0);
        for r in page["refusals"].as_array().into_iter().flatten() {
            if reasons.len() < 10 {
                reasons.push(format!(
                    "{}: {}",
                    r["instance"].as_str().unwrap_or("?"),
                    r["message"].as_str().unwrap_or("?")
                ));
            }
        }
        if !dry_run {
            eprint!(
                "\r{action}: {sent} sent, {refused} refused of {matched} matched so far ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    if dry_run {
        println!("{action} would go to {matched} instances (dry run: nothing sent)");
        return Ok(exit::OK);
    }
    eprintln!();
    println!("{action}: sent to {sent} of {matched} matching instances, {refused} refused");
    for r in &reasons {
        println!("  refused {r}");
    }
    Ok(if refused > 0 { exit::REFUSED } else { exit::OK })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["durable", "start"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("error: the following required arguments were not provided: <NAME>"), "{line}");
        assert!(line.ends_with("(see `durable start --help`)"), "{line}");
    }

    #[test]
    fn instances_and_counts_print_as_tables() {
        let instances = [
            serde_json::json!({"instance": "orch:Approval:a1", "status": "running", "updated_at": 1_700_000_000_000u64}),
            serde_json::json!({"instance": "entity:Counter:c1", "status": "active", "updated_at": 1_700_000_060_000u64}),
        ];
        assert_eq!(
            instances_table(&instances),
            "INSTANCE           STATUS      UPDATED\n\
             orch:Approval:a1   running     2023-11-14T22:13:20Z\n\
             entity:Counter:c1  active      2023-11-14T22:14:20Z\n"
        );
        assert_eq!(instances_table(&[]), "no instances\n");
        let counts = serde_json::json!({"counts": [{"kind": "orch", "name": "Approval", "status": "running", "count": 3}], "total": 3});
        assert_eq!(
            counts_table(&counts),
            "TYPE           STATUS         COUNT\norch:Approval  running            3\ntotal                             3\n"
        );
    }

    #[test]
    fn a_history_prints_as_a_timeline() {
        let view = serde_json::json!({
            "instance": "orch:HelloSequence:h1", "status": "running", "generation": 0, "started_at": 1_700_000_000_000u64,
            "input": ["Oslo", "Lima"],
            "commands": [
                {"slot": 0, "kind": "CallActivity", "name": "SayHello"},
                {"slot": 1, "kind": "CallActivity", "name": "SayHello"},
                {"slot": 2, "kind": "Timer", "name": ""},
            ],
            "deliveries": [
                {"slot": 0, "at": 1_700_000_000_250u64, "completion": {"value": "Hello Oslo!"}},
                {"slot": 1, "at": 1_700_000_000_500u64, "completion": {"failure": {"kind": "Boom", "message": "no"}}},
            ],
            "inbox": [{"name": "approve", "payload": true}],
            "page": {"offset": 0, "limit": 1000, "totals": {"commands": 3, "deliveries": 2, "inbox": 1}},
        });
        assert_eq!(
            timeline(&view),
            "orch:HelloSequence:h1\n  running  started 2023-11-14T22:13:20.000Z  generation 0\n  input [\"Oslo\",\"Lima\"]\n\
             \x20 #0 CallActivity SayHello             → \"Hello Oslo!\"  at 2023-11-14T22:13:20.250Z\n\
             \x20 #1 CallActivity SayHello             failed Boom: no  at 2023-11-14T22:13:20.500Z\n\
             \x20 #2 Timer                             … waiting\n\
             \x20 inbox: approve true\n"
        );
        let entity = serde_json::json!({"instance": "entity:Counter:c", "state": {"value": 3}, "locked_by": null, "queued": [],
            "page": {"offset": 0, "limit": 1, "totals": {"queued": 2}}});
        assert_eq!(
            timeline(&entity),
            "entity:Counter:c\n  state {\"value\":3}\n  locked by nobody\n  (the first 1 of each list: --json and the API's ?offset= page through the rest)\n"
        );
    }

    #[test]
    fn summary_prints_the_fields_that_are_set() {
        let view = serde_json::json!({"instance": "orch:A:1", "status": "completed", "version": 3, "output": [1, 2], "failure": null});
        assert_eq!(
            summary(&view),
            "instance      orch:A:1\nstatus        completed\nversion       3\noutput        [1,2]\n"
        );
    }
}
