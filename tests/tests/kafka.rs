//! Kafka behaviours the runtime must survive, on Apache Kafka: gaps in offsets (transaction
//! markers, aborted transactions, deleted records), an event over the size limit, a
//! `--partitions` that differs from the topic, credentials kept out of the logs, and a broker
//! that stops answering for longer than any produce timeout.

use std::time::Duration;

use durable_processor::examples::{self, Counter};
use durable_processor::id::InstanceId;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Message as _, TopicPartitionList};
use tests::e2e::{self, Client, InProcess, Process, State};

const BINARY: &str = env!("CARGO_BIN_EXE_test-processor");

/// The value of `durable_offsets_skipped_total` for `partition` in a processor's /metrics.
async fn skipped(p: &Process, partition: u32) -> u64 {
    let metrics = e2e::http_get(p.metrics, "/metrics").await;
    let series = format!("durable_offsets_skipped_total{{partition=\"{partition}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().expect("a count"))
}

async fn counter_value(state: &State, id: &InstanceId) -> i64 {
    state.entity::<Counter>(id).await.map_or(0, |c| c.value)
}

fn logs(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_markers_and_aborted_transactions_are_gaps_that_are_skipped_and_counted() {
    let prefix = e2e::unique_prefix("txn");
    let mut processor = Process::spawn(BINARY, &prefix, 2, &logs(&prefix).join("p.log"));
    e2e::eventually(Duration::from_secs(60), "the processor owns partitions", || async {
        processor.owns_partitions().await.then_some(())
    })
    .await;
    let counter = InstanceId::entity("Counter", "txn");
    let partition = counter.partition(2);
    let mut client = Client::new(&prefix);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", e2e::brokers())
        .set("partitioner", "murmur2_random")
        .set("transactional.id", format!("{prefix}-tx"))
        .create()
        .expect("transactional producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init transactions");
    let topic = format!("{prefix}.events");
    // Committed (10), aborted (10), committed (10): three markers and ten aborted records.
    for (round, commit) in [(0, true), (1, false), (2, true)] {
        producer.begin_transaction().expect("begin");
        for _ in 0..10 {
            let e = client.signal(&counter, "add", 1);
            let bytes = e.encode();
            let record = FutureRecord::to(&topic).key(e.target.as_bytes()).payload(&bytes);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
        }
        if commit {
            producer.commit_transaction(Duration::from_secs(30)).expect("commit");
        } else {
            producer.abort_transaction(Duration::from_secs(30)).expect("abort");
        }
        eprintln!("transaction {round} {}", if commit { "committed" } else { "aborted" });
    }
    // One plain record after the last marker, so that its gap is seen too.
    let one = client.signal(&counter, "add", 1);
    client.send(&[one]).await;
    let state = State::connect(&prefix, 2).await;
    e2e::eventually(Duration::from_secs(60), "21 signals applied and 13 offsets skipped", || async {
        let value = counter_value(&state, &counter).await;
        assert!(value <= 21, "an aborted record or a duplicate was applied: {value}");
        (value == 21 && skipped(&processor, partition).await == 13).then_some(())
    })
    .await;
    // Nothing more arrives later (the aborted records stay invisible).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counter_value(&state, &counter).await, 21);
    processor.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_before_they_were_read_are_skipped_and_counted() {
    let prefix = e2e::unique_prefix("deleted");
    let log = logs(&prefix);
    let mut first = Process::spawn(BINARY, &prefix, 1, &log.join("first.log"));
    e2e::eventually(Duration::from_secs(60), "the processor owns its partition", || async {
        first.owns_partitions().await.then_some(())
    })
    .await;
    let counter = InstanceId::entity("Counter", "deleted");
    let mut client = Client::new(&prefix);
    let state = State::connect(&prefix, 1).await;
    let one = client.signal(&counter, "add", 1);
    client.send(&[one]).await;
    e2e::eventually(Duration::from_secs(60), "the first signal is applied", || async {
        (counter_value(&state, &counter).await == 1).then_some(())
    })
    .await;
    first.terminate(); // commits offset 1
    let ten: Vec<_> = (0..10).map(|_| client.signal(&counter, "add", 1)).collect();
    client.send(&ten).await; // offsets 1..=10
                             // Retention (here DeleteRecords) removes six of them before any processor read them.
    let topic = format!("{prefix}.events");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", e2e::brokers()).create().expect("admin");
    let mut before = TopicPartitionList::new();
    before.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(7)).unwrap();
    let deleted = admin.delete_records(&before, &AdminOptions::new()).await.expect("delete records");
    assert_eq!(deleted.elements()[0].error(), Ok(()));

    let second = Process::spawn(BINARY, &prefix, 1, &log.join("second.log"));
    e2e::eventually(Duration::from_secs(60), "the second processor owns the partition", || async {
        second.owns_partitions().await.then_some(())
    })
    .await;
    let one = client.signal(&counter, "add", 1);
    client.send(&[one]).await;
    e2e::eventually(Duration::from_secs(60), "the four kept and the new signal applied, six skipped", || async {
        let value = counter_value(&state, &counter).await;
        assert!(value <= 6, "applied twice: {value}");
        (value == 6 && skipped(&second, 0).await == 6).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(log.join("second.log")).unwrap();
    assert!(text.contains("offsets skipped") && text.contains("skipped=6"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_configured_with_another_partition_count_routes_by_the_topics() {
    let prefix = e2e::unique_prefix("partitions");
    InProcess::start(&prefix, 8).await.stop().await; // creates the topics with 8 partitions
    let mut config = InProcess::config(&prefix, 3);
    config.partitions = 3;
    let processor = InProcess::start_with(config).await;
    let mut client = Client::new(&prefix);
    let counters: Vec<InstanceId> = (0..16).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let signals: Vec<_> = counters.iter().map(|c| client.signal(c, "add", 1)).collect();
    client.send(&signals).await;
    let state = State::connect(&prefix, 8).await;
    for c in &counters {
        e2e::eventually(Duration::from_secs(60), &format!("{c} is applied"), || async {
            (counter_value(&state, c).await == 1).then_some(())
        })
        .await;
    }
    let dead = e2e::topic_reader(&prefix, "dead");
    if let Ok(m) = tokio::time::timeout(Duration::from_secs(3), dead.recv()).await {
        panic!("a valid event was dead-lettered: {:?}", m.map(|m| m.detach()));
    }
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_over_the_size_limit_is_dead_lettered_with_a_truncated_copy_and_the_partition_goes_on() {
    let prefix = e2e::unique_prefix("too-big");
    let mut config = InProcess::config(&prefix, 2);
    config.max_event_bytes = 200_000;
    let processor = InProcess::start_with(config).await;
    let mut client = Client::new(&prefix);
    let counter = InstanceId::entity("Counter", "big");
    client.send_raw(&counter.canonical(), &vec![b'x'; 300_000]).await;
    let one = client.signal(&counter, "add", 1);
    client.send(&[one]).await;
    let state = State::connect(&prefix, 2).await;
    e2e::eventually(Duration::from_secs(60), "the signal after the large event is applied", || async {
        (counter_value(&state, &counter).await == 1).then_some(())
    })
    .await;
    let letter = first_dead_letter(&prefix).await;
    let reason = &letter.reason;
    assert!(reason.contains("300000 bytes") && reason.contains("DURABLE_MAX_EVENT_BYTES"), "{reason}");
    assert_eq!(letter.truncated.as_deref(), Some("300000"));
    assert_eq!(letter.component.as_deref(), Some("processor"));
    assert_eq!(letter.value_len, durable_kafka::dead_letter::MAX_COPY);
    assert_eq!(letter.key, counter.canonical().as_bytes());
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_on_sasl_ssl_never_logs_its_credentials() {
    let prefix = e2e::unique_prefix("sasl-log");
    let log = logs(&prefix).join("p.log");
    let k = e2e::secured(durable_kafka::SaslMechanism::ScramSha256);
    let password = k.sasl_password.clone().expect("a password");
    let ca = k.ssl_ca.clone().expect("a CA").to_string_lossy().into_owned();
    let env = [
        ("DURABLE_BROKERS", k.brokers.as_str()),
        ("DURABLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("DURABLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("DURABLE_KAFKA_SASL_USERNAME", k.sasl_username.as_deref().expect("a user")),
        ("DURABLE_KAFKA_SASL_PASSWORD", password.expose()),
        ("DURABLE_KAFKA_SSL_CA", ca.as_str()),
        ("DURABLE_LOG", "debug"),
    ];
    let mut processor = Process::spawn_with(BINARY, &prefix, 2, &log, &env);
    e2e::eventually(Duration::from_secs(60), "the processor owns partitions over SASL_SSL", || async {
        processor.owns_partitions().await.then_some(())
    })
    .await;
    let response =
        e2e::http_post(processor.metrics, "/v1/entities/Counter/sasl/add", &serde_json::json!({"input": 3})).await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let state = State::connect(&prefix, 2).await;
    let counter = InstanceId::entity("Counter", "sasl");
    e2e::eventually(Duration::from_secs(60), "the signal is applied", || async {
        (counter_value(&state, &counter).await == 3).then_some(())
    })
    .await;
    processor.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("processor running"), "{text}");
    assert!(!text.contains(password.expose()), "the SASL password is in the log");
}

/// Starts its own broker (the shared one must keep serving the other tests), SIGSTOPs it for
/// longer than any produce timeout while processors are mid-run, and resumes it: nothing lost,
/// nothing applied twice, every orchestration completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_frozen_longer_than_a_produce_timeout_loses_nothing_and_applies_nothing_twice() {
    let prefix = e2e::unique_prefix("sigstop");
    let dir = logs(&prefix);
    let broker = e2e::Broker::start(&dir.join("broker"));
    let brokers = broker.address();
    let env = [("DURABLE_BROKERS", brokers.as_str())];
    let mut a = Process::spawn_with(BINARY, &prefix, 4, &dir.join("a.log"), &env);
    let mut b = Process::spawn_with(BINARY, &prefix, 4, &dir.join("b.log"), &env);
    e2e::eventually(Duration::from_secs(90), "both processors own partitions", || async {
        (a.owns_partitions().await && b.owns_partitions().await).then_some(())
    })
    .await;
    let mut client = Client::connect(&prefix, &brokers, 2);
    let state = State::connect(&prefix, 4).await;
    let counters: Vec<InstanceId> = (0..10).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let mut events: Vec<_> = (0..2_000).map(|i| client.signal(&counters[i % 10], "add", 1)).collect();
    let hellos: Vec<_> =
        (0..5).map(|k| client.start("HelloSequence", &format!("h{k}"), Vec::<String>::new())).collect();
    events.extend(hellos.iter().cloned());
    client.send(&events).await; // frozen while the processors are busy with these
    let frozen_at = {
        let mut total = 0;
        for c in &counters {
            total += counter_value(&state, c).await;
        }
        total
    };
    broker.signal("STOP");
    tokio::time::sleep(Duration::from_secs(35)).await; // the producer's old message timeout was 30 s
    broker.signal("CONT");
    eprintln!("broker frozen for 35 s with {frozen_at} of 2000 signals applied");
    let more: Vec<_> = (0..1_000).map(|i| client.signal(&counters[i % 10], "add", 1)).collect();
    client.send(&more).await;
    for c in &counters {
        e2e::eventually(Duration::from_secs(180), &format!("{c} reaches 300"), || async {
            let v = counter_value(&state, c).await;
            assert!(v <= 300, "{c} applied a signal twice: {v}");
            (v == 300).then_some(())
        })
        .await;
    }
    let greetings: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    for h in &hellos {
        let out: Vec<String> = state.output(&h.target, Duration::from_secs(120)).await.decode().unwrap();
        assert_eq!(out, greetings);
    }
    a.terminate();
    b.terminate();
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    drop(consumer.fetch_metadata(None, Duration::from_secs(5)).expect("the broker answers after SIGCONT"));
}

/// What a test reads of a dead letter.
struct Letter {
    reason: String,
    truncated: Option<String>,
    component: Option<String>,
    key: Vec<u8>,
    value_len: usize,
}

/// Waits for the first dead letter of `prefix`.
async fn first_dead_letter(prefix: &str) -> Letter {
    let dead = e2e::topic_reader(prefix, "dead");
    let m = tokio::time::timeout(Duration::from_secs(60), dead.recv()).await.expect("a dead letter").unwrap();
    let header = |name: &str| {
        let h = m.headers().expect("headers");
        h.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Letter {
        reason: header(durable_kafka::dead_letter::REASON).expect("a reason"),
        truncated: header(durable_kafka::dead_letter::TRUNCATED),
        component: header(durable_kafka::dead_letter::COMPONENT),
        key: m.key().unwrap_or_default().to_vec(),
        value_len: m.payload().map_or(0, <[u8]>::len),
    }
}

/// A state record over the producer's own limit (`message.max.bytes`): refused when it is
/// enqueued, dead-lettered, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_record_over_the_producers_limit_is_dead_lettered_and_the_partition_goes_on() {
    let prefix = e2e::unique_prefix("state-too-big-local");
    let mut config = InProcess::config(&prefix, 1);
    config.kafka.options.push(("message.max.bytes".into(), "300000".into()));
    let processor = InProcess::start_with(config).await;
    undeliverable_state(&prefix, 400_000).await;
    processor.stop().await;
}

/// A state record over the broker's limit for its topic (`max.message.bytes`): refused in the
/// delivery report, dead-lettered, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_record_over_the_brokers_limit_is_dead_lettered_and_the_partition_goes_on() {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let prefix = e2e::unique_prefix("state-too-big-broker");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", e2e::brokers()).create().expect("admin");
    let state_topic = format!("{prefix}.state");
    let topic = NewTopic::new(&state_topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", "200000");
    admin.create_topics(&[topic], &AdminOptions::new()).await.expect("create the state topic")[0].clone().unwrap();
    let processor = InProcess::start(&prefix, 1).await;
    undeliverable_state(&prefix, 300_000).await;
    processor.stop().await;
}

async fn undeliverable_state(prefix: &str, bytes: usize) {
    let mut client = Client::new(prefix);
    let blob = InstanceId::entity("Blob", "big");
    let counter = InstanceId::entity("Counter", "after");
    let big = client.event(
        &blob.canonical(),
        durable_schemas::Event::EntityOperation {
            operation: "set".into(),
            input: durable_schemas::Payload::json(&"y".repeat(bytes)).unwrap(),
        },
    );
    client.send(&[big]).await;
    let after = client.signal(&counter, "add", 1);
    client.send(&[after]).await;
    let state = State::connect(prefix, 1).await;
    e2e::eventually(Duration::from_secs(60), "the signal after the large state is applied", || async {
        (counter_value(&state, &counter).await == 1).then_some(())
    })
    .await;
    // The entity's state is committed (Redis has no such limit); only its record for the feed
    // could not be produced.
    let kept: e2e::Blob = state.entity(&blob).await.expect("the blob's state");
    assert_eq!(kept.data.len(), bytes);
    let letter = first_dead_letter(prefix).await;
    let reason = &letter.reason;
    assert!(reason.contains(&format!("{prefix}.state")) && reason.contains("cannot produce a record"), "{reason}");
    let original: usize = letter.truncated.as_deref().expect("a truncated copy").parse().unwrap();
    assert!(original > bytes && letter.value_len == durable_kafka::dead_letter::MAX_COPY);
    assert_eq!(letter.key, blob.canonical().as_bytes());
}

/// Producers compress as they like (librdkafka is built with zstd, lz4 and gzip): the processor
/// reads zstd-compressed batches and its own producer can compress too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zstd_compressed_events_are_applied_and_the_processor_can_compress_its_output() {
    let prefix = e2e::unique_prefix("zstd");
    let mut config = InProcess::config(&prefix, 2);
    config.kafka.options.push(("compression.type".into(), "zstd".into()));
    let processor = InProcess::start_with(config).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", e2e::brokers())
        .set("partitioner", "murmur2_random")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .expect("a zstd producer");
    let mut client = Client::new(&prefix);
    let counter = InstanceId::entity("Counter", "zstd");
    let topic = format!("{prefix}.events");
    let signals: Vec<_> = (0..200).map(|_| client.signal(&counter, "add", 1)).collect();
    let mut acks = Vec::new();
    for e in &signals {
        let bytes = e.encode();
        acks.push(
            producer.send_result(FutureRecord::to(&topic).key(e.target.as_bytes()).payload(&bytes)).expect("enqueued"),
        );
    }
    for ack in acks {
        e2e::acknowledged(ack).await;
    }
    let hello = client.start("HelloSequence", "zstd", Vec::<String>::new());
    client.send(std::slice::from_ref(&hello)).await;
    let state = State::connect(&prefix, 2).await;
    e2e::eventually(Duration::from_secs(60), "200 compressed signals applied", || async {
        (counter_value(&state, &counter).await == 200).then_some(())
    })
    .await;
    let out: Vec<String> = state.output(&hello.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(out.len(), examples::CITIES.len());
    processor.stop().await;
}

/// Another language's client on the wire: Python's confluent-kafka and fastavro produce the
/// documented envelope (key = target id, murmur2) and read the documented state records
/// (`tests/interop/python_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_client_produces_envelopes_and_reads_state_records() {
    let prefix = e2e::unique_prefix("python");
    let processor = InProcess::start(&prefix, 4).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::process::Command::new(root.join("scripts/services")).arg("--python").output().unwrap();
    assert!(python.status.success(), "scripts/services --python: {}", String::from_utf8_lossy(&python.stderr));
    let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
    let script = root.join("tests/interop/python_client.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(e2e::brokers()).arg(&prefix).output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("python: 2 passed, 0 failed"), "{stdout}");
    processor.stop().await;
}

/// A group whose committed offset lies beyond the end of the log (the topic was recreated, or
/// the offset was set by hand) starts at the log's beginning, as the consumer does, instead of
/// taking every record for one it already dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_offset_beyond_the_log_end_starts_from_the_beginning() {
    let prefix = e2e::unique_prefix("beyond");
    InProcess::start(&prefix, 1).await.stop().await; // creates the topics
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", e2e::brokers())
        .set("group.id", format!("{prefix}-processors"))
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&format!("{prefix}.events"), 0, rdkafka::Offset::Offset(1_000)).unwrap();
    // The stopped processor's leave may still be settling in the coordinator: retry until the
    // empty group accepts a commit from outside.
    e2e::eventually(Duration::from_secs(30), "the group accepts offset 1000", || async {
        group.commit(&offsets, rdkafka::consumer::CommitMode::Sync).ok()
    })
    .await;
    drop(group);
    let mut client = Client::new(&prefix);
    let counter = InstanceId::entity("Counter", "beyond");
    let signals: Vec<_> = (0..3).map(|_| client.signal(&counter, "add", 1)).collect();
    client.send(&signals).await;
    let processor = InProcess::start(&prefix, 1).await;
    let state = State::connect(&prefix, 1).await;
    e2e::eventually(Duration::from_secs(60), "the three signals are applied", || async {
        (counter_value(&state, &counter).await == 3).then_some(())
    })
    .await;
    processor.stop().await;
}
