//! Helpers for end-to-end tests against the real broker (`DURABLE_BROKERS`, default
//! 127.0.0.1:9092) and Redis (`DURABLE_REDIS_URL`, default redis://127.0.0.1:6379). Every test
//! uses its own prefix (topics, group, Redis keys). If a server does not answer, the test fails
//! with a message saying which one — `scripts/services` starts both.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durable_processor::config::ProcessorConfig;
use durable_processor::history::{InstanceRecord, OrchestrationStatus};
use durable_processor::id::InstanceId;
use durable_processor::store::{RedisStore, Store};
use durable_processor::{examples, runtime, Registry};
use durable_schemas::{Envelope, Event, Failure, Payload};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// The broker under test.
pub fn brokers() -> String {
    std::env::var("DURABLE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The Redis under test.
pub fn redis_url() -> String {
    std::env::var("DURABLE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Typesense under test.
pub fn typesense_url() -> String {
    std::env::var("DURABLE_TYPESENSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8108".into())
}

/// Its admin API key.
pub fn typesense_api_key() -> String {
    std::env::var("DURABLE_TYPESENSE_API_KEY").unwrap_or_else(|_| "durable-test-key".into())
}

/// Every document of a Typesense collection (or alias), by id; empty when it does not exist.
pub async fn typesense_documents(collection: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/collections/{collection}/documents/export", typesense_url()))
        .header("X-TYPESENSE-API-KEY", typesense_api_key())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("Typesense answers");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Default::default();
    }
    assert!(response.status().is_success(), "export of {collection}: {}", response.status());
    let text = response.text().await.expect("the export");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let doc: serde_json::Value = serde_json::from_str(l).expect("a JSON document");
            (doc["id"].as_str().expect("an id").to_owned(), doc)
        })
        .collect()
}

/// A connection to the Redis under test, patient enough for a machine busy with the suite
/// (redis-rs's default timeouts are a second or less).
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(redis_url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis answers (scripts/services starts it)")
}

/// The keys of `prefix` in the Redis under test and the bytes they take (`MEMORY USAGE`).
pub async fn redis_footprint(prefix: &str) -> (usize, u64) {
    let mut conn = redis_connection().await;
    let (mut cursor, mut keys) = (0u64, Vec::<String>::new());
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut bytes = 0;
    for key in &keys {
        let used: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut conn).await.expect("MEMORY USAGE");
        bytes += used.unwrap_or(0);
    }
    (keys.len(), bytes)
}

/// How many instance records of `prefix` the Redis under test holds.
pub async fn redis_instance_keys(prefix: &str) -> usize {
    let mut conn = redis_connection().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:{{p*}}:s:*")).query_async(&mut conn).await.expect("KEYS");
    keys.len()
}

/// A binary of another package of the workspace, next to this test's own (`cargo test
/// --workspace` builds every package's binaries before it runs a test). Panics when it is
/// missing, naming the command that builds it.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this test's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).expect("a target directory").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// Where `scripts/services` keeps tools, certificates and the test broker (`DURABLE_CACHE`).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("DURABLE_CACHE").map(Into::into).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/durable")
    })
}

/// The test broker's SASL_SSL listener (`DURABLE_SASL_BROKERS`, default 127.0.0.1:9094) with
/// `mechanism`, the user `scripts/kafka/broker` made and its CA: what a user of a secured
/// cluster configures. Panics, saying what to run, when the credentials are missing.
pub fn secured(mechanism: durable_kafka::SaslMechanism) -> durable_kafka::KafkaConnection {
    let dir = cache_dir().join("kafka-tls");
    let env = std::fs::read_to_string(dir.join("sasl.env")).unwrap_or_else(|e| {
        panic!(
            "no SASL credentials in {}: run scripts/services, which starts Kafka with a SASL_SSL listener ({e})",
            dir.display()
        )
    });
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key} missing from {}/sasl.env", dir.display()))
            .to_owned()
    };
    let mut k = durable_kafka::KafkaConnection::plaintext(
        &std::env::var("DURABLE_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into()),
    );
    k.security_protocol = durable_kafka::SecurityProtocol::SaslSsl;
    k.sasl_mechanism = Some(mechanism);
    k.sasl_username = Some(value("KAFKA_SASL_USERNAME"));
    k.sasl_password = Some(durable_kafka::Secret::new(value("KAFKA_SASL_PASSWORD")));
    k.ssl_ca = Some(dir.join("ca.pem"));
    k
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("e2e-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

async fn boom(_: ()) -> Result<(), Failure> {
    panic!("activity exploded on purpose")
}

/// An activity that returns `n` bytes of text (to make results too large on purpose).
async fn sized(n: usize) -> Result<String, Failure> {
    Ok("s".repeat(n))
}

/// Calls `Sized(n)` and says how it went: the length it got, or the failure.
async fn calls_sized(ctx: durable_processor::OrchestrationContext, n: usize) -> Result<String, Failure> {
    match ctx.call_activity::<_, String>("Sized", n).await {
        Ok(s) => Ok(format!("{} bytes", s.len())),
        Err(f) => Ok(format!("{}: {}", f.kind, f.message)),
    }
}

async fn hang(_: ()) -> Result<(), Failure> {
    std::future::pending::<()>().await;
    Ok(())
}

async fn calls_hang(ctx: durable_processor::OrchestrationContext, (): ()) -> Result<String, Failure> {
    match ctx.call_activity::<_, ()>("Hang", ()).await {
        Ok(()) => Ok("returned?".into()),
        Err(f) => Ok(format!("{}: {}", f.kind, f.message)),
    }
}

async fn calls_hang_briefly(ctx: durable_processor::OrchestrationContext, (): ()) -> Result<String, Failure> {
    let options = durable_processor::ActivityOptions::default().timeout(Duration::from_millis(200));
    match ctx.call_activity_with_options::<_, ()>("Hang", (), options).await {
        Ok(()) => Ok("returned?".into()),
        Err(f) => Ok(format!("{}: {}", f.kind, f.message)),
    }
}

/// How many `Patient` calls started, and how many saw their cancellation.
pub static PATIENT: [std::sync::atomic::AtomicU32; 2] =
    [std::sync::atomic::AtomicU32::new(0), std::sync::atomic::AtomicU32::new(0)];

/// Waits up to two minutes, or until it is cancelled (its caller no longer waits).
async fn patient(ctx: durable_processor::ActivityContext, (): ()) -> Result<String, Failure> {
    use std::sync::atomic::Ordering;
    PATIENT[0].fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        () = ctx.cancelled() => {
            PATIENT[1].fetch_add(1, Ordering::SeqCst);
            Ok("cancelled".into())
        }
        () = tokio::time::sleep(Duration::from_secs(120)) => Ok("waited".into()),
    }
}

async fn calls_patient(ctx: durable_processor::OrchestrationContext, (): ()) -> Result<String, Failure> {
    ctx.call_activity("Patient", ()).await
}

/// Runs `ms` milliseconds in steps of 200 ms, heartbeating after each.
async fn beats(ctx: durable_processor::ActivityContext, ms: u64) -> Result<u64, Failure> {
    for _ in 0..ms / 200 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctx.heartbeat();
    }
    Ok(ctx.heartbeats())
}

async fn calls_beats(ctx: durable_processor::OrchestrationContext, ms: u64) -> Result<String, Failure> {
    match ctx.call_activity::<_, u64>("Beats", ms).await {
        Ok(n) => Ok(format!("finished after {n} heartbeats")),
        Err(f) => Ok(format!("{}: {}", f.kind, f.message)),
    }
}

async fn calls_boom(ctx: durable_processor::OrchestrationContext, (): ()) -> Result<String, Failure> {
    match ctx.call_activity::<_, ()>("Boom", ()).await {
        Ok(()) => Ok("no panic?".into()),
        Err(f) => Ok(format!("{}: {}", f.kind, f.message)),
    }
}

/// Whether `Fixable` succeeds: a cause an operator fixes before a rewind.
pub static FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn fixable((): ()) -> Result<String, Failure> {
    if FIXED.load(std::sync::atomic::Ordering::SeqCst) {
        Ok("and fixed".into())
    } else {
        Err(Failure::new("NotYet", "the cause is not fixed yet"))
    }
}

async fn calls_fixable(ctx: durable_processor::OrchestrationContext, (): ()) -> Result<String, Failure> {
    let hello: String = ctx.call_activity("SayHello", "Rome").await?;
    let fixed: String = ctx.call_activity("Fixable", ()).await?;
    Ok(format!("{hello} {fixed}"))
}

/// An entity that keeps whatever text it is given (to make large states on purpose).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Blob {
    /// The text.
    pub data: String,
}

/// The handlers of the end-to-end tests: the bundled examples, a panicking activity (`Boom`,
/// called by `CallsBoom`), one that fails until [`FIXED`] (`Fixable`, called by `CallsFixable`
/// after `SayHello`), one that never returns (`Hang`, called by `CallsHang`, and by
/// `CallsHangBriefly` with a 200 ms timeout of its own), one that runs
/// long but heartbeats (`Beats`, called by `CallsBeats`), one that returns as many bytes as asked
/// (`Sized`, called by `CallsSized`) and the `Blob` entity (operation `set`).
pub fn registry() -> Registry {
    let blob = durable_processor::EntityType::<Blob>::new().operation("set", |b: &mut Blob, _ctx, data: String| {
        b.data = data;
        Ok(b.data.len())
    });
    examples::register(Registry::new())
        .activity("Boom", boom)
        .orchestration("CallsBoom", calls_boom)
        .activity("Fixable", fixable)
        .orchestration("CallsFixable", calls_fixable)
        .activity("Hang", hang)
        .orchestration("CallsHang", calls_hang)
        .orchestration("CallsHangBriefly", calls_hang_briefly)
        .activity_with_context("Beats", beats)
        .orchestration("CallsBeats", calls_beats)
        .activity_with_context("Patient", patient)
        .orchestration("CallsPatient", calls_patient)
        .activity("Sized", sized)
        .orchestration("CallsSized", calls_sized)
        .entity("Blob", blob)
}

/// A processor running in this process.
pub struct InProcess {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where `/metrics` and `/status` are served.
    pub metrics: SocketAddr,
}

impl InProcess {
    /// Start one with `partitions` partitions under `prefix`.
    pub async fn start(prefix: &str, partitions: i32) -> Self {
        Self::start_with(Self::config(prefix, partitions)).await
    }

    /// The configuration [`InProcess::start`] runs with, to change before [`InProcess::start_with`].
    pub fn config(prefix: &str, partitions: i32) -> ProcessorConfig {
        let mut config = ProcessorConfig::new(&brokers(), &redis_url(), prefix);
        config.partitions = partitions;
        // E2E_KAFKA_OPTIONS=key=value,… reaches in-process processors too (experiments, bench).
        for kv in std::env::var("E2E_KAFKA_OPTIONS").unwrap_or_default().split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv.split_once('=').expect("E2E_KAFKA_OPTIONS items are key=value");
            config.kafka.options.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        config
    }

    /// Start one with `config`.
    pub async fn start_with(config: ProcessorConfig) -> Self {
        fail_fast_on_panic();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(runtime::run(
            config,
            registry(),
            async {
                let _ = rx.await;
            },
            Some(ready_tx),
        ));
        let metrics = match ready_rx.await {
            Ok(addr) => addr,
            Err(_) => panic!("processor did not start: {:?}", task.await),
        };
        Self { shutdown: Some(tx), task, metrics }
    }

    /// Stop it and wait for the clean shutdown.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("processor task").expect("clean shutdown");
    }
}

/// A test that fails beside a running processor would hang: dropping the test's runtime waits
/// for the processor's blocking threads, which nothing stops any more. So once per process a
/// panic hook writes a test thread's panic to the real stderr (the test harness would keep it in
/// its capture, never printed) and, if the process is still alive 30 s later, exits with 101 —
/// the exit code of a failed `cargo test`.
fn fail_fast_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            use std::io::Write as _;
            // Only a test's own thread failing ends the test: activities and orchestrations
            // that panic on purpose do so on the runtime's workers, where the engine catches it.
            let thread = std::thread::current();
            if thread.name().is_none_or(|name| name.starts_with("tokio")) {
                return previous(info);
            }
            let _ = writeln!(std::io::stderr(), "test panicked: {info}");
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(30));
                let _ = writeln!(std::io::stderr(), "the failed test did not end within 30 s: exiting with 101");
                std::process::exit(101);
            });
            previous(info);
        }));
    });
}

/// A consumer of `<prefix>.<topic>` from its beginning, in a group of its own.
pub fn topic_reader(prefix: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{prefix}-{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&format!("{prefix}.{topic}")]).expect("subscribe");
    consumer
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// How long [`Process::terminate`] waits for the exit: the processor's own bound
/// ([`durable_processor::runtime::STOP_GRACE`]) and some slack.
pub const STOP_WITHIN: Duration = Duration::from_secs(40);

/// A processor running as a child process (the `test-processor` binary).
pub struct Process {
    /// The child.
    pub child: Child,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

impl Process {
    /// Spawn `binary` (from `env!("CARGO_BIN_EXE_test-processor")`).
    pub fn spawn(binary: &str, prefix: &str, partitions: i32, log: &std::path::Path) -> Self {
        Self::spawn_with(binary, prefix, partitions, log, &[])
    }

    /// [`Process::spawn`] with more environment variables (they win over the defaults).
    pub fn spawn_with(
        binary: &str,
        prefix: &str,
        partitions: i32,
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(binary)
            .env("DURABLE_BROKERS", brokers())
            .env("DURABLE_REDIS_URL", redis_url())
            .env("DURABLE_PREFIX", prefix)
            .env("DURABLE_GROUP", format!("{prefix}-processors"))
            .env("DURABLE_PARTITIONS", partitions.to_string())
            .env("DURABLE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("DURABLE_LOG", std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()))
            .env("DURABLE_KAFKA_OPTIONS", std::env::var("E2E_KAFKA_OPTIONS").unwrap_or_default())
            .env("DURABLE_ANONYMOUS", "true")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn test-processor");
        Self { child, metrics: format!("127.0.0.1:{port}").parse().expect("addr") }
    }

    /// The projector binary (built with the workspace, see [`workspace_binary`]) projecting
    /// `prefix` into the Typesense of [`typesense_url`].
    pub fn spawn_projector(prefix: &str, log: &std::path::Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(workspace_binary("projector"))
            .env("DURABLE_BROKERS", brokers())
            .env("DURABLE_PREFIX", prefix)
            .env("DURABLE_PROJECTOR_GROUP", format!("{prefix}-projector"))
            .env("DURABLE_TYPESENSE_URL", typesense_url())
            .env("DURABLE_TYPESENSE_API_KEY", typesense_api_key())
            .env("DURABLE_PROJECTOR_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("DURABLE_LOG", std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()))
            .env("DURABLE_KAFKA_OPTIONS", std::env::var("E2E_KAFKA_OPTIONS").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the projector");
        Self { child, metrics: format!("127.0.0.1:{port}").parse().expect("addr") }
    }

    /// Whether it answers `/status` and owns at least one partition.
    pub async fn owns_partitions(&self) -> bool {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(self.metrics)).await {
            Ok(Ok(_)) => {
                let status = http_get(self.metrics, "/status").await;
                status.contains("\"partitions\":[") && !status.contains("\"partitions\":[]")
            }
            _ => false,
        }
    }

    /// SIGTERM: a clean stop. Panics (after a SIGKILL) when the process has not exited within
    /// [`STOP_WITHIN`], or exited with a failure code: a processor must always stop when asked.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let asked = Instant::now();
        loop {
            match self.child.try_wait().expect("wait for the process") {
                Some(status) => {
                    assert!(status.success(), "the process exited with {status} after SIGTERM (see its log)");
                    return;
                }
                None if asked.elapsed() > STOP_WITHIN => {
                    self.kill();
                    panic!("the process did not exit within {STOP_WITHIN:?} of SIGTERM (see its log)");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL: no goodbye, no offset commit, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a path from a `/metrics`-style address.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await
}

/// POST a JSON body to a path of the management API; the whole response (status line first).
pub async fn http_post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> String {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, &request).await
}

async fn http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP server");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{addr} did not answer within 30 s: {}", request.lines().next().unwrap_or_default()))
}

/// A client producing events like any Kafka client would.
pub struct Client {
    producer: FutureProducer,
    topic: String,
    sent: u64,
    prefix: String,
}

impl Client {
    /// A client for `<prefix>.events` whose producer lingers 2 ms to batch.
    pub fn new(prefix: &str) -> Self {
        Self::with_linger(prefix, 2)
    }

    /// A client whose producer holds records back `linger_ms` to batch them (0: sends at once,
    /// like the management API's producer).
    pub fn with_linger(prefix: &str, linger_ms: u32) -> Self {
        Self::connect(prefix, &brokers(), linger_ms)
    }

    /// A client of the brokers at `brokers`.
    pub fn connect(prefix: &str, brokers: &str, linger_ms: u32) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", linger_ms.to_string())
            .create()
            .expect("producer");
        Self { producer, topic: format!("{prefix}.events"), sent: 0, prefix: prefix.to_owned() }
    }

    /// The prefix this client produces under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An envelope from this client.
    pub fn event(&mut self, target: &str, body: Event) -> Envelope {
        self.sent += 1;
        let mut e = Envelope::new(format!("{}-client-{}", self.prefix, self.sent), target, 0, body);
        e.source = Some("client:e2e".into());
        e
    }

    /// Start orchestration `name` with `key`.
    pub fn start<I: Serialize>(&mut self, name: &str, key: &str, input: I) -> Envelope {
        let target = InstanceId::orchestration(name, key).canonical();
        self.event(&target, Event::StartOrchestration { input: Payload::json(&input).expect("json") })
    }

    /// Signal `op` to an entity.
    pub fn signal<I: Serialize>(&mut self, entity: &InstanceId, op: &str, input: I) -> Envelope {
        let input = Payload::json(&input).expect("json");
        self.event(&entity.canonical(), Event::EntityOperation { operation: op.into(), input })
    }

    /// Raise an event on an orchestration.
    pub fn raise<I: Serialize>(&mut self, target: &str, name: &str, payload: I) -> Envelope {
        let payload = Payload::json(&payload).expect("json");
        self.event(target, Event::RaiseEvent { name: name.into(), payload })
    }

    /// Produce envelopes (key = target) and wait for the acknowledgements.
    pub async fn send(&self, envelopes: &[Envelope]) {
        let mut acks = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            acks.push(self.enqueue(e).await);
        }
        for ack in acks {
            acknowledged(ack).await;
        }
    }

    /// Hand one envelope to the producer without waiting for its acknowledgement (an open-loop
    /// sender must not wait); await the result with [`acknowledged`].
    pub async fn enqueue(&self, e: &Envelope) -> rdkafka::producer::DeliveryFuture {
        let bytes = e.encode();
        loop {
            match self.producer.send_result(FutureRecord::to(&self.topic).key(e.target.as_bytes()).payload(&bytes)) {
                Ok(ack) => return ack,
                Err((e, _)) => {
                    assert!(
                        format!("{e}").contains("Queue full"),
                        "produce failed: {e}: is the broker running? (DURABLE_BROKERS)"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Produce raw bytes under `key` with Kafka `headers`.
    pub async fn send_raw_with_headers(&self, key: &str, bytes: &[u8], headers: &[(&str, &[u8])]) {
        let headers = headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
            h.insert(rdkafka::message::Header { key, value: Some(*value) })
        });
        self.producer
            .send(FutureRecord::to(&self.topic).key(key).payload(bytes).headers(headers), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }

    /// Produce raw bytes under `key`.
    pub async fn send_raw(&self, key: &str, bytes: &[u8]) {
        self.producer
            .send(FutureRecord::to(&self.topic).key(key).payload(bytes), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }
}

/// Wait for a produce's acknowledgement; panics if the broker refused the record.
pub async fn acknowledged(ack: rdkafka::producer::DeliveryFuture) {
    ack.await.expect("delivery").unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
}

/// Read instances straight from Redis.
pub struct State {
    store: RedisStore,
    partitions: u32,
}

impl State {
    /// Connect to the Redis under test.
    pub async fn connect(prefix: &str, partitions: u32) -> Self {
        let store = RedisStore::connect(&redis_url(), prefix).await.unwrap_or_else(|e| panic!("{e}"));
        Self { store, partitions }
    }

    /// The record of an instance.
    pub async fn record(&self, id: &str) -> Option<InstanceRecord> {
        let p = InstanceId::parse(id).expect("valid id").partition(self.partitions);
        let stored = self.store.load(p, &[id.to_owned()]).await.expect("redis").remove(0)?;
        Some(InstanceRecord::from_blob(&stored.blob).expect("readable blob"))
    }

    /// An orchestration's output once it completes (panics after `timeout`).
    pub async fn output(&self, id: &str, timeout: Duration) -> Payload {
        eventually(timeout, &format!("{id} completes"), || async {
            match self.record(id).await?.orchestration()?.status.clone() {
                OrchestrationStatus::Completed { output } => Some(output),
                OrchestrationStatus::Running => None,
                other => panic!("{id} finished as {other:?}"),
            }
        })
        .await
    }

    /// An entity's state, decoded.
    pub async fn entity<T: serde::de::DeserializeOwned>(&self, id: &InstanceId) -> Option<T> {
        self.record(&id.canonical()).await?.entity()?.state.as_ref()?.decode().ok()
    }
}

/// The usual start of an end-to-end test: a processor in this process under a fresh prefix,
/// a client for it and a reader of its state.
pub async fn setup(name: &str, partitions: i32) -> (InProcess, Client, State) {
    setup_with(name, partitions, |_| {}).await
}

/// [`setup`] with a processor whose configuration `configure` changed first.
pub async fn setup_with(
    name: &str,
    partitions: i32,
    configure: impl FnOnce(&mut ProcessorConfig),
) -> (InProcess, Client, State) {
    let prefix = unique_prefix(name);
    let mut config = InProcess::config(&prefix, partitions);
    configure(&mut config);
    let processor = InProcess::start_with(config).await;
    (processor, Client::new(&prefix), State::connect(&prefix, partitions as u32).await)
}

/// Poll `check` every 50 ms until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Apache Kafka broker of a test's own (`scripts/kafka/broker` on free ports), for tests that
/// stop, freeze or reconfigure the broker; killed when dropped.
pub struct Broker {
    port: u16,
    pid: u32,
}

impl Broker {
    /// Start one with its config, data and log under `dir` (wiped), and wait until it answers.
    pub fn start(dir: &std::path::Path) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka/broker");
        let port = loop {
            let port = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let out = Command::new(&script).arg(dir).arg(port.to_string()).output().expect("run scripts/kafka/broker");
        assert!(out.status.success(), "the test broker did not start: {}", String::from_utf8_lossy(&out.stderr));
        let pid = std::fs::read_to_string(dir.join("kafka.pid")).expect("kafka.pid").trim().parse().expect("a pid");
        Self { port, pid }
    }

    /// Its bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Send the broker's JVM a signal (`STOP`, `CONT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid.to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.pid.to_string()).status();
        let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
    }
}

/// A redis-server of a test's own (on a free port, with the given extra arguments), for tests
/// that need other server settings than the shared one; killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    tls: bool,
    args: Vec<String>,
    dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisServer {
    /// Start one and wait until it answers (panics after 10 s). A port taken between choosing
    /// and binding it (by another test's process) is replaced by another.
    pub fn start(args: &[&str]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::spawn(port, false, &[&["--port", &port.to_string()], args].concat()) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Start one that only speaks TLS, with the test CA's server certificate (the one
    /// `scripts/kafka/broker` made for the SASL_SSL listener; see [`test_ca`]).
    pub fn start_tls(args: &[&str]) -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_tls(args) {
                return server;
            }
        }
        panic!("redis-server did not start with TLS on any of 5 free ports");
    }

    fn try_tls(args: &[&str]) -> Option<Self> {
        let port = free_port();
        let tls = cache_dir().join("kafka-tls");
        let path = |f: &str| tls.join(f).to_str().expect("utf-8 path").to_owned();
        let (cert, key, ca) = (path("server.pem"), path("server.key"), test_ca());
        let tls_args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            ca.to_str().expect("utf-8 path"),
            "--tls-auth-clients",
            "no",
        ];
        Self::spawn(port, true, &[&tls_args[..], args].concat())
    }

    /// `None` if it exited before answering (its port was taken).
    fn spawn(port: u16, tls: bool, args: &[&str]) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("durable-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Self::run(&dir, &args);
        let mut server = Self { child, port, tls, args, dir: TempDir(dir) };
        server.wait_until_it_answers().then_some(server)
    }

    fn run(dir: &std::path::Path, args: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (scripts/services installs it)")
    }

    /// Wait until this server (not another process on its port) answers; false if it exited.
    fn wait_until_it_answers(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if self.child.try_wait().expect("wait for redis-server").is_some() {
                return false;
            }
            if self.answers() {
                return true;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PING answered with PONG (TLS: a connection accepted while the child runs).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Where it keeps its files (its append-only file, if it keeps one).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// SIGKILL it: no goodbye, no final write (what it fsynced is all that is left).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port and directory (so from its append-only file, if it keeps
    /// one), and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::run(&self.dir.0, &self.args);
        assert!(self.wait_until_it_answers(), "redis-server did not start again on port {}", self.port);
    }

    /// Its URL (`rediss://` for TLS, with `credentials` as `user:password` if given).
    pub fn url_as(&self, credentials: Option<&str>) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = credentials.map(|c| format!("{c}@")).unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}", self.port)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.url_as(None)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test CA's certificate (made by `scripts/kafka/broker`, which `scripts/services` runs).
pub fn test_ca() -> std::path::PathBuf {
    let ca = cache_dir().join("kafka-tls").join("ca.pem");
    assert!(ca.exists(), "no test CA at {}: run scripts/services", ca.display());
    ca
}

/// The JSON body of an HTTP response (after its headers).
pub fn json_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}
