//! `bench`: Durable against the raw floor of this machine, on the real broker and Redis that
//! `scripts/services` starts.
//!
//! ```sh
//! cargo run --release -p tests --bin bench -- --workload all
//! ```
//!
//! Each workload runs a fresh processor in this process (its own prefix), produces its events
//! like any client, and watches the state feed (`<prefix>.state`) for completions, so a figure is
//! end to end: produce → commit in Redis → state record seen by a consumer. `floor` does the same
//! traffic with no runtime logic: consume a record, one Redis write of a blob of the same size
//! (pipelined per batch, like the runtime's group commit), produce one record. Every workload
//! prints one JSON line: `workload, n, per_s, p50_ms, p99_ms, floor_per_s, ratio`.

/// The allocator the processor binaries use (`processor/src/bin/processor.rs`), so that the
/// figures are theirs.
#[global_allocator]
static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use durable_processor::id::InstanceId;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tests::e2e::{self, Client, InProcess};

#[derive(Debug, Parser)]
#[command(about = "Durable's benchmark: workloads against the raw floor (see BENCHMARKS.md)")]
struct Args {
    /// counter, counter-durable (counter on a Redis that fsyncs every write), hello5, fanout,
    /// bank, scale (a million distinct entities touched once; Redis bytes per instance),
    /// hello3-latency, long (sequences of 250, 1,000 and 4,000 steps: the time per step),
    /// floor, or all; several comma separated.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Size multiplier: 1 is the full run (a few minutes on 2 cores); CI uses a small one.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// hello3-latency: the open-loop rate per second (default: half of the sustained peak,
    /// measured first by stepping the rate up until p99 passes 100 ms).
    #[arg(long)]
    rate: Option<f64>,
}

const PAYLOAD: usize = 300;

fn brokers_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", e2e::brokers());
    c
}

/// Completions seen on the state feed, with when they were seen.
struct Feed {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Value, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// Read every partition of `<prefix>.state` (which must exist) from the beginning. The
    /// partitions are assigned, not subscribed to: a group join takes the broker about a second,
    /// which a short run would otherwise count as processing time.
    fn start(prefix: &str, partitions: i32) -> Self {
        let consumer: StreamConsumer = brokers_config()
            .set("group.id", format!("{prefix}-bench-feed"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "1")
            .create()
            .expect("consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        let topic = format!("{prefix}.state");
        for p in 0..partitions {
            assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        if let Some(v) = m.payload().and_then(|p| serde_json::from_slice::<Value>(p).ok()) {
                            if tx.send((v, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Self { rx, task }
    }

    /// Receive records until `done` says so (given each record), or panic after `timeout`.
    async fn until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Value, Instant) -> bool) {
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut seen = 0u64;
        loop {
            let left =
                timeout.checked_sub(started.elapsed()).unwrap_or_else(|| panic!("{what}: timed out after {timeout:?}"));
            match tokio::time::timeout(left.min(Duration::from_secs(1)), self.rx.recv()).await {
                Ok(Some((v, at))) => {
                    seen += 1;
                    if done(&v, at) {
                        return;
                    }
                }
                Ok(None) => panic!("{what}: the state feed stopped"),
                Err(_) => {}
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!("  {what}: {seen} state records after {:.0} s", started.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a processor and wait until it owns every partition (the group has formed), so that
/// figures do not include the group join.
async fn processor(prefix: &str, partitions: i32) -> InProcess {
    let p = InProcess::start(prefix, partitions).await;
    e2e::eventually(Duration::from_secs(60), "the processor owns every partition", || async {
        let response = e2e::http_get(p.metrics, "/status").await;
        let body = response.split("\r\n\r\n").nth(1)?;
        let status: Value = serde_json::from_str(body).ok()?;
        (status["partitions"].as_array()?.len() == partitions as usize).then_some(())
    })
    .await;
    p
}

/// The processor's own counters (it runs in this process), to show where a workload's time went.
#[derive(Clone, Copy, Default)]
struct Inside {
    groups: u64,
    group_s: f64,
    commits: u64,
    commit_s: f64,
    produces: u64,
    produce_s: f64,
}

impl Inside {
    fn now() -> Self {
        use durable_processor::metrics::METRICS;
        let mut inside = Inside {
            groups: METRICS.batch_latency.get_sample_count(),
            group_s: METRICS.batch_latency.get_sample_sum(),
            produces: METRICS.produce_latency.get_sample_count(),
            produce_s: METRICS.produce_latency.get_sample_sum(),
            ..Inside::default()
        };
        for family in METRICS.registry.gather() {
            if family.name() == "durable_commit_latency_seconds" {
                for m in family.get_metric() {
                    inside.commits += m.get_histogram().get_sample_count();
                    inside.commit_s += m.get_histogram().get_sample_sum();
                }
            }
        }
        inside
    }

    /// One stderr line: groups applied since `self`, their mean time, the mean Redis commit.
    fn report(self, what: &str) {
        let now = Inside::now();
        let groups = now.groups - self.groups;
        let commits = now.commits - self.commits;
        let mean = |s: f64, n: u64| if n == 0 { 0.0 } else { s / n as f64 * 1000.0 };
        let produces = now.produces - self.produces;
        eprintln!(
            "  {what}: {groups} groups, {:.2} ms each (apply to offset stored); {commits} Redis commits, {:.2} ms each; {produces} produces, {:.2} ms each (to the last ack)",
            mean(now.group_s - self.group_s, groups),
            mean(now.commit_s - self.commit_s, commits),
            mean(now.produce_s - self.produce_s, produces),
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

struct Figure {
    workload: &'static str,
    n: u64,
    per_s: f64,
    latencies_ms: Vec<f64>,
    /// Redis memory per stored instance (the `scale` workload).
    bytes_per_instance: Option<f64>,
}

fn print(f: &Figure, floor: Option<f64>) {
    let mut l = f.latencies_ms.clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let line = json!({
        "workload": f.workload,
        "n": f.n,
        "per_s": round(f.per_s),
        "p50_ms": percentile(&l, 0.5).map(round),
        "p99_ms": percentile(&l, 0.99).map(round),
        "floor_per_s": floor.map(round),
        "ratio": floor.map(|fl| (f.per_s / fl * 1_000_000.0).round() / 1_000_000.0),
    });
    let mut line = line;
    if let Some(b) = f.bytes_per_instance {
        line["redis_bytes_per_instance"] = json!(round(b));
    }
    println!("{line}");
}

/// The raw floor: consume, one pipelined Redis write per record (per batch), produce, ack.
async fn floor(n: u64, partitions: i32) -> Figure {
    let prefix = e2e::unique_prefix("bench-floor");
    let (input, output) = (format!("{prefix}.in"), format!("{prefix}.out"));
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = brokers_config().create().unwrap();
    let topics = [
        rdkafka::admin::NewTopic::new(&input, partitions, rdkafka::admin::TopicReplication::Fixed(1)),
        rdkafka::admin::NewTopic::new(&output, partitions, rdkafka::admin::TopicReplication::Fixed(1)),
    ];
    admin.create_topics(&topics, &rdkafka::admin::AdminOptions::new()).await.expect("topics");
    let producer: FutureProducer =
        brokers_config().set("linger.ms", "2").set("enable.idempotence", "true").create().unwrap();
    let blob = vec![b'x'; PAYLOAD];
    let mut acks = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % 1000);
        loop {
            match producer.send_result(FutureRecord::to(&input).key(&key).payload(&blob)) {
                Ok(a) => {
                    acks.push(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    let consumer: StreamConsumer = brokers_config()
        .set("group.id", format!("{prefix}-floor"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "1")
        .create()
        .unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let redis = redis::Client::open(e2e::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut done = 0u64;
    let mut started: Option<Instant> = None;
    while done < n {
        let first = consumer.recv().await.expect("record");
        started.get_or_insert_with(Instant::now);
        let mut batch = vec![first.detach()];
        while batch.len() < 256 {
            match tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for m in &batch {
            let key = format!("{prefix}:{}", String::from_utf8_lossy(m.key().unwrap_or_default()));
            pipe.cmd("SET").arg(key).arg(m.payload().unwrap_or_default()).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("redis");
        let mut acks = Vec::with_capacity(batch.len());
        for m in &batch {
            let record =
                FutureRecord::to(&output).key(m.key().unwrap_or_default()).payload(m.payload().unwrap_or_default());
            acks.push(producer.send_result(record).map_err(|(e, _)| e).expect("queue"));
        }
        for a in acks {
            a.await.unwrap().unwrap();
        }
        for m in &batch {
            consumer.store_offset(&input, m.partition(), m.offset()).unwrap();
        }
        done += batch.len() as u64;
    }
    let secs = started.map_or(1.0, |s| s.elapsed().as_secs_f64());
    Figure { workload: "floor", n, per_s: n as f64 / secs, latencies_ms: vec![], bytes_per_instance: None }
}

/// Redis's `used_memory`.
async fn redis_used_memory(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis");
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.expect("INFO memory");
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).expect("used_memory")
}

/// `n` signals over `k` counters (`k` = `n`: every record is a cold instance, touched once), on
/// the Redis at `redis_url`.
async fn counter(workload: &'static str, n: u64, k: u64, partitions: i32, redis_url: &str) -> Figure {
    // Like the floor: the signals are in the topic before the processor starts.
    let prefix = e2e::unique_prefix(&format!("bench-{workload}"));
    let mut client = Client::new(&prefix);
    let counters: Vec<InstanceId> = (0..k).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let events: Vec<_> = (0..n).map(|i| client.signal(&counters[(i % k) as usize], "add", 1)).collect();
    drop(counters);
    let mut config = durable_processor::config::ProcessorConfig::new(&e2e::brokers(), redis_url, &prefix);
    config.partitions = partitions;
    durable_processor::runtime::kafka::ensure_topics(&config).await.expect("topics");
    client.send(&events).await;
    drop(events);
    let memory_before = redis_used_memory(redis_url).await;
    let mut feed = Feed::start(&prefix, partitions);
    // The clock starts when the group has formed (polled every 5 ms): the records wait in the topic.
    let mut processor_config = InProcess::config(&prefix, partitions);
    processor_config.redis_url = redis_url.to_owned();
    let processor = InProcess::start_with(processor_config).await;
    loop {
        let response = e2e::http_get(processor.metrics, "/status").await;
        let owned = response
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .and_then(|v| v["partitions"].as_array().map(Vec::len));
        if owned == Some(partitions as usize) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let mut values: HashMap<String, i64> = HashMap::new();
    let mut total = 0i64;
    let mut finished = Instant::now();
    feed.until(workload, Duration::from_secs(900), |v, at| {
        let value = v["state"]["value"].as_i64().unwrap_or(0);
        let old = values.insert(v["instance"].as_str().unwrap_or_default().to_owned(), value).unwrap_or(0);
        total += value - old;
        finished = at;
        total == n as i64
    })
    .await;
    processor.stop().await;
    let secs = (finished - started).as_secs_f64().max(1e-3);
    let bytes = (redis_used_memory(redis_url).await.saturating_sub(memory_before)) as f64 / k as f64;
    eprintln!("  {workload}: Redis used_memory grew by {bytes:.0} bytes per instance ({k} instances)");
    // Per instance only means something when every record made one (`scale`).
    let bytes_per_instance = (k == n).then_some(bytes);
    Figure { workload, n, per_s: n as f64 / secs, latencies_ms: vec![], bytes_per_instance }
}

/// `n` orchestrations of `name` with `input`; per-instance latency from its produce.
async fn orchestrations(
    workload: &'static str,
    name: &str,
    n: u64,
    input: Value,
    partitions: i32,
    setup: Vec<(InstanceId, &str, Value)>,
) -> Figure {
    let prefix = e2e::unique_prefix(&format!("bench-{workload}"));
    let processor = processor(&prefix, partitions).await;
    let inside = Inside::now();
    let mut feed = Feed::start(&prefix, partitions);
    let mut client = Client::new(&prefix);
    if !setup.is_empty() {
        let events: Vec<_> = setup.iter().map(|(id, op, input)| client.signal(id, op, input.clone())).collect();
        client.send(&events).await;
    }
    let events: Vec<_> = (0..n)
        .map(|i| {
            let input = if workload == "bank" {
                let k = setup.len() as u64 / 2;
                let from = i % k;
                let to = (from + 1 + i % (k - 1)) % k;
                json!({ "from": format!("a{from}"), "to": format!("a{to}"), "amount": 1 })
            } else {
                input.clone()
            };
            client.start(name, &format!("o{i}"), input)
        })
        .collect();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for chunk in events.chunks(500) {
        let at = Instant::now();
        client.send(chunk).await;
        for e in chunk {
            sent_at.insert(e.target.clone(), at);
        }
    }
    let mut latencies = Vec::with_capacity(n as usize);
    let mut finished = started;
    feed.until(workload, Duration::from_secs(900), |v, at| {
        if v["kind"] == "orch" && v["status"] != "running" {
            if let Some(sent) = sent_at.remove(v["instance"].as_str().unwrap_or_default()) {
                latencies.push((at - sent).as_secs_f64() * 1000.0);
                finished = at;
            }
        }
        sent_at.is_empty()
    })
    .await;
    inside.report(workload);
    processor.stop().await;
    let unit = if workload == "fanout" { 100 } else { 1 };
    Figure {
        workload,
        n: n * unit,
        per_s: (n * unit) as f64 / (finished - started).as_secs_f64(),
        latencies_ms: latencies,
        bytes_per_instance: None,
    }
}

/// One `HelloSequence` of each length in `lengths` — that many activities, one after the other —
/// run alone, one length after the other on the same processor: the time per step of each. A
/// step is one activity call and its reply applied; the time per step stays flat as the length
/// grows only if a step does not cost more the longer the history already is.
async fn long(lengths: &[u64], partitions: i32, floor_per_s: f64) {
    let prefix = e2e::unique_prefix("bench-long");
    let processor = processor(&prefix, partitions).await;
    let mut feed = Feed::start(&prefix, partitions);
    let mut client = Client::new(&prefix);
    let mut per_step = Vec::new();
    // A short sequence first, not reported: the first run also pays for warming the processor.
    let warm = lengths.first().map_or(0, |&n| n.min(50));
    for (steps, report) in std::iter::once((warm, false)).chain(lengths.iter().map(|&n| (n, true))) {
        let inside = Inside::now();
        let names: Vec<String> = (0..steps).map(|i| format!("n{i}")).collect();
        let key = if report { format!("long-{steps}") } else { "warm-up".to_owned() };
        let start = client.start("HelloSequence", &key, json!(names));
        let target = start.target.clone();
        let started = Instant::now();
        client.send(std::slice::from_ref(&start)).await;
        let mut finished = started;
        feed.until(&format!("long {steps}"), Duration::from_secs(1800), |v, at| {
            let done = v["instance"] == target.as_str() && v["status"] != "running";
            if done {
                assert_eq!(v["status"], "completed", "{v}");
                finished = at;
            }
            done
        })
        .await;
        if !report {
            continue;
        }
        inside.report(&format!("long {steps}"));
        let ms = (finished - started).as_secs_f64() * 1000.0 / steps as f64;
        per_step.push(ms);
        println!(
            "{}",
            json!({
                "workload": "long",
                "steps": steps,
                "total_s": ((finished - started).as_secs_f64() * 100.0).round() / 100.0,
                "ms_per_step": (ms * 1000.0).round() / 1000.0,
                "per_s": ((1000.0 / ms) * 100.0).round() / 100.0,
                "floor_per_s": (floor_per_s * 100.0).round() / 100.0,
            })
        );
    }
    if let (Some(first), Some(last)) = (per_step.first(), per_step.last()) {
        // Flat is 1: the longest sequence's time per step over the shortest's.
        println!("{}", json!({ "workload": "long", "growth": ((last / first) * 100.0).round() / 100.0 }));
    }
    processor.stop().await;
}

/// A step of [`sustained_peak`] passes while its p99 stays at or under this.
const SUSTAINED_P99_MS: f64 = 100.0;

/// The highest open-loop hello3 rate this machine sustains: the rate steps up by half from
/// 200/s, `secs` per step, until a step's p99 passes [`SUSTAINED_P99_MS`] (a backlog that grows
/// during a step shows as a p99 of about the step's length); the last step that passed. A burst
/// (everything sent at once) reaches a higher rate because it batches, but an open loop at half
/// of it only measures a queue.
async fn sustained_peak(secs: f64, partitions: i32) -> f64 {
    let mut rate = 200.0;
    let mut passed = None;
    loop {
        let step = latency("hello3-step", rate, secs, partitions).await;
        let mut sorted = step.latencies_ms;
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p99 = percentile(&sorted, 0.99).unwrap_or(f64::INFINITY);
        let pass = p99 <= SUSTAINED_P99_MS;
        eprintln!("  step {rate:.0}/s: p99 {p99:.1} ms: {}", if pass { "sustained" } else { "not sustained" });
        if !pass || rate > 50_000.0 {
            break;
        }
        passed = Some(rate);
        rate *= 1.5;
    }
    passed.unwrap_or(rate)
}

/// Open loop at `rate`/s for `secs`: HelloSequence over 3 cities; latency from produce to completion.
async fn latency(label: &'static str, rate: f64, secs: f64, partitions: i32) -> Figure {
    let prefix = e2e::unique_prefix("bench-latency");
    let processor = processor(&prefix, partitions).await;
    let inside = Inside::now();
    let mut feed = Feed::start(&prefix, partitions);
    // A latency-minded client: no linger (as the management API's producer).
    let mut client = Client::with_linger(&prefix, 0);
    // Warm up (consumers' first fetches, producers' connections, the record caches): 2 × partitions
    // orchestrations to completion before the clock starts, not counted.
    let input = json!(["Tokyo", "Seattle", "London"]);
    let warm: Vec<_> =
        (0..partitions * 2).map(|i| client.start("HelloSequence", &format!("w{i}"), input.clone())).collect();
    client.send(&warm).await;
    let mut waiting: std::collections::HashSet<String> = warm.iter().map(|e| e.target.clone()).collect();
    feed.until("warm-up", Duration::from_secs(120), |v, _| {
        if v["status"] == "completed" {
            waiting.remove(v["instance"].as_str().unwrap_or_default());
        }
        waiting.is_empty()
    })
    .await;
    let n = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let events: Vec<_> = (0..n).map(|i| client.start("HelloSequence", &format!("l{i}"), input.clone())).collect();
    // Open loop: each start is handed to the producer at its time, without waiting for the
    // acknowledgement of the ones before (the acks are checked at the end).
    let sender = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut acks = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let at = Instant::now();
            acks.push(client.enqueue(&e).await);
            let _ = tx.send((e.target, at));
        }
        let sent_for = start.elapsed();
        for ack in acks {
            e2e::acknowledged(ack).await;
        }
        sent_for
    });
    let mut latencies = Vec::new();
    let mut early: HashMap<String, Instant> = HashMap::new();
    feed.until("hello3-latency", Duration::from_secs(600), |v, at| {
        while let Ok((id, sent)) = rx.try_recv() {
            if let Some(done) = early.remove(&id) {
                latencies.push((done - sent).as_secs_f64() * 1000.0);
            } else {
                sent_at.insert(id, sent);
            }
        }
        if v["kind"] == "orch" && v["status"] == "completed" {
            let id = v["instance"].as_str().unwrap_or_default().to_owned();
            match sent_at.remove(&id) {
                Some(sent) => latencies.push((at - sent).as_secs_f64() * 1000.0),
                None => {
                    early.insert(id, at);
                }
            }
        }
        latencies.len() as u64 + early.len() as u64 >= n && early.is_empty()
    })
    .await;
    let sent_for = sender.await.unwrap().as_secs_f64();
    let achieved = n as f64 / sent_for.max(1e-3);
    eprintln!("  {label}: sent {n} starts in {sent_for:.1} s ({achieved:.0}/s of {rate:.0}/s asked)");
    inside.report(label);
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| percentile(&sorted, p).unwrap_or(0.0);
    let over = |ms: f64| sorted.iter().filter(|&&l| l > ms).count();
    eprintln!(
        "  {label}: p50 {:.1} p90 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms; {} over 100 ms, {} over 500 ms",
        at(0.5),
        at(0.9),
        at(0.95),
        at(0.99),
        at(1.0),
        over(100.0),
        over(500.0)
    );
    processor.stop().await;
    Figure { workload: label, n, per_s: rate, latencies_ms: latencies, bytes_per_instance: None }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let size = |full: u64| ((full as f64 * args.scale).round() as u64).max(10);
    let wanted: Vec<&str> = args.workload.split(',').map(str::trim).collect();
    let all = wanted.contains(&"all");
    let want = |w: &str| all || wanted.contains(&w);
    let known =
        ["all", "counter", "counter-durable", "hello5", "fanout", "bank", "scale", "hello3-latency", "long", "floor"];
    if let Some(unknown) = wanted.iter().find(|w| !known.contains(w)) {
        eprintln!("error: unknown workload {unknown:?}; one or more of {known:?}, comma separated (see bench --help)");
        std::process::exit(2);
    }
    eprintln!("bench: floor first (same run), then the workloads; scale {}", args.scale);
    let floor_fig = floor(size(200_000), args.partitions).await;
    let floor_per_s = floor_fig.per_s;
    if want("floor") {
        print(&floor_fig, Some(floor_per_s));
    }
    if want("counter") {
        eprintln!("bench: counter");
        print(&counter("counter", size(200_000), 100, args.partitions, &e2e::redis_url()).await, Some(floor_per_s));
    }
    if want("counter-durable") {
        // What durable commits cost: the counter workload on a Redis that fsyncs its
        // append-only file before every reply (appendfsync always), started for it.
        eprintln!("bench: counter-durable (Redis with appendonly yes, appendfsync always)");
        let redis = e2e::RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
        print(&counter("counter-durable", size(200_000), 100, args.partitions, &redis.url()).await, Some(floor_per_s));
    }
    if want("hello5") {
        eprintln!("bench: hello5");
        let f = orchestrations("hello5", "HelloSequence", size(20_000), json!([]), args.partitions, vec![]).await;
        print(&f, Some(floor_per_s));
    }
    if want("fanout") {
        eprintln!("bench: fanout");
        print(
            &orchestrations("fanout", "FanOut", size(1_000), json!(100), args.partitions, vec![]).await,
            Some(floor_per_s),
        );
    }
    if want("bank") {
        eprintln!("bench: bank");
        let accounts = size(1_000);
        let mut setup = Vec::new();
        for a in 0..accounts {
            let id = InstanceId::entity("Account", format!("a{a}"));
            setup.push((id.clone(), "open", json!(format!("owner{}", a % 5))));
            setup.push((id, "deposit", json!(1_000_000)));
        }
        print(
            &orchestrations("bank", "Transfer", size(5_000), Value::Null, args.partitions, setup).await,
            Some(floor_per_s),
        );
    }
    if want("scale") {
        eprintln!("bench: scale (distinct entities, each touched once: nothing cached)");
        let n = size(1_000_000);
        print(&counter("scale", n, n, args.partitions, &e2e::redis_url()).await, Some(floor_per_s));
    }
    if want("long") {
        eprintln!("bench: long (one sequence of each length alone; the time per step should not grow)");
        let lengths: Vec<u64> = [250, 1_000, 4_000].iter().map(|&n| size(n)).collect();
        long(&lengths, args.partitions, floor_per_s).await;
    }
    if want("hello3-latency") {
        eprintln!("bench: hello3-latency (the sustained open-loop peak first, then half of it)");
        let peak = match args.rate {
            Some(rate) => rate * 2.0,
            None => sustained_peak((5.0 * args.scale).clamp(2.0, 5.0), args.partitions).await,
        };
        let rate = (peak / 2.0).max(1.0);
        eprintln!("  hello3 sustained peak {peak:.0}/s; open loop at {rate:.0}/s");
        let secs = (20.0 * args.scale).clamp(3.0, 20.0);
        print(&latency("hello3-latency", rate, secs, args.partitions).await, Some(floor_per_s));
    }
}
