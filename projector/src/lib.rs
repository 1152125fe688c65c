//! The projector: Durable's committed-state feed (`<prefix>.state`) into Typesense.
//!
//! A consumer group reads the feed; records are gathered into batches (`--batch`, `--linger`),
//! mapped to documents ([`mapping`]), written with Typesense's bulk import, and only then are the
//! batch's Kafka offsets committed. A crash redelivers at most the uncommitted batches.
//!
//! # The version guard
//! Every document carries the `version` of the state it shows, and versions only grow per
//! instance. Before writing, the projector knows the version each target document has in
//! Typesense — from its cache of what it wrote, or, for an id it has not seen since it started
//! (or since a rebalance, which clears the cache), by reading the document from Typesense. A
//! record whose version is not newer is skipped. Since the version lives in Typesense itself, the
//! guard holds across restarts, redeliveries and duplicate or out-of-order records. (Two
//! projectors could both own a partition for a moment during a rebalance; the feed of one
//! instance is in order, so the last writer still ends on the newest state once the handover
//! completes.) A deleted entity's document is removed, and so is a purged instance's on its
//! tombstone (the key with a null value); a redelivered older record can bring it back only
//! until the redelivery reaches the deletion again, which follows it in the feed.
//!
//! # Failures
//! Typesense down or slow: the batch is retried with backoff (1 s doubling to 10 s) — nothing is
//! committed, skipped or reordered, and the consumer simply stops fetching. A document Typesense
//! rejects, or a record that is not a state record, is counted, logged with the reason and sent
//! to `<prefix>.dead` (headers `durable.reason`, `durable.component=projector`), and the rest of
//! the batch goes on.
//!
//! # Rebuild
//! `projector rebuild` reads the feed from the beginning with a fresh consumer group into new
//! collections (`<alias>_<generation>`), and when it has caught up, points every alias at its
//! new collection and drops the old one. Readers query aliases, so they see the old index until
//! the swap and the full new one after it — never an empty one. Schema changes (`--schemas`) take
//! effect through a rebuild.

pub mod cli;
pub mod config;
pub mod mapping;
pub mod metrics;
pub mod typesense;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use durable_kafka::dead_letter;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tracing::{info, warn};

pub use config::ProjectorConfig;
use mapping::{Action, Mapped, SchemaConfig, StateRecord};
use metrics::METRICS;
use typesense::{TsError, Typesense};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Input {
    /// Partition of `<prefix>.state`.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key (the instance id).
    pub key: Option<Vec<u8>>,
    /// Record value; `None`: a purged instance's tombstone.
    pub payload: Option<Vec<u8>>,
}

/// The version a tombstone stands for: it removes the document whatever version it had.
const TOMBSTONE: u64 = u64::MAX;

/// The mapping of a tombstone (a purged instance): remove its document. `None` for a key that
/// names no projected instance.
fn tombstone(prefix: &str, key: &[u8]) -> Option<Mapped> {
    let id = std::str::from_utf8(key).ok()?;
    let mut parts = id.splitn(3, ':');
    let (kind, name, _) = (parts.next()?, parts.next()?, parts.next()?);
    let alias = match kind {
        "orch" => mapping::orchestrations_alias(prefix),
        "entity" => mapping::entity_alias(prefix, name),
        _ => return None,
    };
    Some(Mapped { alias, id: id.to_owned(), version: TOMBSTONE, action: Action::Delete })
}

/// A document waiting for its import: (id, version, document).
type Pending = (String, u64, Value);

/// Where documents go: through the aliases (normal run) or into a rebuild's new collections.
#[derive(Debug, Clone)]
enum Mode {
    Live,
    Rebuild { generation: String },
}

/// The batch writer: version guard, collections, Typesense, dead letters.
pub struct Projector {
    config: ProjectorConfig,
    ts: Typesense,
    schemas: SchemaConfig,
    producer: FutureProducer,
    mode: Mode,
    /// Document id → version known to be in Typesense.
    versions: HashMap<String, u64>,
    /// Alias → the name documents are written to (the alias itself, or a rebuild's collection).
    targets: HashMap<String, String>,
}

impl Projector {
    fn new(config: ProjectorConfig, mode: Mode) -> anyhow::Result<Self> {
        let ts = Typesense::with_ca(
            &config.typesense_url,
            &config.typesense_api_key,
            Duration::from_secs(10),
            config.typesense_ca.as_deref(),
        )?;
        let schemas = config.schema_config()?;
        let producer = config.client()?.create().context("cannot create the Kafka producer")?;
        Ok(Self { config, ts, schemas, producer, mode, versions: HashMap::new(), targets: HashMap::new() })
    }

    /// Forget cached versions (after a rebalance: another projector may have written since).
    pub fn forget(&mut self) {
        self.versions.clear();
    }

    fn type_name(alias: &str, prefix: &str) -> String {
        let p = mapping::orchestrations_alias(prefix);
        if alias == p {
            "orchestrations".into()
        } else {
            alias.trim_start_matches(&mapping::entity_alias(prefix, "")).to_owned()
        }
    }

    /// The name to write `alias`'s documents to, creating collection and alias on first use.
    async fn target(&mut self, alias: &str) -> Result<String, TsError> {
        if let Some(t) = self.targets.get(alias) {
            return Ok(t.clone());
        }
        let type_name = Self::type_name(alias, &self.config.prefix);
        let target = match &self.mode {
            Mode::Live => {
                if self.ts.alias(alias).await?.is_none() {
                    let collection = format!("{alias}_{}", now_ms());
                    self.ts.create_collection(&mapping::schema_for(&self.schemas, &type_name, &collection)).await?;
                    self.ts.set_alias(alias, &collection).await?;
                    info!(alias, collection, "created collection");
                }
                alias.to_owned()
            }
            Mode::Rebuild { generation } => {
                let collection = format!("{alias}_{generation}");
                self.ts.create_collection(&mapping::schema_for(&self.schemas, &type_name, &collection)).await?;
                collection
            }
        };
        self.targets.insert(alias.to_owned(), target.clone());
        Ok(target)
    }

    async fn dead(&self, input: &Input, reason: &str) {
        warn!(partition = input.partition, offset = input.offset, reason, "state record not projected");
        let topic = self.config.dead_topic();
        let source = self.config.state_topic();
        let (copy, truncated) = dead_letter::copy(input.payload.as_deref().unwrap_or_default());
        let from = dead_letter::Source { topic: &source, partition: input.partition, offset: input.offset };
        let headers = dead_letter::headers("projector", reason, from, truncated);
        let record = FutureRecord::<(), _>::to(&topic).payload(copy).headers(headers);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            warn!(error = %e, "cannot produce the dead letter; the record is only logged");
        }
    }

    /// The version each of `ids` has in Typesense (0: absent), from the cache or Typesense.
    async fn known_versions(&mut self, wanted: &[(String, String)]) -> Result<(), TsError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (target, id) in wanted.iter().filter(|(_, id)| !self.versions.contains_key(id)) {
            let (ts, target, id) = (self.ts.clone(), target.clone(), id.clone());
            tasks.spawn(async move {
                let doc = ts.document(&target, &id).await?;
                Ok::<_, TsError>((id, doc.and_then(|d| d["version"].as_u64()).unwrap_or(0)))
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (id, version) = done.map_err(|e| TsError::Unavailable(e.to_string()))??;
            self.versions.insert(id, version);
        }
        Ok(())
    }

    /// Project one batch. `Err` means Typesense is unavailable: retry the same batch later.
    pub async fn apply(&mut self, batch: &[Input]) -> Result<(), TsError> {
        let started = Instant::now();
        let (mut newest, order) = self.newest_per_document(batch).await;
        // Version guard.
        let mut wanted = Vec::with_capacity(order.len());
        for id in &order {
            let target = self.target(&newest[id].alias).await?;
            wanted.push((target, id.clone()));
        }
        self.known_versions(&wanted).await?;
        let mut upserts: HashMap<(String, &'static str), Vec<Pending>> = HashMap::new();
        let mut deletes: Vec<(String, String, u64)> = Vec::new();
        for (target, id) in wanted {
            let m = newest.remove(&id).expect("mapped");
            if m.version != TOMBSTONE && self.versions.get(&id).copied().unwrap_or(0) >= m.version {
                METRICS.records.with_label_values(&["stale"]).inc();
                continue;
            }
            METRICS.records.with_label_values(&["projected"]).inc();
            match m.action {
                Action::Upsert(doc) => {
                    let action = if m.alias.ends_with("_orchestrations") { "emplace" } else { "upsert" };
                    upserts.entry((target, action)).or_default().push((id, m.version, doc));
                }
                Action::Delete => deletes.push((target, id, m.version)),
            }
        }
        self.import(upserts).await?;
        for (target, id, version) in deletes {
            self.ts.delete(&target, &id).await?;
            METRICS.documents.with_label_values(&["deleted"]).inc();
            if version == TOMBSTONE {
                // Purged: a new instance with this id starts its versions again.
                self.versions.remove(&id);
            } else {
                self.versions.insert(id, version);
            }
        }
        METRICS.batch_size.observe(batch.len() as f64);
        METRICS.batch_latency.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The newest record of each document in `batch`, and the documents in first-seen order;
    /// records that are no state record go to the dead-letter topic.
    async fn newest_per_document(&mut self, batch: &[Input]) -> (HashMap<String, Mapped>, Vec<String>) {
        let mut newest: HashMap<String, Mapped> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for input in batch {
            let mapped = match input.payload.as_deref().map(serde_json::from_slice::<StateRecord>) {
                Some(Ok(record)) => mapping::map(&self.config.prefix, &record),
                Some(Err(e)) => {
                    METRICS.records.with_label_values(&["dead"]).inc();
                    self.dead(input, &format!("not a state record: {e}")).await;
                    continue;
                }
                // A purged instance's tombstone.
                None => input.key.as_deref().and_then(|k| tombstone(&self.config.prefix, k)),
            };
            let Some(mapped) = mapped else {
                METRICS.records.with_label_values(&["ignored"]).inc();
                continue;
            };
            match newest.get_mut(&mapped.id) {
                // Feed order decides around a tombstone: what follows it is newer.
                Some(m) if m.version == TOMBSTONE || mapped.version == TOMBSTONE => *m = mapped,
                Some(m) if m.version >= mapped.version => {
                    METRICS.records.with_label_values(&["stale"]).inc();
                    carry_created_at(&mapped, m);
                }
                Some(m) => {
                    METRICS.records.with_label_values(&["stale"]).inc();
                    let mut mapped = mapped;
                    carry_created_at(m, &mut mapped);
                    *m = mapped;
                }
                None => {
                    order.push(mapped.id.clone());
                    newest.insert(mapped.id.clone(), mapped);
                }
            }
        }
        (newest, order)
    }

    /// Import the upserts, per collection and action; a document Typesense rejects goes to the
    /// dead-letter topic, a refused request is retried with its target recreated.
    async fn import(&mut self, upserts: HashMap<(String, &'static str), Vec<Pending>>) -> Result<(), TsError> {
        for ((target, action), docs) in upserts {
            let bodies: Vec<Value> = docs.iter().map(|(_, _, d)| d.clone()).collect();
            let results = match self.ts.import(&target, action, &bodies).await {
                Ok(r) => r,
                Err(TsError::Refused { status, message }) => {
                    // The whole request refused (e.g. the collection was dropped by hand): forget
                    // the target so the next attempt recreates it, and retry.
                    self.targets.remove(&target);
                    return Err(TsError::Unavailable(format!("import into {target} refused ({status}): {message}")));
                }
                Err(e) => return Err(e),
            };
            for ((id, version, doc), result) in docs.into_iter().zip(results) {
                if result.success {
                    METRICS.documents.with_label_values(&["upserted"]).inc();
                    self.versions.insert(id, version);
                } else {
                    METRICS.documents.with_label_values(&["rejected"]).inc();
                    let reason = format!("Typesense rejected {id}: {}", result.error.unwrap_or_default());
                    let input =
                        Input { partition: -1, offset: -1, key: None, payload: Some(doc.to_string().into_bytes()) };
                    self.dead(&input, &reason).await;
                }
            }
        }
        Ok(())
    }

    /// Point every alias written in this rebuild at its new collection; drop the old ones.
    async fn swap(&self) -> Result<Vec<(String, String)>, TsError> {
        let mut swapped = Vec::new();
        for (alias, collection) in &self.targets {
            let old = self.ts.alias(alias).await?;
            self.ts.set_alias(alias, collection).await?;
            if let Some(old) = old.filter(|o| o != collection) {
                self.ts.drop_collection(&old).await?;
            }
            swapped.push((alias.clone(), collection.clone()));
        }
        Ok(swapped)
    }
}

/// An orchestration's `created_at` comes only with its version-1 record: when a batch keeps a
/// newer record of the same instance instead, the newer document takes it over.
fn carry_created_at(from: &Mapped, to: &mut Mapped) {
    if let (Action::Upsert(old), Action::Upsert(new)) = (&from.action, &mut to.action) {
        if let (Some(created), None) = (old.get("created_at"), new.get("created_at")) {
            new["created_at"] = created.clone();
        }
    }
}

/// Clears the version cache after a rebalance.
pub struct Rebalanced(Arc<AtomicBool>);

impl ClientContext for Rebalanced {}

impl ConsumerContext for Rebalanced {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            info!(partitions = ?list.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "state partitions assigned");
        }
        self.0.store(true, Ordering::SeqCst);
    }
}

type FeedConsumer = StreamConsumer<Rebalanced>;

fn consumer(config: &ProjectorConfig, group: &str) -> anyhow::Result<(FeedConsumer, Arc<AtomicBool>)> {
    let flag = Arc::new(AtomicBool::new(false));
    let client = config.kafka.client_config(&[
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
    ])?;
    let consumer: FeedConsumer =
        client.create_with_context(Rebalanced(flag.clone())).context("cannot create the Kafka consumer")?;
    consumer.subscribe(&[&config.state_topic()]).context("cannot subscribe to the state topic")?;
    Ok((consumer, flag))
}

/// Gather a batch: wait for a first record (up to `idle`), then take more until the batch is
/// full or `linger` has passed since the first.
async fn gather(consumer: &FeedConsumer, config: &ProjectorConfig, idle: Duration) -> Vec<Input> {
    let mut batch = Vec::new();
    let first = match tokio::time::timeout(idle, consumer.recv()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            warn!(error = %e, "consumer error: is the broker running? (DURABLE_BROKERS)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return batch;
        }
        Err(_) => return batch,
    };
    let deadline = tokio::time::Instant::now() + config.linger;
    let mut push = |m: &rdkafka::message::BorrowedMessage<'_>| {
        batch.push(Input {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        });
    };
    push(&first);
    drop(first);
    let mut count = 1;
    while count < config.batch {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                push(&m);
                count += 1;
            }
            _ => break,
        }
    }
    batch
}

/// Apply a batch until Typesense takes it, backing off while it is unavailable.
async fn apply_until_done(projector: &mut Projector, batch: &[Input]) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match projector.apply(batch).await {
            Ok(()) => return,
            Err(e) => {
                METRICS.retries.with_label_values(&[] as &[&str]).inc();
                warn!(error = %e, retry_in = ?backoff, "batch not projected; retrying (is Typesense running? DURABLE_TYPESENSE_URL)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Commit the offsets after `batch`.
fn commit(consumer: &FeedConsumer, topic: &str, batch: &[Input]) {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for i in batch {
        let e = next.entry(i.partition).or_insert(0);
        *e = (*e).max(i.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for (p, o) in next {
        let _ = list.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        warn!(error = %e, "offset commit failed; the batch may be projected again (harmless)");
    }
}

fn update_lag(consumer: &FeedConsumer, topic: &str) {
    let Ok(position) = consumer.position() else { return };
    for e in position.elements_for_topic(topic) {
        if let (Offset::Offset(at), Ok((_, high))) =
            (e.offset(), consumer.fetch_watermarks(topic, e.partition(), Duration::from_millis(500)))
        {
            METRICS.lag.with_label_values(&[&e.partition().to_string()]).set((high - at).max(0));
        }
    }
}

/// Run the projector until `shutdown` resolves; the HTTP address goes to `ready`.
pub async fn run(
    config: ProjectorConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    config::ensure_dead_topic(&config).await?;
    let mut projector = Projector::new(config.clone(), Mode::Live)?;
    let (consumer, rebalanced) = consumer(&config, &config.group)?;
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}: set DURABLE_PROJECTOR_METRICS_ADDR", config.metrics_addr))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(metrics::serve(listener));
    info!(%addr, topic = %config.state_topic(), typesense = %config.typesense_url, "projector running");
    if let Some(ready) = ready {
        let _ = ready.send(addr);
    }
    let topic = config.state_topic();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_lag = Instant::now();
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = gather(&consumer, &config, Duration::from_millis(500)) => batch,
        };
        if rebalanced.swap(false, Ordering::SeqCst) {
            projector.forget();
        }
        if !batch.is_empty() {
            apply_until_done(&mut projector, &batch).await;
            commit(&consumer, &topic, &batch);
        }
        if last_lag.elapsed() > Duration::from_secs(2) {
            update_lag(&consumer, &topic);
            last_lag = Instant::now();
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        warn!(error = %e, "final offset commit failed");
    }
    server.abort();
    Ok(())
}

/// Rebuild: read the whole feed into new collections, then swap the aliases. Returns the
/// (alias, new collection) pairs.
pub async fn rebuild(config: ProjectorConfig) -> anyhow::Result<Vec<(String, String)>> {
    config::ensure_dead_topic(&config).await?;
    let generation = now_ms().to_string();
    let mut projector = Projector::new(config.clone(), Mode::Rebuild { generation: generation.clone() })?;
    let group = format!("{}-rebuild-{generation}", config.group);
    let (consumer, _) = consumer(&config, &group)?;
    let topic = config.state_topic();
    let started = Instant::now();
    let (mut records, mut last_record, mut last_report) = (0u64, Instant::now(), Instant::now());
    loop {
        let batch = gather(&consumer, &config, Duration::from_millis(500)).await;
        if !batch.is_empty() {
            records += batch.len() as u64;
            last_record = Instant::now();
            apply_until_done(&mut projector, &batch).await;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("rebuild: {records} records in {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        // Caught up: every assigned partition's position is at its high watermark (read from
        // the broker, which Apache Kafka reports exactly; the idle-time fallback that an earlier
        // test broker's wrong watermark needed is gone).
        if last_record.elapsed() > Duration::from_millis(500) && caught_up(&consumer, &topic) {
            break;
        }
    }
    let swapped = loop {
        match projector.swap().await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "cannot swap aliases yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    eprintln!("rebuild: {records} records in {:.1} s; aliases swapped: {swapped:?}", started.elapsed().as_secs_f64());
    Ok(swapped)
}

fn caught_up(consumer: &FeedConsumer, topic: &str) -> bool {
    let Ok(position) = consumer.position() else { return false };
    let elements = position.elements_for_topic(topic);
    !elements.is_empty()
        && elements.iter().all(|e| {
            let high = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(2)).map(|(_, h)| h);
            match (e.offset(), high) {
                (Offset::Offset(at), Ok(high)) => at >= high,
                (Offset::Invalid, Ok(high)) => high == 0,
                _ => false,
            }
        })
}

/// Search `type_name`'s documents (an entity name or `orchestrations`) for `query` in their
/// string fields (only `instance` and `key` with a key that may not read the collection's
/// schema, such as a scoped search key), with an optional Typesense `filter`.
pub async fn search(
    ts: &Typesense,
    prefix: &str,
    type_name: &str,
    query: &str,
    filter: Option<&str>,
    per_page: u32,
) -> Result<Vec<Value>, TsError> {
    let alias = if type_name == "orchestrations" {
        mapping::orchestrations_alias(prefix)
    } else {
        mapping::entity_alias(prefix, type_name)
    };
    let schema = match ts.collection(&alias).await {
        // A scoped search key may only search: match the text on the instance id and key.
        Err(TsError::Refused { status: 401 | 403, .. }) => serde_json::json!({ "fields": [
            { "name": "instance", "type": "string" }, { "name": "key", "type": "string" },
        ] }),
        other => other?.ok_or_else(|| TsError::Refused {
            status: 404,
            message: format!("nothing projected for {type_name:?} yet (no collection {alias}): is the projector running, and is the type name right?"),
        })?,
    };
    let mut query_by: Vec<String> = schema["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter(|f| f["type"] == "string" && f["name"] != ".*" && f["index"] != false)
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if query_by.is_empty() {
        query_by.push("key".into());
    }
    let query_by = query_by.join(",");
    let per_page = per_page.to_string();
    let mut params = vec![("q", query), ("query_by", query_by.as_str()), ("per_page", per_page.as_str())];
    if let Some(f) = filter {
        params.push(("filter_by", f));
    }
    let found = ts.search(&alias, &params).await?;
    Ok(found["hits"].as_array().map(|h| h.iter().map(|h| h["document"].clone()).collect()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_record_in_the_same_batch_keeps_created_at() {
        let doc = |version: u64, created: bool| {
            let mut d = serde_json::json!({ "id": "orch:A:k", "version": version });
            if created {
                d["created_at"] = 7.into();
            }
            Mapped { alias: "p_orchestrations".into(), id: "orch:A:k".into(), version, action: Action::Upsert(d) }
        };
        let mut newer = doc(3, false);
        carry_created_at(&doc(1, true), &mut newer);
        let Action::Upsert(d) = &newer.action else { panic!() };
        assert_eq!(d["created_at"], 7);
        let mut kept = doc(3, false);
        carry_created_at(&doc(2, false), &mut kept);
        let Action::Upsert(d) = &kept.action else { panic!() };
        assert!(d.get("created_at").is_none());
    }
}
