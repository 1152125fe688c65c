//! `durable`: start, signal, inspect and wait for instances through any processor's management
//! API, and `durable dev` — the whole system in one process on embedded defaults.

mod args;
mod client;
mod demo;
mod dev;
mod show;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use durable_schemas::{Action, Status};
use serde_json::{json, Value};

use args::{Cli, Command, DeadCommand, Filter};
use client::{Api, CliError};
use show::{counts_table, instances_table, letters_table, pretty, summary, timeline};

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

/// Run one command: an exit code, or an error that says what to do.
async fn run(cli: Cli) -> Result<u8, CliError> {
    let api = Api::with(&cli.api, cli.token.as_deref(), cli.api_ca.as_deref())?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Demo(args) => demo::run(&api, args).await,
        Command::Health => health(&api, &cli.api).await,
        Command::Start { name, key, input, event_id } => {
            accepted(api.start(&name, &json!({ "key": key, "input": input, "event_id": event_id })).await?)
        }
        Command::Signal { entity, key, operation, input, event_id } => {
            accepted(api.signal(&entity, &key, &operation, &json!({ "input": input, "event_id": event_id })).await?)
        }
        Command::Raise { instance, event, payload, event_id } => {
            accepted(api.raise(&instance, &event, &json!({ "payload": payload, "event_id": event_id })).await?)
        }
        Command::Terminate { instance, reason } => operate(&api, &instance, Action::Terminate, reason).await,
        Command::Suspend { instance, reason } => operate(&api, &instance, Action::Suspend, reason).await,
        Command::Resume { instance, reason } => operate(&api, &instance, Action::Resume, reason).await,
        Command::Purge { instance, reason } => operate(&api, &instance, Action::Purge, reason).await,
        Command::Restart { instance } => operate(&api, &instance, Action::Restart, None).await,
        Command::Rewind { instance, reason } => operate(&api, &instance, Action::Rewind, reason).await,
        Command::Dead(command) => dead(&api, command).await,
        Command::Batch { action, filter, reason, dry_run } => batch(&api, action, &filter, reason, dry_run).await,
        Command::Share { instance, user, role, operations } => accepted(
            api.access(&instance, &json!({ "action": "share", "user": user, "role": role, "operations": operations }))
                .await?,
        ),
        Command::Revoke { instance, user, role } => {
            accepted(api.access(&instance, &json!({ "action": "revoke", "user": user, "role": role })).await?)
        }
        Command::TransferOwnership { instance, user } => {
            accepted(api.access(&instance, &json!({ "action": "transfer", "user": user })).await?)
        }
        Command::AddOwner { instance, user } => {
            accepted(api.access(&instance, &json!({ "action": "add_owner", "user": user })).await?)
        }
        Command::Token { user, roles, ttl, jwt_secrets, jwt_audience, jwt_issuer, jwt_roles_claim } => {
            let claims =
                Claims { user, roles, ttl, audience: jwt_audience, issuer: jwt_issuer, roles_claim: jwt_roles_claim };
            token(jwt_secrets.first().map(String::as_str).unwrap_or_default(), claims)
        }
        Command::AcceptLoss { partition } => {
            api.accept_loss(partition).await?;
            println!("partition {partition}: loss accepted; its owner goes on within a second");
            Ok(exit::OK)
        }
        Command::Status { instance, json } => {
            let view = api.instance(&instance).await?;
            print!("{}", if json { pretty(&view) + "\n" } else { summary(&view) });
            Ok(exit::OK)
        }
        Command::State { instance } => {
            let view = api.instance(&instance).await?;
            let state = match view["kind"].as_str() {
                Some("entity") => view["state"].clone(),
                _ if view["status"] == Status::Completed.as_str() => view["output"].clone(),
                _ => view["custom_status"].clone(),
            };
            println!("{}", pretty(&state));
            Ok(exit::OK)
        }
        Command::List { filter, limit, order, counts, json } => list(&api, &filter, limit, &order, counts, json).await,
        Command::History { instance, json } => {
            let view = api.history(&instance).await?;
            print!("{}", if json { pretty(&view) + "\n" } else { timeline(&view) });
            Ok(exit::OK)
        }
        Command::Wait { instance, timeout } => wait(&api, &instance, timeout).await,
        Command::Search(args) => search(&api, args).await,
    }
}

/// A write the API accepted: print the instance it went to.
fn accepted(answer: Value) -> Result<u8, CliError> {
    println!("{}", answer["instance"].as_str().unwrap_or_default());
    Ok(exit::OK)
}

/// `durable health`: whether the server answers `/status` with ok.
async fn health(api: &Api, base: &str) -> Result<u8, CliError> {
    let status = api.status().await?;
    if status["status"] != "ok" {
        return Err(CliError::unreachable(format!("{base} is not healthy: {status}")));
    }
    println!("ok");
    Ok(exit::OK)
}

/// What a development token says.
struct Claims {
    user: String,
    roles: Vec<String>,
    ttl: Duration,
    audience: String,
    issuer: String,
    roles_claim: String,
}

/// `durable token`: an HS256 token signed with `secret`, printed.
fn token(secret: &str, c: Claims) -> Result<u8, CliError> {
    if secret.len() < 32 {
        return Err(CliError::unreachable(format!(
            "DURABLE_JWT_SECRETS: the first secret is {} bytes; processors accept HS256 secrets of at least 32",
            secret.len()
        )));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = json!({
        "sub": c.user, "aud": c.audience, "iss": c.issuer, "iat": now, "exp": now + c.ttl.as_secs(),
    });
    claims[c.roles_claim] = json!(c.roles);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| CliError::unreachable(format!("cannot make a token: {e}")))?;
    println!("{token}");
    Ok(exit::OK)
}

/// `durable list`: pages followed until `limit` instances, or the counts.
async fn list(api: &Api, filter: &Filter, limit: usize, order: &str, counts: bool, json: bool) -> Result<u8, CliError> {
    let query = filter.query();
    if counts {
        let view = api.counts(&query).await?;
        print!("{}", if json { pretty(&view) + "\n" } else { counts_table(&view) });
        return Ok(exit::OK);
    }
    let mut found: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    while found.len() < limit {
        let mut q = query.clone();
        q.push(format!("order={order}"));
        q.push(format!("limit={}", (limit - found.len()).min(1000)));
        if let Some(c) = &cursor {
            q.push(format!("cursor={c}"));
        }
        let page = api.list(&q).await?;
        found.extend(page["instances"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    print!("{}", if json { pretty(&Value::Array(found)) + "\n" } else { instances_table(&found) });
    Ok(exit::OK)
}

async fn search(api: &Api, args: args::SearchArgs) -> Result<u8, CliError> {
    use durable_projector::typesense::{TsError, Typesense};
    let key = match args.typesense_api_key.filter(|k| !k.is_empty()) {
        Some(key) => key,
        None => api.search_key().await?["key"].as_str().unwrap_or_default().to_owned(),
    };
    let ts = Typesense::with_ca(&args.typesense_url, &key, Duration::from_secs(10), args.typesense_ca.as_deref())
        .map_err(|e| CliError::unreachable(format!("{e:#}")))?;
    let (prefix, filter) = (&args.prefix, args.filter.as_deref());
    match durable_projector::search(&ts, prefix, &args.r#type, &args.query, filter, args.limit).await {
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

async fn wait(api: &Api, instance: &str, timeout: Duration) -> Result<u8, CliError> {
    let started = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut delay = Duration::from_millis(50);
    loop {
        let status = match api.instance_if_any(instance).await? {
            Some(view) => {
                let status = view["status"].as_str().unwrap_or("unknown").to_owned();
                if view["kind"] == "entity" {
                    spinner.finish_and_clear();
                    return Err(CliError::refused(format!(
                        "{instance} is an entity; wait works on orchestrations (use `durable state {instance}`)"
                    )));
                }
                match status.parse::<Status>() {
                    Ok(Status::Completed) => {
                        spinner.finish_and_clear();
                        print!("{}", summary(&view));
                        return Ok(exit::OK);
                    }
                    Ok(Status::Failed | Status::Terminated) => {
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
async fn operate(api: &Api, instance: &str, action: Action, reason: Option<String>) -> Result<u8, CliError> {
    let body = match reason {
        Some(reason) => json!({ "reason": reason }),
        None => json!({}),
    };
    accepted(api.operate(instance, action, &body).await?)
}

async fn dead(api: &Api, command: DeadCommand) -> Result<u8, CliError> {
    match command {
        DeadCommand::List { limit, json } => {
            let mut letters: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            while letters.len() < limit {
                let page = api.dead_letters((limit - letters.len()).min(200), cursor.as_deref()).await?;
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
            println!("{}", pretty(&api.dead_letter(&id).await?));
            Ok(exit::OK)
        }
        DeadCommand::Redrive { ids } => {
            let mut refused = 0;
            for id in &ids {
                match api.redrive(id).await {
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

/// A batch action, page by page, with progress on stderr and a summary on stdout.
async fn batch(
    api: &Api,
    action: Action,
    filter: &Filter,
    reason: Option<String>,
    dry_run: bool,
) -> Result<u8, CliError> {
    let body = json!({ "reason": reason, "dry_run": dry_run });
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
        let page = api.batch(action, &q, &body).await?;
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
