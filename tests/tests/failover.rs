//! Processors as separate processes sharing the partitions through the consumer group: one is
//! stopped mid-run, then one is killed with SIGKILL mid-run (no drain, no offset commit). No event
//! may be lost and none applied twice.

use std::time::Duration;

use durable_processor::examples::{self, Counter};
use durable_processor::id::InstanceId;
use tests::e2e::{self, Client, Process, State};

const PARTITIONS: i32 = 8;
const COUNTERS: usize = 20;
const SIGNALS_PER_WAVE: usize = 2_000;

async fn counted(state: &State, counters: &[InstanceId]) -> i64 {
    let mut total = 0;
    for c in counters {
        total += state.entity::<Counter>(c).await.map_or(0, |c| c.value);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processors_joining_and_leaving_cleanly_lose_nothing_and_apply_nothing_twice() {
    failover(false).await
}

/// A SIGKILLed member's partitions come back when its session expires (Kafka's group coordinator
/// then starts a new generation without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_and_a_killed_processor_lose_nothing_and_apply_nothing_twice() {
    failover(true).await
}

async fn failover(kill: bool) {
    let prefix = e2e::unique_prefix("failover");
    let binary = env!("CARGO_BIN_EXE_test-processor");
    let logs = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&logs).unwrap();
    let mut a = Process::spawn(binary, &prefix, PARTITIONS, &logs.join("a.log"));
    let mut b = Process::spawn(binary, &prefix, PARTITIONS, &logs.join("b.log"));
    e2e::eventually(Duration::from_secs(60), "both processors own partitions", || async {
        (a.owns_partitions().await && b.owns_partitions().await).then_some(())
    })
    .await;

    let mut client = Client::new(&prefix);
    let state = State::connect(&prefix, PARTITIONS as u32).await;
    let counters: Vec<InstanceId> = (0..COUNTERS).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let mut hellos = Vec::new();
    let mut wave = |client: &mut Client, n: usize| {
        let mut events: Vec<_> =
            (0..SIGNALS_PER_WAVE).map(|i| client.signal(&counters[i % COUNTERS], "add", 1)).collect();
        for k in 0..5 {
            let start = client.start("HelloSequence", &format!("w{n}-{k}"), Vec::<String>::new());
            hellos.push(start.target.clone());
            events.push(start);
        }
        events
    };

    // Wave 1, then stop B cleanly while it works.
    let first = wave(&mut client, 1);
    client.send(&first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.terminate();
    let mut c = Process::spawn(binary, &prefix, PARTITIONS, &logs.join("c.log"));

    // Wave 2, then SIGKILL A while it works.
    let second = wave(&mut client, 2);
    client.send(&second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kill = counted(&state, &counters).await;
    if kill {
        a.kill();
    } else {
        a.terminate();
    }
    let mut d = Process::spawn(binary, &prefix, PARTITIONS, &logs.join("d.log"));

    // Wave 3 while the group recovers.
    let third = wave(&mut client, 3);
    client.send(&third).await;

    let expected = (3 * SIGNALS_PER_WAVE) as i64;
    assert!(before_kill < expected, "A must leave mid-run ({before_kill} of {expected} applied)");
    let per_counter = expected / COUNTERS as i64;
    for counter in &counters {
        e2e::eventually(Duration::from_secs(120), &format!("{counter} reaches {per_counter}"), || async {
            let value = state.entity::<Counter>(counter).await.map_or(0, |c| c.value);
            assert!(value <= per_counter, "{counter} applied a signal twice: {value} > {per_counter}");
            (value == per_counter).then_some(())
        })
        .await;
    }
    let greetings: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    for hello in &hellos {
        let out: Vec<String> = state.output(hello, Duration::from_secs(60)).await.decode().unwrap();
        assert_eq!(out, greetings, "{hello}");
    }
    eprintln!(
        "failover: {before_kill} of {expected} signals were applied when A left (kill={kill}); logs in {}",
        logs.display()
    );
    c.terminate();
    d.terminate();
    // Every stop drained its workers: none had to be aborted (a worker that saw the stop inside
    // a group used to miss it afterwards and hold the shutdown, or a rebalance, for 10 s).
    let stopped = if kill { vec!["b", "c", "d"] } else { vec!["a", "b", "c", "d"] };
    for name in stopped {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
        assert!(!log.contains("did not stop in time"), "processor {name} had to abort a worker:\n{log}");
    }
}

/// A worker that dies (here an injected panic, right after it took a group off its queue) while
/// its partition stays owned is replaced, and the partition is read again from the worker's last
/// stored offset: nothing it had taken is skipped, nothing is applied twice, and the restart is
/// counted. (Before, the next record started a new worker and the dead one's group and queue
/// were skipped, their offsets committed past.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_dies_skips_nothing_and_applies_nothing_twice() {
    const PARTITIONS: i32 = 4;
    let prefix = e2e::unique_prefix("worker-death");
    let mut config = e2e::InProcess::config(&prefix, PARTITIONS);
    config.faults = durable_processor::config::Faults::worker_panic_after(3);
    let processor = e2e::InProcess::start_with(config).await;
    let mut client = Client::new(&prefix);
    let state = State::connect(&prefix, PARTITIONS as u32).await;
    let counters: Vec<InstanceId> = (0..32).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    for wave in 0..5 {
        let signals: Vec<_> = (0..64).map(|i| client.signal(&counters[i % counters.len()], "add", 1)).collect();
        client.send(&signals).await;
        tokio::time::sleep(Duration::from_millis(100 * wave)).await;
    }
    for counter in &counters {
        e2e::eventually(Duration::from_secs(60), &format!("{counter} reaches 10"), || async {
            let value = state.entity::<Counter>(counter).await.map_or(0, |c| c.value);
            assert!(value <= 10, "{counter} applied a signal twice: {value}");
            (value == 10).then_some(())
        })
        .await;
    }
    let metrics = e2e::http_get(processor.metrics, "/metrics").await;
    let restarts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("durable_worker_restarts_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(restarts, 1.0, "one worker died and was restarted: {metrics}");
    eprintln!("worker death: 320 signals to 32 counters applied once each, {restarts} worker restarted");
    processor.stop().await;
}
