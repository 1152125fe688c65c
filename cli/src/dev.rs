//! `durable dev`: the embedded mode ([`durable_processor::runtime::dev`]: librdkafka's in-process
//! mock cluster for Kafka, the in-memory store, the management API, the console and `/metrics` —
//! one process, no servers) with the bundled examples. A short demo
//! workload goes through the management API (the same path the CLI takes), then it keeps running
//! until Ctrl-C. Nothing is kept.

use std::time::{Duration, Instant};

use durable_processor::runtime;
use durable_processor::{examples, Registry};
use serde_json::{json, Value};

use crate::client::{Api, CliError};
use crate::exit;

/// Flags of `durable dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    embedded: runtime::dev::DevArgs,
    /// Skip the demo workload.
    #[arg(long)]
    no_demo: bool,
    /// Log filter for the embedded processor (e.g. info).
    #[arg(long, env = "DURABLE_LOG", default_value = "warn,librdkafka=error")]
    log: String,
}

/// Run until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> Result<u8, CliError> {
    // Ctrl-C while it starts stops it once it runs.
    let shutdown = runtime::shutdown_signal();
    runtime::log_to_stderr(&args.log);
    let registry = examples::register(Registry::new());
    let embedded = runtime::dev::start(&args.embedded, registry)
        .await
        .map_err(|e| CliError::unreachable(format!("durable dev could not start: {e:#}")))?;
    let base = format!("http://{}", embedded.addr);
    let api = Api::new(&base)?;
    if !args.no_demo {
        demo(&api).await?;
    }
    runtime::dev::banner(embedded.addr, "the bundled examples");
    println!("Try, from another terminal:");
    println!("  durable status orch:HelloSequence:demo-1");
    println!("  durable signal Counter demo add --input 5 && durable state entity:Counter:demo");
    println!("  durable start Transfer --key t1 --input '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":5}}' && durable wait orch:Transfer:t1");
    shutdown.await;
    eprintln!("stopping");
    let outcome = match embedded.stop().await {
        Err(e) => Err(CliError::unreachable(format!("{e:#}"))),
        Ok(()) => Ok(exit::OK),
    };
    eprintln!("stopped");
    outcome
}

/// When a demo instance counts as done.
type Done = Box<dyn Fn(&Value) -> bool>;

const HELLOS: usize = 10;
const COUNTER_SIGNALS: i64 = 100;
const TRANSFERS: usize = 10;

/// Hello sequences, a counter and a few bank transfers, with a progress bar until all are done.
async fn demo(api: &Api) -> Result<(), CliError> {
    let started = Instant::now();
    eprintln!("demo: {HELLOS} hello sequences, {COUNTER_SIGNALS} counter signals, {TRANSFERS} bank transfers");
    for i in 1..=HELLOS {
        let input = json!(["Tokyo", "Seattle", "London"]);
        api.start("HelloSequence", &json!({ "key": format!("demo-{i}"), "input": input })).await?;
    }
    for _ in 0..COUNTER_SIGNALS {
        api.signal("Counter", "demo", "add", &json!({ "input": 1 })).await?;
    }
    for (owner, key) in [("alice", "alice"), ("bob", "bob")] {
        api.signal("Account", key, "open", &json!({ "input": owner })).await?;
        api.signal("Account", key, "deposit", &json!({ "input": 100 })).await?;
    }
    for i in 1..=TRANSFERS {
        let input = json!({ "from": "alice", "to": "bob", "amount": 5 });
        api.start("Transfer", &json!({ "key": format!("demo-{i}"), "input": input })).await?;
    }
    let mut pending: Vec<(String, Done)> = Vec::new();
    for i in 1..=HELLOS {
        pending.push((format!("orch:HelloSequence:demo-{i}"), Box::new(|v: &Value| v["status"] == "completed")));
    }
    pending.push(("entity:Counter:demo".into(), Box::new(|v: &Value| v["state"]["value"] == json!(COUNTER_SIGNALS))));
    for i in 1..=TRANSFERS {
        pending.push((format!("orch:Transfer:demo-{i}"), Box::new(|v: &Value| v["status"] == "completed")));
    }
    let bar = indicatif::ProgressBar::new(pending.len() as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("demo: [{bar:30}] {pos}/{len} instances done {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (id, done) in pending {
            match api.instance_if_any(&id).await? {
                Some(view) if done(&view) => bar.inc(1),
                _ => still.push((id, done)),
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bar.abandon();
            let left: Vec<&str> = pending.iter().map(|(id, _)| id.as_str()).collect();
            return Err(CliError::unreachable(format!("the demo did not finish in 120 s; still pending: {left:?}")));
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    bar.finish_and_clear();
    eprintln!("demo: {} instances done in {:.1} s", HELLOS + 1 + TRANSFERS, started.elapsed().as_secs_f64());
    Ok(())
}
