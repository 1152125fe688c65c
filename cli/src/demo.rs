//! `durable demo`: the bank example's workload through the management API of a running
//! deployment — open accounts, deposit, then transfers between them — with a progress bar until
//! every transfer has finished. The compose stack runs it as a one-shot service.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{Api, CliError};
use crate::exit;

/// Flags of `durable demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many accounts (owners cycle through alice, bob, carol, dave).
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// How many transfers between them.
    #[arg(long, default_value_t = 200)]
    transfers: usize,
    /// Key prefix of the accounts and transfers (a second run with the same one is ignored).
    #[arg(long, default_value = "demo")]
    run: String,
    /// Give up waiting after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

const OWNERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Run the workload and wait for it.
pub async fn run(api: &Api, args: DemoArgs) -> Result<u8, CliError> {
    if args.accounts < 2 {
        return Err(CliError::unreachable("--accounts must be at least 2 (see `durable demo --help`)"));
    }
    let started = Instant::now();
    let account = |i: usize| format!("{}-acc{i}", args.run);
    for i in 0..args.accounts {
        let key = account(i);
        api.signal("Account", &key, "open", &json!({ "input": OWNERS[i % OWNERS.len()] })).await?;
        api.signal("Account", &key, "deposit", &json!({ "input": 1000 })).await?;
    }
    let bar = indicatif::ProgressBar::new(args.transfers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("starting transfers");
    let mut pending = Vec::with_capacity(args.transfers);
    for t in 0..args.transfers {
        // A fixed spread over the accounts: every pair appears, many overlap (critical sections).
        let from = (t * 7 + 3) % args.accounts;
        let to = (from + 1 + (t * 3) % (args.accounts - 1)) % args.accounts;
        let key = format!("{}-t{t}", args.run);
        let input = json!({ "from": account(from), "to": account(to), "amount": 1 + (t % 50) as i64 });
        api.start("Transfer", &json!({ "key": key, "input": input })).await?;
        pending.push(format!("orch:Transfer:{key}"));
        bar.inc(1);
    }
    bar.set_position(0);
    bar.set_message("transfers finished");
    let deadline = Instant::now() + args.timeout;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            match api.instance_if_any(&id).await? {
                Some(v) if v["status"] != "running" => bar.inc(1),
                _ => still.push(id),
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bar.abandon();
            eprintln!(
                "error: {} transfers still running after {:?}; wait longer with --timeout",
                pending.len(),
                args.timeout
            );
            return Ok(exit::TIMEOUT);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    bar.finish_and_clear();
    println!(
        "demo: {} accounts, {} transfers done in {:.1} s",
        args.accounts,
        args.transfers,
        started.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}
