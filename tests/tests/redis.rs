//! Redis as users run it, and as it fails: a Redis that lost state (restarted empty, rolled
//! back, restored from an older copy) is detected and its partitions stop until an operator
//! accepts the loss; a Redis that evicts keys is refused; the server's persistence settings
//! are reported.

use std::net::SocketAddr;
use std::time::Duration;

use durable_processor::examples::Counter;
use durable_processor::id::InstanceId;
use durable_processor::runtime;
use serde_json::json;
use tests::e2e::{self, Client, InProcess, Process, RedisServer, State};

async fn counter_value(state: &State, id: &InstanceId) -> Option<i64> {
    state.entity::<Counter>(id).await.map(|c| c.value)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    e2e::redis_connection().await
}

/// Every key of `partition` under `prefix`, with its DUMP.
async fn snapshot(prefix: &str, partition: u32) -> Vec<(String, Vec<u8>)> {
    let mut conn = redis().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:{{p{partition}}}:*")).query_async(&mut conn).await.unwrap();
    let mut dumps = Vec::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        dumps.push((key, dump));
    }
    dumps
}

/// Put `partition`'s keys back to `snapshot`: what a Redis restored from an older copy (or
/// failed over to a replica that lagged) holds.
async fn roll_back(prefix: &str, partition: u32, snapshot: &[(String, Vec<u8>)]) {
    let mut conn = redis().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:{{p{partition}}}:*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    }
    for (key, dump) in snapshot {
        let _: () =
            redis::cmd("RESTORE").arg(key).arg(0).arg(dump).arg("REPLACE").query_async(&mut conn).await.unwrap();
    }
}

const BINARY: &str = env!("CARGO_BIN_EXE_test-processor");

async fn status(metrics: SocketAddr) -> serde_json::Value {
    e2e::json_body(&e2e::http_get(metrics, "/status").await)
}

/// `durable_state_lost` of `partition`: read from a processor of its own process (metrics are
/// per process, and tests of this file run at once).
async fn lost_gauge(metrics: SocketAddr, partition: u32) -> Option<String> {
    let metrics = e2e::http_get(metrics, "/metrics").await;
    let series = format!("durable_state_lost{{partition=\"{partition}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.trim().to_owned())
}

async fn add(client: &mut Client, id: &InstanceId, n: usize) {
    let events: Vec<_> = (0..n).map(|_| client.signal(id, "add", 1)).collect();
    client.send(&events).await;
}

/// Redis rolled back under a processor: Kafka's committed offset is past what Redis holds. The
/// partition is stopped with a clear error, metric and status, applies nothing on the stale
/// state, and goes on once an operator accepts the loss; the other partition never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_redis_stops_the_partition_until_an_operator_accepts_the_loss() {
    let prefix = e2e::unique_prefix("rollback");
    let processor = InProcess::start(&prefix, 2).await;
    let mut client = Client::new(&prefix);
    let state = State::connect(&prefix, 2).await;
    let lost = InstanceId::entity("Counter", "rolled-back");
    let p = lost.partition(2);
    let other =
        (0..).map(|i| InstanceId::entity("Counter", format!("other{i}"))).find(|c| c.partition(2) != p).unwrap();
    add(&mut client, &lost, 5).await;
    e2e::eventually(Duration::from_secs(30), "5 applied", || async {
        (counter_value(&state, &lost).await == Some(5)).then_some(())
    })
    .await;
    let older = snapshot(&prefix, p).await;
    add(&mut client, &lost, 5).await;
    e2e::eventually(Duration::from_secs(30), "10 applied", || async {
        (counter_value(&state, &lost).await == Some(10)).then_some(())
    })
    .await;
    processor.stop().await; // Kafka's committed offset is now past all ten
    roll_back(&prefix, p, &older).await;
    assert_eq!(counter_value(&state, &lost).await, Some(5), "the rollback took the counter back");

    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let mut processor = Process::spawn(BINARY, &prefix, 2, &dir.join("processor.log"));
    add(&mut client, &lost, 1).await;
    add(&mut client, &other, 1).await;
    e2e::eventually(Duration::from_secs(30), "the partition is reported lost", || async {
        let s = e2e::json_body(&try_status(processor.metrics).await?);
        (s["lost_partitions"] == json!([p]) && s["status"] == "state_lost").then_some(())
    })
    .await;
    assert_eq!(lost_gauge(processor.metrics, p).await.as_deref(), Some("1"));
    e2e::eventually(Duration::from_secs(30), "the other partition goes on", || async {
        (counter_value(&state, &other).await == Some(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counter_value(&state, &lost).await, Some(5), "nothing is applied on the stale state");

    let refused = e2e::http_post(processor.metrics, &format!("/v1/partitions/{}/accept-loss", 1 - p), &json!({})).await;
    assert!(refused.starts_with("HTTP/1.1 409") && refused.contains("not_lost"), "{refused}");
    let accepted = e2e::http_post(processor.metrics, &format!("/v1/partitions/{p}/accept-loss"), &json!({})).await;
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    e2e::eventually(Duration::from_secs(30), "the partition goes on from Kafka's offset", || async {
        (counter_value(&state, &lost).await == Some(6)).then_some(())
    })
    .await;
    let s = status(processor.metrics).await;
    assert_eq!((s["lost_partitions"].clone(), s["status"].clone()), (json!([]), json!("ok")));
    assert_eq!(lost_gauge(processor.metrics, p).await.as_deref(), Some("0"));
    processor.terminate();

    // A restart after the acceptance finds the store whole.
    let processor = InProcess::start(&prefix, 2).await;
    add(&mut client, &lost, 1).await;
    e2e::eventually(Duration::from_secs(30), "applied after a restart", || async {
        (counter_value(&state, &lost).await == Some(7)).then_some(())
    })
    .await;
    assert_eq!(status(processor.metrics).await["lost_partitions"], json!([]));
    processor.stop().await;
}

/// A Redis that restarted empty under a group with committed offsets: every partition that had
/// been processed is stopped (not silently started from nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_restarted_empty_is_detected() {
    let prefix = e2e::unique_prefix("emptied");
    let processor = InProcess::start(&prefix, 1).await;
    let mut client = Client::new(&prefix);
    let state = State::connect(&prefix, 1).await;
    let c = InstanceId::entity("Counter", "emptied");
    add(&mut client, &c, 3).await;
    e2e::eventually(Duration::from_secs(30), "3 applied", || async {
        (counter_value(&state, &c).await == Some(3)).then_some(())
    })
    .await;
    processor.stop().await;
    roll_back(&prefix, 0, &[]).await;
    let processor = InProcess::start(&prefix, 1).await;
    add(&mut client, &c, 1).await;
    e2e::eventually(Duration::from_secs(30), "the partition is reported lost", || async {
        (status(processor.metrics).await["lost_partitions"] == json!([0])).then_some(())
    })
    .await;
    assert_eq!(counter_value(&state, &c).await, None, "nothing is applied on the empty store");
    processor.stop().await;
}

/// A Redis that evicts keys would drop instance state silently: refused at start with what to
/// do, accepted with DURABLE_REDIS_ALLOW_EVICTION, and reported in /status either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_evicts_keys_is_refused_unless_allowed() {
    let server = RedisServer::start(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let prefix = e2e::unique_prefix("evicts");
    let mut config = InProcess::config(&prefix, 1);
    config.redis_url = server.url();
    let refused = runtime::run(config.clone(), e2e::registry(), async {}, None).await.expect_err("refused");
    let message = format!("{refused:#}");
    assert!(message.contains("maxmemory-policy allkeys-lru"), "{message}");
    assert!(message.contains("DURABLE_REDIS_ALLOW_EVICTION"), "{message}");
    config.redis_allow_eviction = true;
    let processor = InProcess::start_with(config).await;
    let s = status(processor.metrics).await;
    assert_eq!(s["store"]["maxmemory_policy"], "allkeys-lru", "{s}");
    assert_eq!(s["store"]["durable"], false, "{s}");
    processor.stop().await;
}

/// Redis with `appendfsync always` makes acknowledged commits durable: /status and the metric
/// say so; the shared test Redis (no persistence) says it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stores_durability_is_reported() {
    let server = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let prefix = e2e::unique_prefix("durable-redis");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let url = server.url();
    let mut processor =
        Process::spawn_with(BINARY, &prefix, 1, &dir.join("processor.log"), &[("DURABLE_REDIS_URL", &url)]);
    let s = e2e::eventually(Duration::from_secs(60), "the processor answers", || async {
        try_status(processor.metrics).await.map(|r| e2e::json_body(&r))
    })
    .await;
    assert_eq!(
        (s["store"]["kind"].clone(), s["store"]["durable"].clone(), s["store"]["appendfsync"].clone()),
        (json!("redis"), json!(true), json!("always")),
        "{s}"
    );
    let metrics = e2e::http_get(processor.metrics, "/metrics").await;
    assert!(metrics.contains("\ndurable_store_durable 1\n"), "the metric says durable");
    processor.terminate();
    let processor = InProcess::start(&e2e::unique_prefix("volatile-redis"), 1).await;
    let s = status(processor.metrics).await;
    assert_eq!((s["store"]["durable"].clone(), s["store"]["appendonly"].clone()), (json!(false), json!(false)), "{s}");
    processor.stop().await;
}

/// `/status` of a processor that may not be listening yet.
async fn try_status(metrics: SocketAddr) -> Option<String> {
    tokio::net::TcpStream::connect(metrics).await.ok()?;
    Some(e2e::http_get(metrics, "/status").await)
}

/// Managed Redis: TLS (`rediss://`, the server's CA in DURABLE_REDIS_CA) and an ACL user that
/// may touch only its prefix's keys and no dangerous command (no CONFIG, no INFO). A processor
/// runs on it end to end; a wrong password is an error that names what to check and never the
/// password, which appears in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_runs_on_redis_over_tls_as_an_acl_user() {
    let prefix = e2e::unique_prefix("redis-tls");
    let password = "redis-acl-pw-5d41c9";
    let acl = format!("~{prefix}:*");
    let pass = format!(">{password}");
    let server = RedisServer::start_tls(&[
        "--user",
        "default",
        "off",
        "--user",
        "app",
        "on",
        &pass,
        &acl,
        "&*",
        "+@all",
        "-@dangerous",
    ]);
    let ca = e2e::test_ca();
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();

    let wrong = server.url_as(Some("app:not-the-password-93"));
    let out = std::process::Command::new(BINARY)
        .env("DURABLE_ANONYMOUS", "true")
        .env("DURABLE_BROKERS", e2e::brokers())
        .env("DURABLE_PREFIX", &prefix)
        .env("DURABLE_REDIS_URL", &wrong)
        .env("DURABLE_REDIS_CA", &ca)
        .env("DURABLE_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("run the processor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach Redis at rediss://app:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("not-the-password-93"), "the password is never shown: {stderr}");

    let url = server.url_as(Some(&format!("app:{password}")));
    let ca_path = ca.to_str().unwrap();
    let log = dir.join("processor.log");
    let mut processor = Process::spawn_with(
        BINARY,
        &prefix,
        2,
        &log,
        &[("DURABLE_REDIS_URL", &url), ("DURABLE_REDIS_CA", ca_path), ("DURABLE_LOG", "debug")],
    );
    let mut client = Client::new(&prefix);
    let c = InstanceId::entity("Counter", "over-tls");
    add(&mut client, &c, 4).await;
    let store = durable_processor::store::RedisStore::connect_with(&url, &prefix, Some(&ca)).await.expect("TLS store");
    e2e::eventually(Duration::from_secs(60), "applied over TLS", || async {
        let stored =
            durable_processor::store::Store::load(&store, c.partition(2), &[c.canonical()]).await.ok()?.remove(0)?;
        let record = durable_processor::history::InstanceRecord::from_blob(&stored.blob).ok()?;
        let value = record.entity()?.state.as_ref()?.decode::<Counter>().ok()?.value;
        (value == 4).then_some(())
    })
    .await;
    let s = status(processor.metrics).await;
    assert_eq!(s["store"]["maxmemory_policy"], json!(null), "CONFIG is refused to this user: {s}");
    processor.terminate();
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(!written.contains(password), "the password appears in no log");
    assert!(written.contains("cannot read Redis's maxmemory-policy"), "the unknown policy is warned about");
}

/// The bank example end to end on a Redis Cluster of three masters (`scripts/services`), with
/// two processors: every transfer finishes once and money is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bank_runs_on_a_redis_cluster() {
    use durable_processor::examples::{Account, TransferInput, TransferOutcome};
    use durable_processor::history::{InstanceRecord, OrchestrationStatus};
    use durable_processor::store::{RedisStore, Store as _};
    let seeds = std::env::var("DURABLE_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:7000,redis://127.0.0.1:7001".into());
    let prefix = e2e::unique_prefix("cluster-bank");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let env = [("DURABLE_REDIS_CLUSTER", "true"), ("DURABLE_REDIS_URL", seeds.as_str())];
    let mut a = Process::spawn_with(BINARY, &prefix, 8, &dir.join("a.log"), &env);
    let mut b = Process::spawn_with(BINARY, &prefix, 8, &dir.join("b.log"), &env);
    let store =
        RedisStore::connect_cluster(&seeds.split(',').collect::<Vec<_>>(), &prefix, None).await.expect("cluster");
    let record = |id: String| {
        let store = store.clone();
        async move {
            let p = InstanceId::parse(&id).unwrap().partition(8);
            let stored = store.load(p, std::slice::from_ref(&id)).await.expect("cluster load").remove(0)?;
            Some(InstanceRecord::from_blob(&stored.blob).expect("readable"))
        }
    };
    let mut client = Client::new(&prefix);
    let accounts: Vec<InstanceId> = (0..8).map(|i| InstanceId::entity("Account", format!("acc{i}"))).collect();
    let mut setup = Vec::new();
    for (i, acc) in accounts.iter().enumerate() {
        setup.push(client.signal(acc, "open", format!("owner{i}")));
        setup.push(client.signal(acc, "deposit", 1_000));
    }
    client.send(&setup).await;
    let transfers: Vec<_> = (0..40)
        .map(|t| {
            let input = TransferInput {
                from: format!("acc{}", t % 8),
                to: format!("acc{}", (t * 3 + 1) % 8),
                amount: 10 + t as i64,
            };
            client.start("Transfer", &format!("t{t}"), input)
        })
        .collect();
    client.send(&transfers).await;
    let mut moved = 0;
    for t in &transfers {
        let outcome = e2e::eventually(Duration::from_secs(120), &format!("{} finishes", t.target), || async {
            match record(t.target.clone()).await?.orchestration()?.status.clone() {
                OrchestrationStatus::Running => None,
                OrchestrationStatus::Completed { output } => {
                    Some(output.decode::<TransferOutcome>().map_err(|e| e.to_string()))
                }
                OrchestrationStatus::Failed { failure } => Some(Err(failure.message)),
                other => Some(Err(format!("{other:?}"))),
            }
        })
        .await;
        match outcome {
            Ok(TransferOutcome::Transferred) => moved += 1,
            Ok(TransferOutcome::Refused { .. }) => {}
            Err(e) => panic!("{} did not complete: {e}", t.target),
        }
    }
    assert!(moved > 0, "some transfers moved money");
    let mut total = 0;
    for acc in &accounts {
        let balance = e2e::eventually(Duration::from_secs(30), "the account is unlocked", || async {
            let record = record(acc.canonical()).await?;
            let entity = record.entity()?;
            entity.lock.is_none().then(|| entity.state.as_ref()?.decode::<Account>().ok()).flatten()
        })
        .await
        .balance;
        total += balance;
    }
    assert_eq!(total, 8 * 1_000, "money is conserved");
    a.terminate();
    b.terminate();
}
