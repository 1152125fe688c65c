//! End to end against the real broker (Apache Kafka) and Redis: the processor applies events, commits
//! to Redis, emits, parks timers, dead-letters bad input and reports metrics.

use std::time::Duration;

use durable_processor::examples::{self, ApprovalInput, Counter};
use durable_processor::history::OrchestrationStatus;
use durable_processor::id::InstanceId;
use durable_processor::{Envelope, Event, Payload};
use rdkafka::message::Headers;
use rdkafka::Message;
use tests::e2e::{self, PATIENT};

const PARTITIONS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hello_sequence_and_fan_out_complete() {
    let (processor, mut client, state) = e2e::setup("hello", PARTITIONS).await;
    let hello = client.start("HelloSequence", "h1", Vec::<String>::new());
    let fan = client.start("FanOut", "f1", 100u64);
    client.send(&[hello.clone(), fan.clone()]).await;
    let greetings: Vec<String> = state.output(&hello.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(greetings, examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect::<Vec<_>>());
    let sum: u64 = state.output(&fan.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(sum, examples::fan_out_expected(100));
    processor.stop().await;
}

/// Activities run right after the commit that scheduled them, in the caller's partition, and
/// their replies are applied there too (local rounds, fenced commits): neither the invocations
/// nor the replies go through the log, whose only record is the client's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activities_run_and_reply_in_process_without_the_log() {
    use durable_schemas::Envelope;
    let (processor, mut client, state) = e2e::setup("local-activities", PARTITIONS).await;
    let fan = client.start("FanOut", "f", 50u64);
    client.send(std::slice::from_ref(&fan)).await;
    let sum: u64 = state.output(&fan.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(sum, examples::fan_out_expected(50));
    let consumer = e2e::topic_reader(client.prefix(), "events");
    let mut records = Vec::new();
    // Read until the log has been quiet for 3 s (the orchestration is complete, so nothing more comes).
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        let envelope = Envelope::decode(m.unwrap().payload().unwrap()).unwrap();
        records.push(format!("{} {} -> {}", envelope.id, envelope.body.core().name(), envelope.target));
    }
    assert_eq!(records, [format!("{} StartOrchestration -> {}", fan.id, fan.target)]);
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_counter_signals_give_an_exact_count() {
    let (processor, mut client, state) = e2e::setup("counter", PARTITIONS).await;
    let counters: Vec<InstanceId> = (0..10).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let signals: Vec<_> = (0..10_000).map(|i| client.signal(&counters[i % 10], "add", 1)).collect();
    // Send every signal, and then 500 of them again (a producer retrying): applied once each.
    client.send(&signals).await;
    client.send(&signals[..500]).await;
    for counter in &counters {
        let value = e2e::eventually(Duration::from_secs(120), &format!("{counter} reaches 1000"), || async {
            let c: Counter = state.entity(counter).await?;
            assert!(c.value <= 1000, "{counter} over-counted: {}", c.value);
            (c.value == 1000).then_some(c.value)
        })
        .await;
        assert_eq!(value, 1000);
    }
    processor.stop().await;
}

/// The partition keeps committed records in memory between groups; a write by someone else (a
/// second owner during a rebalance) must make it reload, never overwrite that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_behind_the_record_cache_is_never_overwritten() {
    use durable_processor::history::{Body, InstanceRecord};
    use durable_processor::store::{CommitOutcome, RedisStore, Store, Write};
    let (processor, mut client, state) = e2e::setup("cache", PARTITIONS).await;
    let counter = InstanceId::entity("Counter", "cached");
    let first = vec![client.signal(&counter, "add", 1)];
    client.send(&first).await;
    e2e::eventually(Duration::from_secs(60), "the first signal is applied", || async {
        (state.entity::<Counter>(&counter).await?.value == 1).then_some(())
    })
    .await;
    // Another writer sets the counter to 100 behind the processor's back.
    let store = RedisStore::connect(&e2e::redis_url(), client.prefix()).await.unwrap();
    let p = counter.partition(PARTITIONS as u32);
    let stored = store.load(p, &[counter.canonical()]).await.unwrap().remove(0).expect("stored");
    let mut record = InstanceRecord::from_blob(&stored.blob).unwrap();
    let Body::Entity(entity) = &mut record.body else { panic!("an entity") };
    entity.state = Some(durable_schemas::Payload::json(&Counter { value: 100 }).unwrap());
    let write = Write {
        append: false,
        id: counter.canonical(),
        expected: Some(stored.etag),
        blob: record.to_blob(),
        timers: vec![],
        index: None,
        expire: None,
    };
    assert!(matches!(store.commit(p, vec![write]).await.unwrap()[0], CommitOutcome::Committed { .. }));
    // The next signal goes through the processor, whose cache still holds value 1.
    let second = vec![client.signal(&counter, "add", 1)];
    client.send(&second).await;
    let value = e2e::eventually(Duration::from_secs(60), "the second signal is applied", || async {
        let v = state.entity::<Counter>(&counter).await?.value;
        (v != 100).then_some(v)
    })
    .await;
    assert_eq!(value, 101, "the processor reloaded after the etag check failed instead of writing 2");
    let metrics = e2e::http_get(processor.metrics, "/metrics").await;
    assert!(metrics.contains("durable_commit_conflicts_total"), "{metrics}");
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_retries_external_events_entity_calls_and_a_sub_orchestration() {
    let (processor, mut client, state) = e2e::setup("approval", PARTITIONS).await;
    let input = ApprovalInput { counter: "approvals".into(), amount: 3 };
    // The Flaky activity fails twice and is retried after 1 s and 2 s durable timers.
    let start = approved_to_the_end(&mut client, &state, "a1", &input).await;
    let h = state.record(&start.target).await.unwrap();
    let timers = h
        .orchestration()
        .unwrap()
        .commands
        .iter()
        .filter(|c| c.kind == durable_processor::history::CommandKind::CreateTimer)
        .count();
    assert_eq!(timers, 3, "two retry timers and the approval timeout");
    processor.stop().await;
}

/// Start `Approval` with `key`, approve it, and check it ends with the expected output; its start.
async fn approved_to_the_end(
    client: &mut e2e::Client,
    state: &e2e::State,
    key: &str,
    input: &ApprovalInput,
) -> Envelope {
    let start = client.start("Approval", key, input);
    let approve = client.raise(&start.target, "approve", true);
    client.send(&[start.clone(), approve]).await;
    let output: String = state.output(&start.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(output, examples::approval_expected(input));
    start
}

/// The processor is up and answers `/status`; then stop it.
async fn still_answers(processor: e2e::InProcess) {
    let status = e2e::http_get(processor.metrics, "/status").await;
    assert!(status.contains("\"ok\""), "the processor still answers: {status}");
    processor.stop().await;
}

/// The reasons of the first `n` dead letters of `prefix`; each carries its source offset too.
async fn dead_letter_reasons(prefix: &str, n: usize) -> Vec<String> {
    let consumer = e2e::topic_reader(prefix, "dead");
    let mut reasons = Vec::new();
    while reasons.len() < n {
        let m =
            tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("dead letters arrive").unwrap();
        let headers = m.headers().expect("dead letters carry headers");
        let reason = headers.iter().find(|h| h.key == "durable.reason").and_then(|h| h.value).expect("a reason");
        assert!(headers.iter().any(|h| h.key == "durable.source.offset"));
        reasons.push(String::from_utf8_lossy(reason).into_owned());
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_goes_to_the_dead_letter_topic_with_the_reason_and_the_partition_keeps_going() {
    let (processor, mut client, state) = e2e::setup("dead", PARTITIONS).await;
    let counter = InstanceId::entity("Counter", "survivor");
    // 1. bytes that do not decode
    client.send_raw(&counter.canonical(), b"{\"not\": \"avro\"}").await;
    // 2. an event type this version does not know (a union branch past the end)
    let mut unknown = client.signal(&counter, "add", 1).encode();
    let branch = unknown.iter().rposition(|&b| b == 10).expect("EntityOperation branch index (5, zigzag 10)");
    unknown[branch] = 100;
    client.send_raw(&counter.canonical(), &unknown).await;
    // 3. an orchestration that is not registered
    let nobody = client.start("NoSuchOrchestration", "x", ());
    // 4. user code that panics
    let boom = client.start("CallsBoom", "b", ());
    // ...and the partition keeps going: a good signal after all of it.
    let good = client.signal(&counter, "add", 7);
    client.send(&[nobody.clone(), boom.clone(), good]).await;
    let c: Counter =
        e2e::eventually(Duration::from_secs(60), "the good signal is applied", || state.entity(&counter)).await;
    assert_eq!(c.value, 7);
    let boom_output: String = state.output(&boom.target, Duration::from_secs(60)).await.decode().unwrap();
    assert!(boom_output.starts_with("Panic:"), "{boom_output}");

    let mut reasons = dead_letter_reasons(client.prefix(), 4).await;
    reasons.sort();
    let all = reasons.join("\n");
    assert!(all.contains("not Avro single-object encoding"), "{all}");
    assert!(all.contains("malformed Avro datum") || all.contains("unknown event"), "{all}");
    assert!(all.contains("no orchestration named \"NoSuchOrchestration\""), "{all}");
    assert!(all.contains("activity") && all.contains("panicked"), "{all}");
    // Nothing committed changed: the dead-lettered start left no state behind.
    let record = state.record(&nobody.target).await;
    assert!(record.as_ref().and_then(|r| r.orchestration()).is_none());
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_status_are_served() {
    let (processor, mut client, state) = e2e::setup("metrics", PARTITIONS).await;
    let start = client.start("Approval", "m", ApprovalInput { counter: "m".into(), amount: 1 });
    let approve = client.raise(&start.target, "approve", true);
    client.send(&[start.clone(), approve]).await;
    client.send_raw("garbage", b"garbage").await;
    state.output(&start.target, Duration::from_secs(60)).await;
    let metrics = e2e::eventually(Duration::from_secs(10), "timer and lag gauges are reported", || async {
        let m = e2e::http_get(processor.metrics, "/metrics").await;
        (m.contains("durable_timer_backlog") && m.contains("durable_consumer_lag")).then_some(m)
    })
    .await;
    for name in [
        "durable_events_total",
        "durable_commits_total",
        "durable_commit_conflicts_total",
        "durable_reruns_total",
        "durable_owned_partitions",
        "durable_commit_latency_seconds_bucket",
        "durable_dead_letters_total",
        "durable_timer_backlog",
        "durable_consumer_lag",
        "durable_activities_total",
        "durable_batch_latency_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(metrics.contains("outcome=\"applied\""));
    assert!(!metrics.contains("orch:"), "no instance ids in labels");
    let status = e2e::http_get(processor.metrics, "/status").await;
    assert!(status.contains("\"status\":\"ok\""), "{status}");
    processor.stop().await;
}

/// One value as Avro writes it under `schema` (apache-avro's encoder).
fn avro(schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().expect("a writer");
    writer.write_value(&mut out, value).expect("the value fits the schema");
    out
}

/// A string as Avro writes it: zig-zag length, then the bytes.
fn avro_string(s: &str) -> Vec<u8> {
    avro(&apache_avro::Schema::String, apache_avro::types::Value::String(s.into()))
}

/// A long as Avro writes it: a zig-zag varint.
fn avro_long(v: i64) -> Vec<u8> {
    avro(&apache_avro::Schema::Long, apache_avro::types::Value::Long(v))
}

/// Records crafted to hurt the decoder — 200,000 nested wrappers (400 KB, which used to overflow
/// the processor's stack and abort it, on every processor that took the partition over) and a
/// ten-byte record claiming a terabyte-long id — are dead-lettered with the reason, and a good
/// signal to an instance of the same partition right behind them is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_envelopes_are_dead_lettered_and_the_partition_keeps_going() {
    let (processor, mut client, state) = e2e::setup("hostile", PARTITIONS).await;
    let counter = InstanceId::entity("Counter", "after-the-storm");
    let target = counter.canonical();
    let mut deep = vec![0xC3, 0x01];
    deep.extend_from_slice(&durable_schemas::Codec::current().fingerprint());
    let header_len = deep.len();
    deep.extend(avro_string("deep-1"));
    deep.extend(avro_string(&target));
    deep.extend([0x00, 0x00, 0x00]); // no source, no origin, timestamp 0
    for _ in 0..200_000 {
        deep.extend([0x1c, 0x00]); // WithDelay { fire_at: 0, inner: … }
    }
    deep.extend([0x12, 0x00]); // TimerFired { correlation: "" }
    client.send_raw(&target, &deep).await;
    let mut lying = deep[..header_len].to_vec();
    lying.extend(avro_long(1 << 40));
    lying.push(b'x');
    client.send_raw(&target, &lying).await;
    let good = client.signal(&counter, "add", 3);
    client.send(&[good]).await;
    let c: Counter =
        e2e::eventually(Duration::from_secs(60), "the good signal is applied", || state.entity(&counter)).await;
    assert_eq!(c.value, 3);

    let all = dead_letter_reasons(client.prefix(), 2).await.join("\n");
    assert!(all.contains("at most 32 wrappers"), "{all}");
    assert!(all.contains("only 1 remain"), "{all}");
    still_answers(processor).await;
}

/// An activity that never returns fails its call with kind `Timeout` after the activity timeout,
/// and the partition it ran in goes on: a signal sent behind it to an instance of the same
/// partition is applied. One that runs past the timeout but heartbeats finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_activity_times_out_and_its_partition_goes_on() {
    let (processor, mut client, state) =
        e2e::setup_with("hang", 1, |c| c.activity_timeout = Duration::from_secs(1)).await;
    let hung = client.start("CallsHang", "h", ());
    let counter = InstanceId::entity("Counter", "behind-the-hang");
    let signal = client.signal(&counter, "add", 2);
    // A call running 3 s, three times the timeout, that heartbeats every 200 ms finishes.
    let beating = client.start("CallsBeats", "b", 3000u64);
    // A call with its own 200 ms timeout times out after that, not after the processor's 1 s.
    let brief = client.start("CallsHangBriefly", "b", ());
    client.send(&[hung.clone(), signal, beating.clone(), brief.clone()]).await;
    let output: String = state.output(&brief.target, Duration::from_secs(60)).await.decode().unwrap();
    assert!(output.starts_with("Timeout:") && output.contains("within 200ms"), "{output}");
    let output: String = state.output(&hung.target, Duration::from_secs(60)).await.decode().unwrap();
    assert!(output.starts_with("Timeout: activity activity:Hang:"), "{output}");
    assert!(output.contains("did not finish within 1s"), "{output}");
    let output: String = state.output(&beating.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(output, "finished after 15 heartbeats");
    let c: Counter =
        e2e::eventually(Duration::from_secs(30), "the signal behind it is applied", || state.entity(&counter)).await;
    assert_eq!(c.value, 2);
    processor.stop().await;
}

/// Terminating an orchestration cancels the activity call it waits for (cooperatively: the
/// call sees `cancelled()` and returns early), within about a second, counted in the metrics —
/// here where it is hardest: the call runs in its caller's partition (one partition), which
/// reads nothing more until the call returns, so the terminate waits behind it in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminating_an_orchestration_cancels_its_running_activity() {
    use std::sync::atomic::Ordering;
    let (processor, mut client, state) = e2e::setup("cancel", 1).await;
    let key = "c-1";
    let (started, cancelled) = (PATIENT[0].load(Ordering::SeqCst), PATIENT[1].load(Ordering::SeqCst));
    let start = client.start("CallsPatient", key, ());
    client.send(std::slice::from_ref(&start)).await;
    e2e::eventually(Duration::from_secs(30), "the call runs", || async {
        (PATIENT[0].load(Ordering::SeqCst) > started).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(PATIENT[1].load(Ordering::SeqCst), cancelled, "nothing cancels a call its caller waits for");
    let path = format!("/v1/instances/{}/terminate", start.target);
    let answer = e2e::http_post(processor.metrics, &path, &serde_json::json!({ "reason": "no longer needed" })).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let asked = std::time::Instant::now();
    e2e::eventually(Duration::from_secs(10), "the call sees its cancellation", || async {
        (PATIENT[1].load(Ordering::SeqCst) > cancelled).then_some(())
    })
    .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "cancelled {took:?} after the terminate");
    let metrics = e2e::http_get(processor.metrics, "/metrics").await;
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("durable_activities_cancelled_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(count.is_some_and(|n| n >= 1.0), "{count:?}");
    e2e::eventually(Duration::from_secs(30), "the caller is terminated", || async {
        let record = state.record(&start.target).await?;
        matches!(record.orchestration()?.status, OrchestrationStatus::Terminated { .. }).then_some(())
    })
    .await;
    processor.stop().await;
}

/// Anyone can write to the events topic, but only processors make protocol fields count: an
/// outside signal claiming every origin stream's highest sequence number is applied as an
/// outside event (and the processors' own signals to that entity still count), a forged
/// activity reply — even one with a made-up seal header — and forged lock requests (for an
/// owner that never existed) are dead-lettered with the reason and change nothing, and the
/// orchestration they targeted runs to its normal end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_origins_replies_and_lock_requests_do_not_count() {
    let (processor, mut client, state) = e2e::setup("forged", PARTITIONS).await;
    let counter = InstanceId::entity("Counter", "forged");
    // 1. Forged origins: one signal per origin stream, each claiming the highest seq.
    let streams: Vec<String> = (0..PARTITIONS).flat_map(|p| [format!("p{p}"), format!("t{p}")]).collect();
    let forged: Vec<Envelope> = streams
        .iter()
        .map(|stream| {
            let mut e = client.signal(&counter, "add", 1);
            e.origin = Some(durable_schemas::Origin { stream: stream.clone(), seq: i64::MAX });
            e
        })
        .collect();
    client.send(&forged).await;
    let poisoned = streams.len() as i64;
    e2e::eventually(Duration::from_secs(60), "the forged-origin signals are applied as outside events", || async {
        state.entity::<Counter>(&counter).await.filter(|c| c.value == poisoned)
    })
    .await;
    // 2. An orchestration that calls an activity, signals and calls the counter; right behind
    //    its start, a forged reply to its first slot (once bare, once with a made-up seal).
    let input = ApprovalInput { counter: "forged".into(), amount: 5 };
    let start = client.start("Approval", "forged", &input);
    let reply = Event::ActivityCompleted { correlation: "0.0".into(), result: Payload::json(&"forged!").unwrap() };
    let mut reply = client.event(&start.target, reply);
    reply.source = Some("client:mallory".into());
    client.send(&[start.clone(), reply.clone()]).await;
    reply.id.push_str("-sealed");
    let fake_seal = [b'0'; 32];
    client.send_raw_with_headers(&start.target, &reply.encode(), &[("durable.mac", &fake_seal)]).await;
    // 3. Lock requests for an owner that never existed, claiming to be from it or from no one.
    let ghost = InstanceId::orchestration("Ghost", "never").canonical();
    let request = Event::LockRequest {
        owner: ghost.clone(),
        correlation: "0.0".into(),
        participants: vec![counter.canonical()],
        position: 0,
    };
    let mut as_ghost = client.event(&counter.canonical(), request.clone());
    as_ghost.source = Some(ghost.clone());
    let anonymous = client.event(&counter.canonical(), request);
    client.send(&[as_ghost, anonymous]).await;
    // The orchestration runs to its normal end: its activity's real result, its signal to the
    // counter counted (the forged origins did not shadow it), the counter never locked.
    let approve = client.raise(&start.target, "approve", true);
    client.send(&[approve]).await;
    let output: String = state.output(&start.target, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(output, format!("ok:forged|approved=true|value={}|Hello forged!,Hello Oslo!", poisoned + 5));

    let all = dead_letter_reasons(client.prefix(), 4).await.join("\n");
    assert_eq!(all.matches("ActivityCompleted is part of Durable's protocol").count(), 2, "{all}");
    assert!(all.contains(&format!("claims to come from the instance {ghost}")), "{all}");
    assert!(all.contains("LockRequest is part of Durable's protocol"), "{all}");
    still_answers(processor).await;
}

/// One partition's worker stuck on a hung activity, with hundreds of records queued behind it,
/// holds back its own partition only: a signal to an instance of another partition is applied
/// at once (the dispatcher used to wait on the stuck worker's full channel, which stalled every
/// partition of the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_partition_holds_back_only_its_own_records() {
    let (processor, mut client, state) = e2e::setup_with("stall", 2, |c| {
        c.activity_timeout = Duration::from_secs(10);
        c.batch = 4; // a small queue bound (16 records) that the flood goes far past
    })
    .await;
    let key_in = |partition: u32, name: &str| {
        (0..)
            .map(|i| format!("{name}-{i}"))
            .find(|k| InstanceId::entity("Counter", k.clone()).partition(2) == partition)
            .unwrap()
    };
    let hung = (0..)
        .map(|i| format!("h-{i}"))
        .find(|k| InstanceId::orchestration("CallsHang", k.clone()).partition(2) == 0)
        .unwrap();
    let stuck = InstanceId::entity("Counter", key_in(0, "stuck"));
    let free = InstanceId::entity("Counter", key_in(1, "free"));
    let start = client.start("CallsHang", &hung, ());
    client.send(std::slice::from_ref(&start)).await;
    let flood: Vec<Envelope> = (0..300).map(|_| client.signal(&stuck, "add", 1)).collect();
    client.send(&flood).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = std::time::Instant::now();
    let signal = client.signal(&free, "add", 1);
    client.send(&[signal]).await;
    e2e::eventually(Duration::from_secs(5), "the other partition's signal is applied while the hang lasts", || async {
        state.entity::<Counter>(&free).await
    })
    .await;
    let behind = state.entity::<Counter>(&stuck).await.map_or(0, |c| c.value);
    assert!(behind < 300, "the stuck partition was still stuck ({behind} of 300 applied) after {:?}", sent.elapsed());
    // Once the hung call times out, every queued record is applied, none skipped or doubled.
    e2e::eventually(Duration::from_secs(60), "the stuck partition catches up", || async {
        state.entity::<Counter>(&stuck).await.filter(|c| c.value == 300)
    })
    .await;
    let output: String = state.output(&start.target, Duration::from_secs(30)).await.decode().unwrap();
    assert!(output.starts_with("Timeout:"), "{output}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state.entity::<Counter>(&stuck).await.unwrap().value, 300);
    processor.stop().await;
}

/// A parked timer that does not decode (a corrupt entry in Redis) is dead-lettered with the
/// reason and acknowledged, and the partition's other timers still fire: an orchestration whose
/// retries wait on durable timers in the same partition completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_parked_timer_is_dead_lettered_and_the_others_fire() {
    let prefix = e2e::unique_prefix("badtimer");
    let mut conn = e2e::redis_connection().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}:{{p0}}:timers"))
        .arg(now)
        .arg(b"\xC3\x01 not an envelope".as_slice())
        .query_async(&mut conn)
        .await
        .expect("park a corrupt timer");
    let processor = e2e::InProcess::start(&prefix, 1).await;
    let mut client = e2e::Client::new(&prefix);
    let state = e2e::State::connect(&prefix, 1).await;
    let input = ApprovalInput { counter: "after-a-bad-timer".into(), amount: 2 };
    // Flaky fails twice; its retries wait on 1 s and 2 s durable timers of partition 0.
    approved_to_the_end(&mut client, &state, "t", &input).await;
    let reasons = dead_letter_reasons(&prefix, 1).await;
    assert!(reasons[0].contains("parked timer t0#") && reasons[0].contains("does not decode"), "{reasons:?}");
    let parked: i64 = redis::cmd("ZCARD").arg(format!("{prefix}:{{p0}}:timers")).query_async(&mut conn).await.unwrap();
    let released: i64 =
        redis::cmd("HLEN").arg(format!("{prefix}:{{p0}}:released")).query_async(&mut conn).await.unwrap();
    assert_eq!(released, 0, "the corrupt timer was acknowledged like the others");
    assert_eq!(parked, 1, "only the approval's one-hour timeout is still parked");
    processor.stop().await;
}
