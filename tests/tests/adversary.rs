//! Hostile tenants on the real servers (Apache Kafka and Redis): a producer with no rights over
//! alice's things, and with only the rights any authenticated user has, tries what the issue
//! lists — pre-burning alice's event ids, flushing her duplicate window, parking far-future
//! timers, squatting a pending orchestration with large events, returning oversized results,
//! sending a captured sealed record of alice's again once her window has turned over —
//! while alice keeps working through the management API. Nothing of hers is lost or applied
//! twice, no partition stops, Redis stays within the stated bound, and each refusal is a dead
//! letter with its reason. The test prints Redis memory before and after, and the longest time
//! one of alice's writes took to apply during the attack.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use durable_processor::examples::Account;
use durable_processor::id::InstanceId;
use durable_processor::{Envelope, Event, Payload};
use durable_schemas::contract::dead_letter;
use rdkafka::message::Headers as _;
use rdkafka::Message as _;
use serde_json::{json, Value};
use tests::e2e::{self, InProcess};

const PARTITIONS: i32 = 4;
const SECRET: &str = "adversary-test-secret-of-at-least-32-bytes";
/// What one instance may keep waiting in this deployment (`DURABLE_MAX_BUFFERED_BYTES`).
const BUFFERED: usize = 2 << 20;

fn token(user: &str) -> String {
    token_with_roles(user, &[])
}

fn token_with_roles(user: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": user, "roles": roles, "aud": "durable", "iss": "adversary", "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token")
}

/// alice's write through the API: 202, or the test fails with the answer.
async fn write(http: &reqwest::Client, base: &str, path: &str, body: Value) {
    let r = http.post(format!("{base}{path}")).bearer_auth(token("alice")).json(&body).send().await.expect("the API");
    let status = r.status();
    assert_eq!(status, 202, "{path}: {}", r.text().await.unwrap_or_default());
}

async fn timers_parked(prefix: &str) -> usize {
    let mut conn = e2e::redis_connection().await;
    let mut n = 0;
    for p in 0..PARTITIONS {
        let count: usize =
            redis::cmd("ZCARD").arg(format!("{prefix}:{{p{p}}}:timers")).query_async(&mut conn).await.expect("ZCARD");
        n += count;
    }
    n
}

/// The dead letters of `prefix`, by the first words of their reasons: read until there are at
/// least `at_least` and then none came for 3 s (or two minutes passed).
async fn dead_letters(prefix: &str, at_least: usize) -> BTreeMap<String, usize> {
    let consumer = e2e::topic_reader(prefix, "dead");
    let mut reasons = BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let enough = reasons.values().sum::<usize>() >= at_least;
        let wait = if enough { Duration::from_secs(3) } else { Duration::from_secs(5) };
        let m = match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Err(_) if enough => break,
            _ => continue,
        };
        let reason = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == dead_letter::REASON))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let kind = if reason.starts_with("Forbidden: ") {
            "Forbidden"
        } else if reason.contains("DURABLE_MAX_BUFFERED_BYTES") {
            "DURABLE_MAX_BUFFERED_BYTES"
        } else if reason.contains("DURABLE_MAX_DELAY") {
            "DURABLE_MAX_DELAY"
        } else {
            "other"
        };
        if kind == "other" {
            eprintln!("dead letter: {reason}");
        }
        *reasons.entry(kind.to_owned()).or_default() += 1;
    }
    reasons
}

/// The dead letter (as `GET /v1/dead` lists it) whose event has the id `event_id`: the test
/// fails if there is none.
async fn find_letter(http: &reqwest::Client, base: &str, admin: &str, event_id: &str) -> Value {
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/dead?limit=200&cursor={c}"),
            None => format!("{base}/v1/dead?limit=200"),
        };
        let page: Value = http.get(url).bearer_auth(admin).send().await.expect("the API").json().await.expect("json");
        let letters = page["letters"].as_array().expect("letters");
        if let Some(l) = letters.iter().find(|l| l["event_id"] == event_id) {
            return l.clone();
        }
        let next = page["next"].as_str();
        cursor = Some(next.unwrap_or_else(|| panic!("no dead letter holds {event_id}")).to_owned());
    }
}

/// The record of the events topic that carries the event `event_id`, as a reader of the topic
/// sees it: its key, its value and its seal.
async fn captured(prefix: &str, event_id: &str) -> (String, Vec<u8>, Vec<u8>) {
    let consumer = e2e::topic_reader(prefix, "events");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else { continue };
        let Some(value) = m.payload() else { continue };
        if Envelope::decode(value).is_ok_and(|e| e.id == event_id) {
            let seal = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == durable_schemas::contract::seal::HEADER))
                .and_then(|h| h.value)
                .expect("the API seals what it sends")
                .to_vec();
            let key = String::from_utf8(m.key().expect("a key").to_vec()).expect("a utf-8 key");
            return (key, value.to_vec(), seal);
        }
    }
    panic!("no record carries {event_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_tenant_cannot_burn_flush_park_squat_or_stall_another() {
    let prefix = e2e::unique_prefix("adversary");
    let mut config = InProcess::config(&prefix, PARTITIONS);
    config.auth.anonymous = false;
    config.auth.jwt_secrets = vec![durable_kafka::Secret::new(SECRET)];
    config.auth.jwt_audience = Some("durable".into());
    config.auth.jwt_issuer = Some("adversary".into());
    // Every outside Kafka producer acts as mallory: authenticated, owner of nothing of alice's.
    config.auth.kafka_principal = Some("mallory".into());
    config.max_buffered_bytes = BUFFERED;
    let processor = InProcess::start_with(config).await;
    let base = format!("http://{}", processor.metrics);
    let http = reqwest::Client::new();
    let state = e2e::State::connect(&prefix, PARTITIONS as u32).await;
    let mallory = e2e::Client::new(&prefix);
    let acct = InstanceId::entity("Account", "alice");
    let balance = || async { state.entity::<Account>(&acct).await.map(|a| a.balance) };

    write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 100, "event_id": "alice-open"})).await;
    e2e::eventually(Duration::from_secs(60), "alice's account opens", || async {
        (balance().await? == 100).then_some(())
    })
    .await;
    let (keys_before, bytes_before) = e2e::redis_footprint(&prefix).await;

    // 1. Pre-burn: the id alice will use next, sent by mallory (refused).
    let deposit =
        |amount: i64| Event::EntityOperation { operation: "deposit".into(), input: Payload::json(&amount).unwrap() };
    let mut burn = Envelope::new("alice-2", acct.canonical(), 0, deposit(1));
    burn.source = Some("client:mallory".into());
    // 2. A flood of refused events, to push alice's ids out of her duplicate window.
    let mut flood: Vec<Envelope> = (0..1_100)
        .map(|i| {
            let mut e = Envelope::new(format!("flood-{i}"), acct.canonical(), 0, deposit(1));
            e.source = Some("client:mallory".into());
            e
        })
        .collect();
    // 3. Timers due in the year 3000 on alice's account, and (mallory's own) past the longest delay.
    let year_3000 = 32_503_680_000_000;
    for i in 0..200 {
        let mut e = Envelope::new(format!("far-{i}"), acct.canonical(), 0, deposit(1));
        e.body = Event::WithDelay { fire_at: year_3000, inner: Box::new(e.body) };
        e.source = Some("client:mallory".into());
        flood.push(e);
    }
    let own = InstanceId::entity("Counter", "mallory");
    for i in 0..50 {
        let add = Event::EntityOperation { operation: "add".into(), input: Payload::json(&1).unwrap() };
        let mut e = Envelope::new(format!("own-far-{i}"), own.canonical(), 0, add);
        e.body = Event::WithDelay { fire_at: year_3000, inner: Box::new(e.body) };
        e.source = Some("client:mallory".into());
        flood.push(e);
    }
    // 4. Squatting: large events raised on an orchestration before its start (mallory may
    //    create it: any authenticated user may), past what one instance may keep waiting.
    let squat = InstanceId::orchestration("Approval", "squat").canonical();
    let big = "m".repeat(400_000);
    for i in 0..12 {
        let mut e = Envelope::new(
            format!("squat-{i}"),
            squat.clone(),
            0,
            Event::RaiseEvent { name: "approve".into(), payload: Payload::json(&big).unwrap() },
        );
        e.source = Some("client:mallory".into());
        flood.push(e);
    }
    mallory.send(std::slice::from_ref(&burn)).await;

    // alice keeps working while the flood goes in: each of her deposits is applied exactly once,
    // and the longest any took is the stall she saw.
    let attack = {
        let mallory = &mallory;
        let flood = &flood;
        async move {
            for chunk in flood.chunks(100) {
                mallory.send(chunk).await;
            }
        }
    };
    let alice = async {
        let mut longest = Duration::ZERO;
        write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 5, "event_id": "alice-2"})).await;
        for i in 0..20 {
            let expected = 106 + i;
            let t = Instant::now();
            write(
                &http,
                &base,
                "/v1/entities/Account/alice/deposit",
                json!({"input": 1, "event_id": format!("alice-d{i}")}),
            )
            .await;
            e2e::eventually(Duration::from_secs(60), "alice's deposit applies", || async {
                let b = balance().await?;
                assert!(b <= expected, "alice's balance {b} is over {expected}: something applied twice");
                (b == expected).then_some(())
            })
            .await;
            longest = longest.max(t.elapsed());
        }
        longest
    };
    let ((), longest) = tokio::join!(attack, alice);
    // The pre-burnt id was alice's: 100 + 5 + 20.
    e2e::eventually(Duration::from_secs(60), "alice-2 applied despite the burn", || async {
        (balance().await? == 125).then_some(())
    })
    .await;
    // Her retries of ids she used before the flood are still recognised: applied once.
    write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 100, "event_id": "alice-open"})).await;
    write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 5, "event_id": "alice-2"})).await;
    let marker = InstanceId::entity("Counter", "alice-marker");
    write(&http, &base, "/v1/entities/Counter/alice-marker/add", json!({"input": 1})).await;
    e2e::eventually(Duration::from_secs(60), "the marker after the retries applies", || async {
        (state.entity::<durable_processor::examples::Counter>(&marker).await?.value == 1).then_some(())
    })
    .await;
    assert_eq!(balance().await, Some(125), "alice's retries were applied again: her window was flushed");

    // Every refusal is a dead letter with its reason: the burn, the flood and alice's-account
    // timers Forbidden, mallory's own far timers past the longest delay, the squatting past
    // the byte bound.
    let reasons = dead_letters(&prefix, 1 + 1_100 + 200 + 50 + 5).await;
    eprintln!("dead letters by reason: {reasons:?}");
    assert!(reasons.get("Forbidden").copied().unwrap_or(0) >= 1 + 1_100 + 200, "{reasons:?}");
    assert!(reasons.get("DURABLE_MAX_BUFFERED_BYTES").copied().unwrap_or(0) >= 5, "{reasons:?}");
    assert!(reasons.get("DURABLE_MAX_DELAY").copied().unwrap_or(0) >= 50, "{reasons:?}");
    assert_eq!(reasons.get("other"), None, "every refusal is one of those: {reasons:?}");
    assert_eq!(timers_parked(&prefix).await, 0, "nothing of mallory's was parked");
    let squatted = state.record(&squat).await.expect("the squat exists (mallory may create it)");
    let kept = squatted.orchestration().expect("pending").inbox.len();
    assert!(kept * 400_000 <= BUFFERED, "{kept} large events kept, over the bound");

    let (keys_after, bytes_after) = e2e::redis_footprint(&prefix).await;
    eprintln!(
        "adversary: Redis {keys_before} keys / {bytes_before} bytes before, {keys_after} keys / {bytes_after} bytes after; \
         alice's longest write-to-applied during the attack: {} ms",
        longest.as_millis()
    );
    // The bound stated: what the squatted instance may keep — stored at most about twice (its
    // record written whole and the deltas appended since, `partition::Shape`), each in an
    // allocation Redis's allocator rounds up by as much as a quarter — plus small records
    // (alice's, the refused ones' marks, the counters) and the partitions' bookkeeping. Without
    // the byte bound the twelve large events alone make about 4.8 MB, stored up to twice.
    assert!(
        bytes_after.saturating_sub(bytes_before) <= (3 * BUFFERED + (1 << 20)) as u64,
        "Redis grew by {} bytes",
        bytes_after - bytes_before
    );
    // An admin redrives mallory's refused burn: it is sent on mallory's behalf, never the
    // admin's (a confused deputy), so it is refused again and alice's balance does not move.
    let admin = token_with_roles("root", &["admin"]);
    let burnt = find_letter(&http, &base, &admin, "alice-2").await;
    let burnt = burnt["id"].as_str().expect("an id").to_owned();
    let redrive =
        http.post(format!("{base}/v1/dead/{burnt}/redrive")).bearer_auth(&admin).send().await.expect("the API");
    let status = redrive.status().as_u16();
    let answer: Value = redrive.json().await.expect("json");
    assert!(matches!(status, 403 | 404), "the redrive must act for mallory: {status} {answer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(balance().await, Some(125), "nothing of mallory's applied");

    // 5. Replay: mallory captured the sealed record of alice's deposit alice-d0 as it crossed the
    //    events topic (seal header and all). alice's ordinary traffic turns her window of
    //    outside ids over; then the copy is sent again, byte for byte. It must be refused: it
    //    acts for alice, and before replay protection it was applied a second time.
    let (key, value, seal) = captured(&prefix, "alice-d0").await;
    let mut sent = 0;
    while sent < 1_000 {
        let mut set = tokio::task::JoinSet::new();
        for i in sent..sent + 50 {
            let (http, base) = (http.clone(), base.clone());
            set.spawn(async move {
                let body = json!({"input": 0, "event_id": format!("alice-w{i}")});
                write(&http, &base, "/v1/entities/Account/alice/deposit", body).await;
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a write");
        }
        sent += 50;
    }
    write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 1, "event_id": "alice-turned"})).await;
    e2e::eventually(Duration::from_secs(120), "alice's window turns over", || async {
        (balance().await? == 126).then_some(())
    })
    .await;
    mallory.send_raw_with_headers(&key, &value, &[(durable_schemas::contract::seal::HEADER, seal.as_slice())]).await;
    write(&http, &base, "/v1/entities/Account/alice/deposit", json!({"input": 1, "event_id": "alice-last"})).await;
    e2e::eventually(Duration::from_secs(60), "alice's deposit after the replay applies", || async {
        (balance().await? >= 127).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(balance().await, Some(127), "the captured record was applied again");
    let replayed = find_letter(&http, &base, &admin, "alice-d0").await;
    let reason = replayed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot be told from a replay"), "{replayed}");
    eprintln!("adversary: the replayed sealed record was refused: {reason}");

    let metrics = e2e::http_get(processor.metrics, "/metrics").await;
    assert!(metrics.contains("durable_dead_letters_total"), "{metrics}");
    processor.stop().await;
}
