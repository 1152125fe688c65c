//! The projector against the real broker, Redis and Typesense (as `scripts/services` starts them),
//! also over SASL_SSL.

use std::time::Duration;

use durable_kafka::SaslMechanism;
use durable_processor::examples::{Account, Counter};
use durable_processor::id::InstanceId;
use durable_projector::typesense::Typesense;
use durable_projector::{mapping, ProjectorConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tests::e2e::{self, Client, InProcess, State};

use tests::e2e::{typesense_api_key as api_key, typesense_url};

fn ts(url: &str) -> Typesense {
    Typesense::new(url, &api_key(), Duration::from_secs(10)).expect("client")
}

/// A projector running in this process.
struct Projector {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Projector {
    /// The configuration [`Projector::start`] runs with, to change before [`Projector::start_with`].
    fn config(prefix: &str, url: &str) -> ProjectorConfig {
        let mut config = ProjectorConfig::new(&e2e::brokers(), prefix, url, &api_key());
        config.linger = Duration::from_millis(50);
        config
    }

    async fn start(prefix: &str, url: &str) -> Self {
        Self::start_with(Self::config(prefix, url)).await
    }

    async fn start_with(config: ProjectorConfig) -> Self {
        let (stop, rx) = tokio::sync::oneshot::channel();
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(durable_projector::run(
            config,
            async {
                let _ = rx.await;
            },
            Some(ready),
        ));
        if ready_rx.await.is_err() {
            panic!("projector did not start: {:?}", task.await);
        }
        Self { stop: Some(stop), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.expect("projector task").expect("clean stop");
    }
}

async fn doc(ts: &Typesense, alias: &str, id: &str) -> Option<Value> {
    ts.document(alias, id).await.ok().flatten()
}

/// Every account document equals the account's state in Redis (owner, balance, version).
async fn accounts_match(ts: &Typesense, state: &State, prefix: &str, accounts: &[InstanceId]) -> Result<(), String> {
    let alias = mapping::entity_alias(prefix, "Account");
    for a in accounts {
        let record = state.record(&a.canonical()).await.ok_or(format!("{a} not in Redis"))?;
        let account: Account = state.entity(a).await.ok_or(format!("{a} has no state"))?;
        let d = doc(ts, &alias, &a.canonical()).await.ok_or(format!("{a} not in Typesense"))?;
        if d["owner"] != account.owner.as_str() || d["balance"] != account.balance || d["version"] != record.version {
            return Err(format!("{a}: Typesense {d} vs Redis {account:?} v{}", record.version));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_bank_every_account_document_equals_the_entity_state_in_redis() {
    let prefix = e2e::unique_prefix("bank-projection");
    let processor = InProcess::start(&prefix, 4).await;
    let projector = Projector::start(&prefix, &typesense_url()).await;
    let ts = ts(&typesense_url());
    let state = State::connect(&prefix, 4).await;
    let mut client = Client::new(&prefix);
    let owners = ["alice", "bob", "carol"];
    let accounts: Vec<InstanceId> = (0..9).map(|i| InstanceId::entity("Account", format!("acc{i}"))).collect();
    let mut events = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        events.push(client.signal(a, "open", owners[i % 3]));
        events.push(client.signal(a, "deposit", 100));
    }
    client.send(&events).await;
    let mut transfers = Vec::new();
    let mut events = Vec::new();
    for t in 0..30 {
        let (from, to) = (t % 9, (t * 4 + 1) % 9);
        if from == to {
            continue;
        }
        let input =
            json!({ "from": format!("acc{from}"), "to": format!("acc{to}"), "amount": 10 + (t as i64 % 4) * 25 });
        let start = client.start("Transfer", &format!("t{t}"), input);
        transfers.push(start.target.clone());
        events.push(start);
    }
    client.send(&events).await;
    for t in &transfers {
        state.output(t, Duration::from_secs(120)).await;
    }
    e2e::eventually(Duration::from_secs(60), "every account document equals Redis", || async {
        accounts_match(&ts, &state, &prefix, &accounts).await.ok()
    })
    .await;

    // Search by owner and by balance range, compared with Redis.
    let mut by_owner = Vec::new();
    let mut rich = Vec::new();
    for a in &accounts {
        let account: Account = state.entity(a).await.unwrap();
        if account.owner == "alice" {
            by_owner.push(a.canonical());
        }
        if account.balance > 100 {
            rich.push(a.canonical());
        }
    }
    let ids = |docs: Vec<Value>| {
        let mut v: Vec<String> = docs.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
        v.sort();
        v
    };
    by_owner.sort();
    rich.sort();
    let found = durable_projector::search(&ts, &prefix, "Account", "*", Some("owner:=alice"), 100).await.unwrap();
    assert_eq!(ids(found), by_owner);
    let found = durable_projector::search(&ts, &prefix, "Account", "*", Some("balance:>100"), 100).await.unwrap();
    assert_eq!(ids(found), rich);
    let found = durable_projector::search(&ts, &prefix, "Account", "carol", None, 100).await.unwrap();
    assert_eq!(found.len(), 3, "a text query over the owner field");

    // The orchestrations collection holds the transfers.
    let found = durable_projector::search(
        &ts,
        &prefix,
        "orchestrations",
        "*",
        Some("name:=Transfer && status:=completed"),
        100,
    )
    .await
    .unwrap();
    assert_eq!(found.len(), transfers.len());
    assert!(found.iter().all(|d| d["created_at"].as_i64().is_some()), "{found:?}");
    projector.stop().await;
    processor.stop().await;
}

async fn create_state_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", e2e::brokers()).create().expect("admin");
    let results = admin
        .create_topics(&[NewTopic::new(topic, 4, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("broker reachable: is Kafka running? (scripts/services)");
    for r in results {
        r.expect("topic created");
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", e2e::brokers()).create().expect("producer")
}

async fn produce(p: &FutureProducer, topic: &str, id: &str, version: u64, value: Option<i64>) {
    let record = json!({
        "instance": id, "kind": "entity", "name": "Counter", "key": id.rsplit(':').next().unwrap(),
        "version": version, "status": if value.is_some() { "active" } else { "deleted" },
        "state": value.map(|v| json!({ "value": v })), "custom_status": null, "failure": null, "updated_at": version,
    })
    .to_string();
    p.send(FutureRecord::to(topic).key(id).payload(&record), Duration::from_secs(10)).await.expect("produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_and_duplicate_records_never_regress_a_document() {
    let prefix = e2e::unique_prefix("guard");
    let topic = format!("{prefix}.state");
    create_state_topic(&topic).await;
    let p = producer();
    let ts = ts(&typesense_url());
    let alias = mapping::entity_alias(&prefix, "Counter");
    let id = "entity:Counter:g1";
    produce(&p, &topic, id, 1, Some(10)).await;
    produce(&p, &topic, id, 3, Some(30)).await;
    produce(&p, &topic, id, 2, Some(20)).await;
    produce(&p, &topic, id, 3, Some(30)).await;
    let projector = Projector::start(&prefix, &typesense_url()).await;
    produce(&p, &topic, "entity:Counter:marker", 1, Some(1)).await;
    e2e::eventually(Duration::from_secs(60), "the marker is projected", || async {
        doc(&ts, &alias, "entity:Counter:marker").await.map(|_| ())
    })
    .await;
    let d = doc(&ts, &alias, id).await.expect("projected");
    assert_eq!((d["version"].clone(), d["value"].clone()), (json!(3), json!(30)), "{d}");

    // A new projector (empty cache) receives older records again: the version in Typesense guards.
    projector.stop().await;
    let projector = Projector::start(&prefix, &typesense_url()).await;
    produce(&p, &topic, id, 2, Some(20)).await;
    produce(&p, &topic, id, 1, Some(10)).await;
    produce(&p, &topic, "entity:Counter:marker", 2, Some(2)).await;
    e2e::eventually(Duration::from_secs(60), "the second marker is projected", || async {
        doc(&ts, &alias, "entity:Counter:marker").await.filter(|d| d["version"] == 2).map(|_| ())
    })
    .await;
    let d = doc(&ts, &alias, id).await.expect("still there");
    assert_eq!((d["version"].clone(), d["value"].clone()), (json!(3), json!(30)), "{d}");

    // A deletion removes the document; an older record after it changes nothing.
    produce(&p, &topic, id, 4, None).await;
    produce(&p, &topic, id, 3, Some(30)).await;
    produce(&p, &topic, "entity:Counter:marker", 3, Some(3)).await;
    e2e::eventually(Duration::from_secs(60), "the third marker is projected", || async {
        doc(&ts, &alias, "entity:Counter:marker").await.filter(|d| d["version"] == 3).map(|_| ())
    })
    .await;
    assert_eq!(doc(&ts, &alias, id).await, None, "deleted entities leave the index");
    // Bad input goes to the dead-letter topic and does not stop the projector.
    p.send(FutureRecord::to(&topic).key("x").payload("not json"), Duration::from_secs(10)).await.unwrap();
    produce(&p, &topic, "entity:Counter:marker", 4, Some(4)).await;
    e2e::eventually(Duration::from_secs(60), "the projector goes on after a bad record", || async {
        doc(&ts, &alias, "entity:Counter:marker").await.filter(|d| d["version"] == 4).map(|_| ())
    })
    .await;
    let metrics = durable_projector::metrics::render();
    assert!(metrics.contains("durable_projector_records_total{outcome=\"dead\"}"), "{metrics}");
    projector.stop().await;
}

/// A Typesense server of this test's own (so stopping it disturbs no other test).
struct OwnTypesense {
    child: std::process::Child,
    port: u16,
    data: std::path::PathBuf,
    /// Served over https with the test CA's server certificate.
    tls: bool,
}

impl OwnTypesense {
    fn binary() -> String {
        if let Ok(b) = std::env::var("DURABLE_TYPESENSE_BIN") {
            return b;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services");
        let out =
            std::process::Command::new("bash").arg(script).arg("--typesense-bin").output().expect("scripts/services");
        assert!(out.status.success(), "scripts/services --typesense-bin: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn start(port: u16, data: &std::path::Path, tls: bool) -> std::process::Child {
        std::fs::create_dir_all(data).unwrap();
        let mut command = std::process::Command::new(Self::binary());
        if tls {
            let dir = e2e::test_ca().parent().unwrap().to_owned();
            command
                .arg(format!("--ssl-certificate={}", dir.join("server.pem").display()))
                .arg(format!("--ssl-certificate-key={}", dir.join("server.key").display()));
        }
        command
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--api-key={}", api_key()))
            .args(["--api-address=127.0.0.1", &format!("--api-port={port}"), "--peering-address=127.0.0.1"])
            .arg(format!("--peering-port={}", e2e::free_port()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start typesense")
    }

    async fn new(name: &str) -> Self {
        Self::with_tls(name, false).await
    }

    async fn with_tls(name: &str, tls: bool) -> Self {
        let port = e2e::free_port();
        let data = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&data);
        let child = Self::start(port, &data, tls);
        let me = Self { child, port, data, tls };
        me.wait_healthy().await;
        me
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client of it (trusting the test CA when it speaks https).
    fn client(&self) -> Typesense {
        let ca = self.tls.then(e2e::test_ca);
        Typesense::with_ca(&self.url(), &api_key(), Duration::from_secs(10), ca.as_deref()).expect("client")
    }

    async fn wait_healthy(&self) {
        let ts = self.client();
        e2e::eventually(Duration::from_secs(60), "typesense is healthy", || async { ts.healthy().await.then_some(()) })
            .await;
    }

    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    async fn restart(&mut self) {
        self.child = Self::start(self.port, &self.data, self.tls);
        self.wait_healthy().await;
    }
}

impl Drop for OwnTypesense {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typesense_stopped_and_restarted_mid_run_ends_equal_to_the_committed_state() {
    let prefix = e2e::unique_prefix("ts-restart");
    let mut server = OwnTypesense::new(&prefix).await;
    let processor = InProcess::start(&prefix, 4).await;
    let projector = Projector::start(&prefix, &server.url()).await;
    let ts = ts(&server.url());
    let state = State::connect(&prefix, 4).await;
    let mut client = Client::new(&prefix);
    let counters: Vec<InstanceId> = (0..20).map(|i| InstanceId::entity("Counter", format!("c{i}"))).collect();
    let wave = |client: &mut Client| (0..1000).map(|i| client.signal(&counters[i % 20], "add", 1)).collect::<Vec<_>>();
    let first = wave(&mut client);
    client.send(&first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    let second = wave(&mut client);
    client.send(&second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    let third = wave(&mut client);
    client.send(&third).await;
    let alias = mapping::entity_alias(&prefix, "Counter");
    for c in &counters {
        e2e::eventually(Duration::from_secs(120), &format!("{c} is projected at its final value"), || async {
            let value = state.entity::<Counter>(c).await.map(|c| c.value)?;
            let version = state.record(&c.canonical()).await?.version;
            let d = doc(&ts, &alias, &c.canonical()).await?;
            (value == 150 && d["value"] == value && d["version"] == version).then_some(())
        })
        .await;
    }
    let metrics = durable_projector::metrics::render();
    assert!(!metrics.contains("durable_projector_retries_total 0\n"), "the outage made batches retry: {metrics}");
    projector.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_readers_query_never_shows_an_empty_index() {
    let prefix = e2e::unique_prefix("rebuild");
    let topic = format!("{prefix}.state");
    create_state_topic(&topic).await;
    let p = producer();
    for i in 0..300 {
        produce(&p, &topic, &format!("entity:Counter:r{i}"), 1, Some(i)).await;
    }
    let projector = Projector::start(&prefix, &typesense_url()).await;
    let ts = ts(&typesense_url());
    let alias = mapping::entity_alias(&prefix, "Counter");
    let count = |ts: Typesense, alias: String| async move {
        ts.search(&alias, &[("q", "*"), ("query_by", "key"), ("per_page", "1")])
            .await
            .ok()
            .and_then(|v| v["found"].as_u64())
    };
    e2e::eventually(Duration::from_secs(60), "all 300 are projected", || async {
        (count(ts.clone(), alias.clone()).await == Some(300)).then_some(())
    })
    .await;
    let before = ts.alias(&alias).await.unwrap().expect("alias");
    let reader = {
        let (ts, alias, before) = (ts.clone(), alias.clone(), before.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            loop {
                let found = count(ts.clone(), alias.clone()).await;
                assert_eq!(found, Some(300), "a reader saw {found:?} documents during the rebuild");
                reads += 1;
                if reads > 5 && ts.alias(&alias).await.ok().flatten().is_some_and(|c| c != before) {
                    return reads;
                }
            }
        })
    };
    let mut config = ProjectorConfig::new(&e2e::brokers(), &prefix, &typesense_url(), &api_key());
    config.linger = Duration::from_millis(50);
    let swapped = durable_projector::rebuild(config).await.expect("rebuild");
    assert!(swapped.iter().any(|(a, _)| *a == alias), "{swapped:?}");
    let reads =
        tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader sees the swap").expect("reader");
    assert!(reads > 5, "readers queried throughout ({reads} reads)");
    let after = ts.alias(&alias).await.unwrap().unwrap();
    assert_ne!(after, before);
    assert_eq!(ts.collection(&before).await.unwrap(), None, "the old collection is dropped");
    assert_eq!(count(ts.clone(), alias.clone()).await, Some(300));
    projector.stop().await;
}

// Connections as users have them: a processor, its management API's producer and the projector
// reach Apache Kafka over its SASL_SSL listener (certificates and the SCRAM/PLAIN user made by
// `scripts/kafka/broker`), with no plaintext path in between.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processor_api_and_projector_work_over_sasl_ssl() {
    let prefix = e2e::unique_prefix("sasl");
    let mut config = InProcess::config(&prefix, 4);
    config.kafka = e2e::secured(SaslMechanism::ScramSha512);
    let processor = InProcess::start_with(config).await;

    let mut projector_config = Projector::config(&prefix, &typesense_url());
    projector_config.kafka = e2e::secured(SaslMechanism::Plain);
    let projector = Projector::start_with(projector_config).await;

    // The management API produces the start over the processor's SASL_SSL connection.
    let response = e2e::http_post(
        processor.metrics,
        "/v1/orchestrations/HelloSequence",
        &serde_json::json!({"key": "secured", "input": ["Oslo"]}),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let state = State::connect(&prefix, 4).await;
    let id = "orch:HelloSequence:secured";
    let greetings: Vec<String> = state.output(id, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(greetings, ["Hello Oslo!"]);

    // The projector read the state record over SASL_SSL (PLAIN) and indexed it.
    let ts = ts(&typesense_url());
    let alias = mapping::orchestrations_alias(&prefix);
    let doc = e2e::eventually(Duration::from_secs(60), "the orchestration is indexed as completed", || async {
        ts.document(&alias, id).await.ok().flatten().filter(|d| d["status"] == "completed")
    })
    .await;
    assert_eq!(doc["name"], "HelloSequence");

    projector.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_is_an_error_that_names_what_to_check_and_not_the_password() {
    let prefix = e2e::unique_prefix("sasl-wrong");
    let mut config = InProcess::config(&prefix, 1);
    config.kafka = e2e::secured(SaslMechanism::ScramSha256);
    config.kafka.sasl_password = Some(durable_kafka::Secret::new("not-the-password-4e1f"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        durable_processor::runtime::run(config, e2e::registry(), std::future::pending(), None),
    )
    .await
    .expect("the processor gives up instead of hanging");
    let error = format!("{:#}", outcome.expect_err("authentication fails"));
    assert!(error.contains("DURABLE_KAFKA_SASL"), "{error}");
    assert!(!error.contains("not-the-password-4e1f"), "{error}");
}

/// Typesense over https with a certificate from a CA of its own: the projector (and search,
/// which `durable search` runs) trust it through DURABLE_TYPESENSE_CA; a client that does not
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projector_and_search_work_with_typesense_over_https() {
    let prefix = e2e::unique_prefix("ts-https");
    let server = OwnTypesense::with_tls(&prefix, true).await;
    assert!(server.url().starts_with("https://"));
    let untrusting = ts(&server.url());
    assert!(!untrusting.healthy().await, "a client without the CA refuses the certificate");
    let processor = InProcess::start(&prefix, 2).await;
    let mut config = Projector::config(&prefix, &server.url());
    config.typesense_ca = Some(e2e::test_ca());
    let projector = Projector::start_with(config).await;
    let mut client = Client::new(&prefix);
    let counter = InstanceId::entity("Counter", "over-https");
    let events: Vec<_> = (0..5).map(|_| client.signal(&counter, "add", 1)).collect();
    client.send(&events).await;
    let ts = server.client();
    let alias = mapping::entity_alias(&prefix, "Counter");
    e2e::eventually(Duration::from_secs(60), "the counter is projected over https", || async {
        let d = doc(&ts, &alias, &counter.canonical()).await?;
        (d["value"] == 5).then_some(())
    })
    .await;
    let found = durable_projector::search(&ts, &prefix, "Counter", "*", None, 10).await.expect("search over https");
    assert_eq!(found.len(), 1, "{found:?}");
    projector.stop().await;
    processor.stop().await;
}

/// A bearer token for `user` with `roles`, signed as the authorization test's processor checks.
fn bearer(user: &str, roles: &[&str]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": user, "roles": roles, "aud": "durable-e2e", "iss": "e2e", "exp": now + 600});
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

const JWT_SECRET: &str = "an e2e secret of at least 32 bytes, for HS256";

/// A management API request with an optional bearer token: (status, JSON body).
async fn api(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    let mut request = if method == "GET" { client.get(url) } else { client.post(url).json(&body) };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.timeout(Duration::from_secs(30)).send().await.expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A search-only Typesense key (what an operator gives the processors), made with the admin key.
async fn search_only_key() -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/keys", typesense_url()))
        .header("X-TYPESENSE-API-KEY", api_key())
        .json(&json!({"description": "e2e search-only", "actions": ["documents:search"], "collections": ["*"]}))
        .send()
        .await
        .expect("Typesense answers");
    let key: Value = response.json().await.unwrap();
    key["value"].as_str().expect("a key value").to_owned()
}

/// What `principal`'s scoped search key finds among the Counter documents.
async fn counters_found(
    processor: std::net::SocketAddr,
    prefix: &str,
    token: &str,
    filter: Option<&str>,
) -> Vec<String> {
    let (status, scoped) = api(processor, "POST", "/v1/search/key", Some(token), json!({})).await;
    assert_eq!(status, 200, "{scoped}");
    let ts = Typesense::new(&typesense_url(), scoped["key"].as_str().unwrap(), Duration::from_secs(10)).unwrap();
    let docs = match durable_projector::search(&ts, prefix, "Counter", "*", filter, 100).await {
        Ok(docs) => docs,
        // The projector has not made the Counter collection yet: nothing is found so far.
        Err(durable_projector::typesense::TsError::Refused { status: 404, .. }) => Vec::new(),
        Err(e) => panic!("a search: {e:?}"),
    };
    let mut ids: Vec<String> = docs.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// Authorization end to end on the real servers: alice starts an orchestration and owns the
/// entity it creates; bob is refused (404 on reads, 404/403 on writes, Forbidden dead letters
/// for what reaches the engine); alice shares `read` with bob and he reads, alice revokes and he
/// is refused again; a search with bob's scoped key finds only what he may read; a principal
/// forged on an outside Kafka record grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alice_owns_bob_is_refused_until_shared_and_search_shows_each_only_theirs() {
    use durable_kafka::Secret;
    let prefix = e2e::unique_prefix("authz");
    let mut config = InProcess::config(&prefix, 4);
    config.auth.anonymous = false;
    config.auth.jwt_secrets = vec![Secret::new(JWT_SECRET)];
    config.auth.jwt_audience = Some("durable-e2e".into());
    config.auth.jwt_issuer = Some("e2e".into());
    config.auth.kafka_principal = Some("kafka-ingress".into());
    config.auth.create_limits = Some("Counter=3".into());
    config.typesense_search_key = Some(Secret::new(search_only_key().await));
    let processor = InProcess::start_with(config).await;
    let projector = Projector::start(&prefix, &typesense_url()).await;
    let addr = processor.metrics;
    let (alice, bob, root) = (bearer("alice", &["staff"]), bearer("bob", &[]), bearer("root", &["admin"]));

    // No token, or one that does not verify: 401.
    let (status, body) = api(addr, "GET", "/v1/registry", None, Value::Null).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthenticated")), "{body}");
    let forged = bearer("alice", &[]).replace('.', ".x");
    assert_eq!(api(addr, "GET", "/v1/registry", Some(&forged), Value::Null).await.0, 401);

    // alice starts an Approval that adds to a counter it creates: she owns both.
    let counter = format!("{prefix}-alices");
    let input = json!({"counter": counter, "amount": 5});
    let (status, body) =
        api(addr, "POST", "/v1/orchestrations/Approval", Some(&alice), json!({"key": "a1", "input": input})).await;
    assert_eq!(status, 202, "{body}");
    e2e::eventually(Duration::from_secs(30), "alice's approval started", || async {
        (api(addr, "GET", "/v1/instances/orch:Approval:a1", Some(&alice), Value::Null).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) =
        api(addr, "POST", "/v1/instances/orch:Approval:a1/events/approve", Some(&alice), json!({"payload": true}))
            .await;
    assert_eq!(status, 202);
    let counter_id = format!("entity:Counter:{counter}");
    let counter_path = format!("/v1/instances/{counter_id}");
    e2e::eventually(Duration::from_secs(60), "alice's counter holds 5", || async {
        let (status, body) = api(addr, "GET", &counter_path, Some(&alice), Value::Null).await;
        (status == 200 && body["state"]["value"] == 5).then_some(())
    })
    .await;
    // Another counter of alice's, never shared.
    let (status, _) =
        api(addr, "POST", &format!("/v1/entities/Counter/{prefix}-private/add"), Some(&alice), json!({"input": 1}))
            .await;
    assert_eq!(status, 202);

    // bob may not read either (404, as if they did not exist) nor write to them.
    assert_eq!(api(addr, "GET", "/v1/instances/orch:Approval:a1", Some(&bob), Value::Null).await.0, 404);
    assert_eq!(api(addr, "GET", &counter_path, Some(&bob), Value::Null).await.0, 404);
    let add = format!("/v1/entities/Counter/{counter}/add");
    assert_eq!(api(addr, "POST", &add, Some(&bob), json!({"input": 100})).await.0, 404);
    let share = json!({"action": "share", "user": "bob", "operations": ["read"]});
    assert_eq!(api(addr, "POST", &format!("{counter_path}/access"), Some(&bob), share.clone()).await.0, 404);

    // alice shares read with bob: he reads, but still may not add (403 now that he can see it).
    assert_eq!(api(addr, "POST", &format!("{counter_path}/access"), Some(&alice), share).await.0, 202);
    e2e::eventually(Duration::from_secs(30), "bob reads the shared counter", || async {
        (api(addr, "GET", &counter_path, Some(&bob), Value::Null).await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = api(addr, "POST", &add, Some(&bob), json!({"input": 100})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");

    // Listing and counting (the index) show each only what they may read.
    let private_id = format!("entity:Counter:{prefix}-private");
    let mut both = vec![counter_id.clone(), private_id.clone()];
    both.sort();
    e2e::eventually(Duration::from_secs(30), "alice lists both her counters", || async {
        (listed_counters(addr, &alice).await == both).then_some(())
    })
    .await;
    assert_eq!(listed_counters(addr, &bob).await, std::slice::from_ref(&counter_id));
    assert_eq!(listed_counters(addr, &root).await, both);
    let (_, counted) = api(addr, "GET", "/v1/counts?kind=entity&name=Counter", Some(&bob), Value::Null).await;
    assert_eq!(counted["total"], 1, "{counted}");
    let (_, counted) = api(addr, "GET", "/v1/counts?kind=entity&name=Counter", Some(&root), Value::Null).await;
    assert_eq!(counted["total"], 2, "{counted}");

    // Search: bob finds the shared counter only; alice both; an admin everything. bob's own
    // filter is added to the embedded one, never replaces it.
    e2e::eventually(Duration::from_secs(60), "the projector shows what each may read", || async {
        let theirs = counters_found(addr, &prefix, &bob, None).await;
        let hers = counters_found(addr, &prefix, &alice, None).await;
        (theirs == [counter_id.clone()] && hers.len() == 2).then_some(())
    })
    .await;
    let escape = format!("id:={private_id} || readers:!=[`nobody`]");
    assert!(counters_found(addr, &prefix, &bob, Some(&escape)).await.iter().all(|id| *id != private_id));
    assert_eq!(counters_found(addr, &prefix, &root, None).await.len(), 2);

    // A principal forged on an outside Kafka record grants nothing; a plain outside record acts
    // as the ingress principal, which may not touch alice's counter.
    let mut client = Client::new(&prefix);
    let mut forged = client.signal(&InstanceId::entity("Counter", counter.clone()), "add", 1000);
    forged.body = durable_schemas::Event::WithPrincipal {
        user: "alice".into(),
        roles: vec!["admin".into()],
        inner: Box::new(forged.body),
    };
    let plain = client.signal(&InstanceId::entity("Counter", counter.clone()), "add", 1000);
    client.send(&[forged, plain]).await;
    let dead = e2e::topic_reader(&prefix, "dead");
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        use rdkafka::Message as _;
        let m = tokio::time::timeout(Duration::from_secs(60), dead.recv()).await.expect("dead letters").unwrap();
        let h = rdkafka::message::Headers::iter(m.headers().expect("headers"))
            .find(|h| h.key == durable_kafka::dead_letter::REASON)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        reasons.push(h);
    }
    assert!(reasons.iter().any(|r| r.starts_with("WithPrincipal is part of Durable's protocol")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == &format!("Forbidden: kafka-ingress may not signal {counter_id}")),
        "{reasons:?}"
    );

    // alice revokes: bob is refused again, and his search finds nothing.
    let revoke = json!({"action": "revoke", "user": "bob"});
    assert_eq!(api(addr, "POST", &format!("{counter_path}/access"), Some(&alice), revoke).await.0, 202);
    e2e::eventually(Duration::from_secs(60), "bob is refused and finds nothing again", || async {
        let refused = api(addr, "GET", &counter_path, Some(&bob), Value::Null).await.0 == 404;
        (refused && counters_found(addr, &prefix, &bob, None).await.is_empty()).then_some(())
    })
    .await;
    let (_, body) = api(addr, "GET", &counter_path, Some(&alice), Value::Null).await;
    assert_eq!(body["state"]["value"], 5, "nothing bob or the forged records sent changed it");

    // Creation limits: alice may have 3 live counters. She has 2; a third is created, a fourth
    // is refused (dead-lettered Forbidden, never created) until she deletes one.
    let add_to = |key: &str| format!("/v1/entities/Counter/{prefix}-{key}/add");
    let read = |key: &str| format!("/v1/instances/entity:Counter:{prefix}-{key}");
    assert_eq!(api(addr, "POST", &add_to("third"), Some(&alice), json!({"input": 3})).await.0, 202);
    e2e::eventually(Duration::from_secs(30), "alice's third counter", || async {
        (api(addr, "GET", &read("third"), Some(&alice), Value::Null).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(api(addr, "POST", &add_to("fourth"), Some(&alice), json!({"input": 4})).await.0, 202);
    let over = format!("Forbidden: alice has 3 live Counter instances, the most one user may have (DURABLE_CREATE_LIMITS); entity:Counter:{prefix}-fourth was not created");
    loop {
        use rdkafka::Message as _;
        let m = tokio::time::timeout(Duration::from_secs(60), dead.recv()).await.expect("the refusal").unwrap();
        let reason = rdkafka::message::Headers::iter(m.headers().expect("headers"))
            .find(|h| h.key == durable_kafka::dead_letter::REASON)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if reason.as_deref() == Some(over.as_str()) {
            break;
        }
    }
    assert_eq!(api(addr, "GET", &read("fourth"), Some(&alice), Value::Null).await.0, 404);
    assert_eq!(api(addr, "GET", &read("fourth"), Some(&root), Value::Null).await.0, 404, "not created");
    let delete = format!("/v1/entities/Counter/{prefix}-private/delete");
    assert_eq!(api(addr, "POST", &delete, Some(&alice), json!({"input": null})).await.0, 202);
    e2e::eventually(Duration::from_secs(60), "the fourth counter once a place is free", || async {
        let _ = api(addr, "POST", &add_to("fourth"), Some(&alice), json!({"input": 4})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = api(addr, "GET", &read("fourth"), Some(&alice), Value::Null).await;
        (status == 200 && body["state"]["value"].as_i64() >= Some(4)).then_some(())
    })
    .await;
    projector.stop().await;
    processor.stop().await;
}

/// The Counter instances `token`'s principal sees in `GET /v1/instances`, sorted.
async fn listed_counters(addr: std::net::SocketAddr, token: &str) -> Vec<String> {
    let (status, body) = api(addr, "GET", "/v1/instances?kind=entity&name=Counter", Some(token), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> =
        body["instances"].as_array().unwrap().iter().map(|i| i["instance"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// Retention end to end: finished orchestrations and deleted entities are purged by their
/// retention timers, the projector removes their documents on the tombstones, and the Redis
/// memory of the deployment returns to what it was before they existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_purges_finished_instances_their_documents_and_their_memory() {
    let prefix = e2e::unique_prefix("retention");
    let mut config = InProcess::config(&prefix, 4);
    config.retention = Some("3s".into());
    config.purge_grace = Duration::from_secs(1);
    let processor = InProcess::start_with(config).await;
    let projector = Projector::start(&prefix, &typesense_url()).await;
    // Baseline: what the deployment keeps with no instance (epochs, applied marks, timer
    // sequence numbers, the secret) — after a first round of instances came and went, so that
    // every partition has used its timers.
    let mut client = Client::new(&prefix);
    let warm: Vec<_> = (0..40).map(|i| client.start("HelloSequence", &format!("w{i}"), vec!["w"])).collect();
    client.send(&warm).await;
    e2e::eventually(Duration::from_secs(60), "the first round is stored", || async {
        (e2e::redis_instance_keys(&prefix).await >= 30).then_some(())
    })
    .await;
    let (base_keys, baseline) = e2e::eventually(Duration::from_secs(60), "the first round is purged", || async {
        let (keys, bytes) = e2e::redis_footprint(&prefix).await;
        let stored = e2e::redis_instance_keys(&prefix).await;
        (stored == 0 && keys > 0).then_some((keys, bytes))
    })
    .await;
    let (orchestrations, entities) = (200, 50);
    let mut events = Vec::new();
    for i in 0..orchestrations {
        events.push(client.start("HelloSequence", &format!("r{i}"), vec![format!("city{i}")]));
    }
    for i in 0..entities {
        let counter = InstanceId::entity("Counter", format!("r{i}"));
        events.push(client.signal(&counter, "add", 1));
        events.push(client.signal(&counter, "delete", ()));
    }
    client.send(&events).await;
    let orchestrations_alias = mapping::orchestrations_alias(&prefix);
    // Every orchestration is projected at some point (upserted, then removed on its tombstone).
    let (keys, peak) = e2e::eventually(Duration::from_secs(60), "the instances are stored", || async {
        let (keys, bytes) = e2e::redis_footprint(&prefix).await;
        (keys >= base_keys + orchestrations).then_some((keys, bytes))
    })
    .await;
    assert!(peak > baseline + orchestrations as u64 * 300, "{keys} keys, {peak} bytes against {baseline}");
    let (left, bytes) = e2e::eventually(Duration::from_secs(90), "retention brings memory back", || async {
        let (keys, bytes) = e2e::redis_footprint(&prefix).await;
        (keys <= base_keys && bytes <= baseline + 512).then_some((keys, bytes))
    })
    .await;
    eprintln!(
        "retention: baseline {baseline} bytes in {base_keys} keys; peak {peak} bytes in {keys} keys; after {bytes} bytes in {left} keys"
    );
    let docs = e2e::eventually(Duration::from_secs(60), "the documents are removed", || async {
        let docs = e2e::typesense_documents(&orchestrations_alias).await;
        docs.is_empty().then_some(docs)
    })
    .await;
    assert!(docs.is_empty());
    let listed = e2e::http_get(processor.metrics, "/v1/counts").await;
    let body = listed.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let counts: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {listed}"));
    assert_eq!(counts["total"], 0, "nothing is left in the index: {counts}");
    projector.stop().await;
    processor.stop().await;
}
