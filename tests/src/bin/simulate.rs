//! `simulate`: run the deterministic simulator over many seeds.
//!
//! Prints one summary line ending in `violations=N`; exits 1 on any violation, after printing the
//! seed, the smallest configuration that still fails, and its trace.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use tests::sim::{self, Config, Mode, Outcome};

/// Run Durable's deterministic simulator: workloads under duplicates, reordering, racing
/// workers and crashes; invariants checked at the end of every seed.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How many seeds to run (first-seed .. first-seed + seeds).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this one seed and print its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (seeds are independent).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    /// Print the trace hash of every seed (to compare two runs).
    #[arg(long)]
    hashes: bool,
    /// Local rounds per batch (activities run and their replies applied in the worker; 0: all
    /// through the log).
    #[arg(long, default_value_t = Config::new(0).local_rounds)]
    local_rounds: usize,
    /// Commit local rounds unfenced (the driver ignores the epoch the core gives): shows what the
    /// fence prevents. Expect violations.
    #[arg(long)]
    no_fence: bool,
    /// How the cores run: `rotate` (each seed takes the next of the modes in turn), `all` (each
    /// seed in every mode), or one of `local`, `no-defer` (every local step committed on its
    /// own), `no-cache` (every step loads its record), `no-live` (every step replays).
    #[arg(long, default_value = "rotate", value_parser = ["rotate", "all", "local", "no-defer", "no-cache", "no-live"])]
    mode: String,
}

impl Args {
    /// The configurations of `seed`: one, or one per mode with `--mode all`.
    fn configs(&self, seed: u64) -> Vec<Config> {
        let modes = match self.mode.as_str() {
            "rotate" => vec![Mode::of_seed(seed)],
            "all" => Mode::ALL.to_vec(),
            name => Mode::ALL.into_iter().filter(|m| m.name() == name).collect(),
        };
        modes
            .into_iter()
            .map(|mode| {
                let mut config = Config::new(seed);
                config.local_rounds = self.local_rounds;
                config.fence_local_commits = !self.no_fence;
                config.mode = mode;
                config
            })
            .collect()
    }
}

fn shrink(config: &Config, outcome: &Outcome) -> (Config, Outcome) {
    let mut best = (config.clone(), outcome.clone());
    loop {
        let mut improved = false;
        let base = best.0.clone();
        let mut candidates = Vec::new();
        let s = base.scale;
        let fields = [
            s.hello,
            s.fanout,
            s.counters,
            s.signals,
            s.approvals,
            s.tickers,
            s.accounts,
            s.transfers,
            s.vaults,
            s.intrusions,
            s.lockers,
            s.programs,
        ];
        for (i, field) in fields.iter().enumerate() {
            for smaller in [0, field / 2, field.saturating_sub(1)] {
                if smaller < *field {
                    let mut c = base.clone();
                    let f = [
                        &mut c.scale.hello,
                        &mut c.scale.fanout,
                        &mut c.scale.counters,
                        &mut c.scale.signals,
                        &mut c.scale.approvals,
                        &mut c.scale.tickers,
                        &mut c.scale.accounts,
                        &mut c.scale.transfers,
                        &mut c.scale.vaults,
                        &mut c.scale.intrusions,
                        &mut c.scale.lockers,
                        &mut c.scale.programs,
                    ];
                    *f.into_iter().nth(i).expect("twelve fields") = smaller;
                    candidates.push(c);
                }
            }
        }
        for w in [s.fanout_width / 2, 10, 2] {
            if w < s.fanout_width {
                let mut c = base.clone();
                c.scale.fanout_width = w;
                candidates.push(c);
            }
        }
        for flip in 0..4 {
            let mut c = base.clone();
            let f =
                [&mut c.faults.duplicates, &mut c.faults.crashes, &mut c.faults.rebalances, &mut c.faults.store_errors];
            let flag = f.into_iter().nth(flip).expect("four faults");
            if *flag {
                *flag = false;
                candidates.push(c);
            }
        }
        for c in candidates {
            let out = sim::run(c.clone());
            if !out.violations.is_empty() && out.actions < best.1.actions {
                best = (c, out);
                improved = true;
                break;
            }
        }
        if !improved {
            let mut c = best.0.clone();
            c.trace = true;
            let out = sim::run(c.clone());
            return (c, out);
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let mut violations = 0;
        for mut config in args.configs(seed) {
            config.trace = true;
            let outcome = sim::run(config.clone());
            for line in &outcome.trace {
                println!("{line}");
            }
            print!("{}", sim::describe(&config, &outcome));
            violations += outcome.violations.len();
        }
        println!("seeds=1 violations={violations}");
        std::process::exit(if violations == 0 { 0 } else { 1 });
    }
    let started = Instant::now();
    let next = AtomicU64::new(args.first_seed);
    let end = args.first_seed + args.seeds;
    let done = AtomicUsize::new(0);
    let actions = AtomicUsize::new(0);
    let conflicts = AtomicUsize::new(0);
    let reruns = AtomicUsize::new(0);
    let cache_hits = AtomicUsize::new(0);
    let live_steps = AtomicUsize::new(0);
    let deferred = AtomicUsize::new(0);
    let crashes = AtomicUsize::new(0);
    let combined = AtomicU64::new(0);
    let failures: Mutex<Vec<(Config, Outcome)>> = Mutex::new(Vec::new());
    let hashes: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                for config in args.configs(seed) {
                    let outcome = sim::run(config.clone());
                    actions.fetch_add(outcome.actions, Ordering::Relaxed);
                    conflicts.fetch_add(outcome.conflicts, Ordering::Relaxed);
                    reruns.fetch_add(outcome.reruns, Ordering::Relaxed);
                    cache_hits.fetch_add(outcome.cache_hits, Ordering::Relaxed);
                    live_steps.fetch_add(outcome.live_steps, Ordering::Relaxed);
                    deferred.fetch_add(outcome.deferred, Ordering::Relaxed);
                    crashes.fetch_add(outcome.crashes, Ordering::Relaxed);
                    // Order-independent combination of the per-seed trace hashes.
                    combined.fetch_add(outcome.trace_hash.rotate_left((seed % 64) as u32), Ordering::Relaxed);
                    hashes.lock().expect("lock").push((seed, outcome.trace_hash));
                    if !outcome.violations.is_empty() {
                        failures.lock().expect("lock").push((config, outcome));
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 500 == 0 {
                    eprintln!("  {n}/{} seeds, {:.1}s", args.seeds, started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut failures = failures.into_inner().expect("lock");
    failures.sort_by_key(|(c, _)| c.seed);
    if args.hashes {
        let mut hashes = hashes.into_inner().expect("lock");
        hashes.sort();
        for (seed, hash) in hashes {
            println!("seed={seed} trace={hash:016x}");
        }
    }
    if let Some((config, outcome)) = failures.first() {
        eprintln!("FAILED: {}", sim::describe(config, outcome).trim_end());
        let (small, out) = shrink(config, outcome);
        eprintln!("smallest failing configuration: {}", sim::describe(&small, &out).trim_end());
        eprintln!(
            "reproduce: cargo run --release -p tests --bin simulate -- --seed {} --mode {} --local-rounds {} (default scale; see above for the shrunk one)",
            config.seed,
            config.mode.name(),
            config.local_rounds
        );
        eprintln!("trace ({} lines):", out.trace.len());
        for line in &out.trace {
            eprintln!("  {line}");
        }
    }
    println!(
        "simulate: seeds={} first_seed={} elapsed={elapsed:.1}s seeds_per_s={:.1} actions={} conflicts={} reruns={} cache_hits={} live_steps={} deferred={} crashes={} trace_hash={:016x} violations={}",
        args.seeds,
        args.first_seed,
        args.seeds as f64 / elapsed.max(1e-9),
        actions.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        reruns.load(Ordering::Relaxed),
        cache_hits.load(Ordering::Relaxed),
        live_steps.load(Ordering::Relaxed),
        deferred.load(Ordering::Relaxed),
        crashes.load(Ordering::Relaxed),
        combined.load(Ordering::Relaxed),
        failures.len()
    );
    // The differential check of live orchestrations must have had something to check.
    let unchecked = args.seeds >= 100 && live_steps.load(Ordering::Relaxed) == 0;
    if unchecked {
        eprintln!(
            "FAILED: no orchestration step ran live in {} seeds: the live/replay check checked nothing",
            args.seeds
        );
    }
    // With local rounds, deferred local commits must have happened, or their crash schedules
    // checked nothing.
    let undeferred = args.seeds >= 100 && args.local_rounds > 0 && deferred.load(Ordering::Relaxed) == 0;
    if undeferred {
        eprintln!("FAILED: no local step was deferred in {} seeds: deferred commits went unchecked", args.seeds);
    }
    let unchecked = unchecked || undeferred;
    std::process::exit(if failures.is_empty() && !unchecked { 0 } else { 1 });
}
