//! The simulator as part of `cargo test`: a batch of seeds passes, and runs are reproducible.

use tests::sim::{self, Config};

#[test]
fn a_batch_of_seeds_passes_every_invariant() {
    for seed in 10_000..10_040 {
        let config = Config::new(seed);
        let outcome = sim::run(config.clone());
        assert!(outcome.violations.is_empty(), "{}", sim::describe(&config, &outcome));
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = sim::run(Config::new(77));
    let b = sim::run(Config::new(77));
    let c = sim::run(Config::new(78));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.actions, b.actions);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn faults_are_actually_injected() {
    let mut crashes = 0;
    let mut conflicts = 0;
    for seed in 0..40 {
        let outcome = sim::run(Config::new(seed));
        crashes += outcome.crashes;
        conflicts += outcome.conflicts;
    }
    assert!(crashes > 40, "crashes: {crashes}");
    assert!(conflicts > 5, "conflicts: {conflicts}");
}

#[test]
fn a_trace_reads_as_a_story() {
    let mut config = Config::new(3);
    config.trace = true;
    let outcome = sim::run(config);
    assert!(outcome.trace.iter().any(|l| l.contains("client sends")));
    assert!(outcome.trace.iter().any(|l| l.contains("commits")));
}
