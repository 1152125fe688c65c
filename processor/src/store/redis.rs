//! [`RedisStore`]: the [`Store`] contract on Redis.
//!
//! # Keys
//! Every key of a partition carries the partition as a hash tag, so a Redis Cluster keeps a
//! partition in one slot and a batch commit of many instances stays a single-slot script:
//! - `<prefix>:{p<N>}:s:<instance id>` — hash `{b: blob, e: etag}`;
//! - `<prefix>:{p<N>}:timers` — sorted set of parked timers (score = fire time, member =
//!   the encoded envelope, unique because event ids are);
//! - `<prefix>:{p<N>}:released` — hash `seq → "<fire_at>|<envelope>"` of claimed timers
//!   not yet acknowledged; `<prefix>:{p<N>}:tseq` — the timer stream's last seq.
//! - `<prefix>:{p<N>}:epoch` — the partition's owner epoch (raised by [`Store::take`]).
//! - `<prefix>:{p<N>}:applied` — one past the last offset of `<prefix>.events` whose group was
//!   committed (raised by every commit of a group and by [`Store::mark_applied`]); the
//!   processors compare it with Kafka's committed offset to detect lost state (see
//!   [`Store::take`]). `<prefix>:{p<N>}:lost` — `waiting` while the partition's owner waits
//!   for an operator to accept a loss of its state, `accepted` once one did.
//! - The instance index (see [`Store::list`]): each instance's entry is field `x` of its state
//!   hash; `<prefix>:{p<N>}:ids` — sorted set of the partition's indexed instance ids (all score
//!   0, so read by id with `ZRANGEBYLEX`); `<prefix>:{p<N>}:recent` — the same ids scored by
//!   when they last changed (ms, for [`Store::recent`]); `<prefix>:{p<N>}:counts` — hash
//!   `group → instances in it`. The commit script keeps them with the blobs; taking a partition
//!   fills `recent` from the entries when it is missing (written by a version before it).
//! - `<prefix>:secret` — the deployment secret of the processors' seals when `DURABLE_SECRET`
//!   is not set ([`Store::deployment_secret`]).
//!
//! # Commits
//! A batch is one Lua script: for each write it compares the stored etag with the expected one
//! and, only if they are equal, stores the blob with the next etag and parks the write's timers;
//! it returns one outcome per write. Redis runs a script atomically, so this is the same
//! optimistic protocol as WATCH/MULTI/EXEC — compare the etag, write only if nobody else did —
//! with two differences that matter here: a conflict on one instance does not abort the others
//! (each write gets its own outcome), and it is safe on one shared multiplexed connection
//! (WATCH state belongs to a connection, and interleaved WATCHes on a shared connection lose
//! updates). A batch of any size costs one round trip.
//!
//! # Counters that survive a rollback
//! Etags, timer sequence numbers and epochs are never simply incremented: each new value is the
//! larger of the old one plus one and the Redis server's clock in microseconds (`TIME`). So after
//! Redis lost writes (restarted without them, failed over to a replica that lagged, restored
//! from an older copy) a new value is still larger than any handed out before the loss: a
//! processor's cached copy never matches a new etag, a released timer never reuses a sequence
//! number its receivers saw, and a stale owner's epoch never becomes current again. (This
//! holds as long as the server's clock does not go back further than the loss.)

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{CommitOutcome, ReleasedTimer, Secrets, Store, StoreError, StoreResult, Stored, Taken, Write};

mod scripts;
use scripts::{ACCEPTED, ACK, CLAIM, CLOCK, COMMIT, MARK, TAKE};

/// Instance blobs and timers in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

/// One Redis server (through a manager that reconnects), or a Redis Cluster (whose client
/// follows the slots: every key of a partition is in one slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Lua scripts, loaded once per store and shared by its clones.
struct Scripts {
    commit: Script,
    claim: Script,
    ack: Script,
    mark: Script,
    take: Script,
    accepted: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish()
    }
}

fn read_ca(path: &std::path::Path) -> StoreResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        StoreError::misconfigured(format!(
            "cannot read the Redis CA certificate {} (DURABLE_REDIS_CA): {e}",
            path.display()
        ))
    })
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::unavailable(e.to_string())
}

impl RedisStore {
    /// Connect to `url` (e.g. `redis://127.0.0.1:6379`); keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::connect_with(url, prefix, None).await
    }

    /// [`RedisStore::connect`], trusting the CA certificate in PEM file `ca` for a `rediss://`
    /// URL (instead of the system's roots). An ACL user and its password go in the URL:
    /// `rediss://user:password@host:port`.
    pub async fn connect_with(url: &str, prefix: &str, ca: Option<&std::path::Path>) -> StoreResult<Self> {
        // Errors name the URL without its password.
        let shown = redact_url(url);
        let invalid = |e: redis::RedisError| {
            StoreError::misconfigured(format!(
                "invalid Redis URL {shown}: {e} (expected redis://host:port or rediss://user:password@host:port)"
            ))
        };
        let client = match ca {
            None => redis::Client::open(url).map_err(invalid)?,
            Some(path) => {
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(read_ca(path)?) };
                redis::Client::build_with_tls(url, certificates).map_err(invalid)?
            }
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            StoreError::unavailable(format!(
                "cannot reach Redis at {shown}: {e}: is redis-server running? set DURABLE_REDIS_URL"
            ))
        };
        // Fail fast at start-up; once running, the manager reconnects with backoff.
        let probe = tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection()).await;
        match probe {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 3 s")),
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(|e| unreachable(&e))?;
        Ok(Self::over(Conn::Single(conn), prefix))
    }

    /// Connect to a Redis Cluster through `seeds` (URLs of some of its nodes, e.g.
    /// `redis://10.0.0.1:6379`; `rediss://user:password@…` for TLS, checked against the system's
    /// roots, and an ACL user; a CA of its own (`ca`) is refused). Each partition's keys share a
    /// hash tag, so each commit is a single-slot script.
    pub async fn connect_cluster(seeds: &[&str], prefix: &str, ca: Option<&std::path::Path>) -> StoreResult<Self> {
        let shown: Vec<String> = seeds.iter().map(|u| redact_url(u)).collect();
        let shown = shown.join(",");
        let builder = redis::cluster::ClusterClient::builder(seeds.iter().map(|s| s.to_string()))
            .connection_timeout(Duration::from_secs(3))
            .response_timeout(Duration::from_secs(10))
            .retries(6);
        if let Some(path) = ca {
            return Err(StoreError::misconfigured(format!(
                "DURABLE_REDIS_CA ({}) is not supported with DURABLE_REDIS_CLUSTER: add the CA to the system's trusted roots instead (rediss:// cluster nodes are checked against them)",
                path.display()
            )));
        }
        let client = builder.build().map_err(|e| {
            StoreError::misconfigured(format!(
                "invalid Redis Cluster nodes {shown}: {e} (expected redis://host:port,redis://host:port,…)"
            ))
        })?;
        let unreachable = |e: &dyn std::fmt::Display| {
            StoreError::unavailable(format!(
                "cannot reach the Redis Cluster at {shown}: {e}: are its nodes up and is the cluster formed? set DURABLE_REDIS_URL"
            ))
        };
        let conn = match tokio::time::timeout(Duration::from_secs(5), client.get_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 5 s")),
        };
        Ok(Self::over(Conn::Cluster(conn), prefix))
    }

    fn over(conn: Conn, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            scripts: std::sync::Arc::new(Scripts {
                commit: Script::new(&format!("{CLOCK}{COMMIT}")),
                claim: Script::new(&format!("{CLOCK}{CLAIM}")),
                ack: Script::new(ACK),
                mark: Script::new(MARK),
                take: Script::new(&format!("{CLOCK}{TAKE}")),
                accepted: Script::new(ACCEPTED),
            }),
        }
    }

    /// The key of an instance's state.
    pub fn state_key(&self, partition: u32, id: &str) -> String {
        format!("{}:{{p{partition}}}:s:{id}", self.prefix)
    }

    /// The key of the delta frames appended to an instance's blob since it was last written
    /// whole (same hash slot as its state key).
    pub fn tail_key(&self, partition: u32, id: &str) -> String {
        format!("{}:{{p{partition}}}:t:{id}", self.prefix)
    }

    fn partition_key(&self, partition: u32, what: &str) -> String {
        format!("{}:{{p{partition}}}:{what}", self.prefix)
    }

    /// One run of the commit script (fenced with `epoch` if given, raising the applied mark to
    /// `applied` if given, refused if the mark is below `floor`).
    async fn commit_script(
        &self,
        partition: u32,
        epoch: Option<u64>,
        applied: Option<i64>,
        floor: Option<i64>,
        writes: Vec<Write>,
    ) -> StoreResult<Result<Vec<CommitOutcome>, Option<i64>>> {
        if writes.is_empty() {
            if let Some(next) = applied {
                if let Err(mark) = self.mark_applied(partition, floor, next).await? {
                    return Ok(Err(mark));
                }
            }
            return Ok(Ok(Vec::new()));
        }
        let mut invocation = self.scripts.commit.prepare_invoke();
        for w in &writes {
            invocation.key(self.state_key(partition, &w.id));
        }
        invocation.key(self.partition_key(partition, "timers"));
        invocation.key(self.partition_key(partition, "epoch"));
        invocation.key(self.partition_key(partition, "applied"));
        for what in ["ids", "counts", "recent"] {
            invocation.key(self.partition_key(partition, what));
        }
        for w in &writes {
            invocation.key(self.tail_key(partition, &w.id));
        }
        invocation.arg(writes.len());
        invocation.arg(epoch.map(|e| e.to_string()).unwrap_or_default());
        invocation.arg(applied.map(|o| o.to_string()).unwrap_or_default());
        invocation.arg(floor.map(|o| o.to_string()).unwrap_or_default());
        for w in &writes {
            invocation.arg(w.expected.map(|e| e.to_string()).unwrap_or_default());
            invocation.arg(&w.blob[..]);
            invocation.arg(&w.id);
            match &w.index {
                Some(indexed) => invocation.arg(&indexed.type_name).arg(&indexed.status).arg(&indexed.entry),
                None => invocation.arg("").arg("").arg(""),
            };
            invocation.arg(w.expire.map(|ms| ms.max(1).to_string()).unwrap_or_default());
            invocation.arg(w.timers.len());
            invocation.arg(if w.append { "1" } else { "" });
            for t in &w.timers {
                invocation.arg(t.fire_at).arg(&t.envelope[..]);
            }
        }
        let etags: Vec<i64> = invocation.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        if etags.first() == Some(&-2) {
            let mark = etags.get(1).copied().filter(|m| *m >= 0);
            return Ok(Err(mark));
        }
        Ok(Ok(etags
            .into_iter()
            .map(|e| if e < 0 { CommitOutcome::Conflict } else { CommitOutcome::Committed { etag: e as u64 } })
            .collect()))
    }

    /// A commit that cannot be refused for a floor.
    async fn commit_plain(
        &self,
        partition: u32,
        epoch: Option<u64>,
        writes: Vec<Write>,
    ) -> StoreResult<Vec<CommitOutcome>> {
        Ok(self.commit_script(partition, epoch, None, None, writes).await?.expect("no floor, never refused"))
    }
}

/// What a Redis server's settings promise about the commits it acknowledges
/// ([`RedisStore::health`]). A setting the server does not let us read (managed Redis often
/// refuses `CONFIG`) is `None`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// `appendonly`: whether writes go to the append-only file.
    pub appendonly: Option<bool>,
    /// `appendfsync`: `always` (fsync before every reply), `everysec` or `no`.
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`: anything but `noeviction` drops keys under memory pressure.
    pub maxmemory_policy: Option<String>,
    /// Replicas connected to this server (`INFO replication`).
    pub replicas: Option<u64>,
}

impl StoreHealth {
    /// Whether an acknowledged commit survives a crash of the Redis machine: the append-only
    /// file is fsynced before each reply (`appendonly yes`, `appendfsync always`).
    pub fn durable(&self) -> bool {
        self.appendonly == Some(true) && self.appendfsync.as_deref() == Some("always")
    }

    /// Whether the server may evict keys (known to).
    pub fn evicts(&self) -> bool {
        self.maxmemory_policy.as_deref().is_some_and(|p| p != "noeviction")
    }
}

impl RedisStore {
    /// Read the server's persistence, eviction and replication settings (what it refuses to
    /// tell stays `None`).
    pub async fn health(&self) -> StoreHealth {
        let setting = async |name: &str| -> Option<String> {
            let pair: Vec<String> =
                redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut self.conn.clone()).await.ok()?;
            pair.into_iter().nth(1)
        };
        let appendonly = setting("appendonly").await.map(|v| v == "yes");
        let appendfsync = setting("appendfsync").await;
        let maxmemory_policy = setting("maxmemory-policy").await;
        let info: Option<String> = redis::cmd("INFO").arg("replication").query_async(&mut self.conn.clone()).await.ok();
        let replicas = info.as_deref().and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("connected_slaves:")).and_then(|n| n.trim().parse().ok())
        });
        StoreHealth { appendonly, appendfsync, maxmemory_policy, replicas }
    }
}

impl Store for RedisStore {
    async fn load(&self, partition: u32, ids: &[String]) -> StoreResult<Vec<Option<Stored>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.state_key(partition, id)).arg("b").arg("e");
            pipe.cmd("GET").arg(self.tail_key(partition, id));
        }
        let rows: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        let mut rows = rows.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        while let (Some(record), Some(tail)) = (rows.next(), rows.next()) {
            let malformed = |e: redis::ParsingError| StoreError::malformed(format!("unexpected answer to a load: {e}"));
            let record: (Option<Vec<u8>>, Option<u64>) = redis::from_redis_value(record).map_err(malformed)?;
            let tail: Option<Vec<u8>> = redis::from_redis_value(tail).map_err(malformed)?;
            out.push(match record {
                (Some(mut blob), Some(etag)) => {
                    blob.extend(tail.unwrap_or_default());
                    Some(Stored { blob, etag })
                }
                _ => None,
            });
        }
        Ok(out)
    }

    async fn commit(&self, partition: u32, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        self.commit_plain(partition, None, writes).await
    }

    async fn commit_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        applied: i64,
        writes: Vec<Write>,
    ) -> StoreResult<Result<Vec<CommitOutcome>, Option<i64>>> {
        self.commit_script(partition, None, Some(applied), floor, writes).await
    }

    async fn take(&self, partition: u32) -> StoreResult<Taken> {
        let (epoch, applied, known): (u64, i64, i64) = self
            .scripts
            .take
            .key(self.partition_key(partition, "epoch"))
            .key(self.partition_key(partition, "applied"))
            .key(self.partition_key(partition, "ids"))
            .key(self.partition_key(partition, "recent"))
            .arg(self.state_key(partition, ""))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(Taken { epoch, applied: (applied >= 0).then_some(applied), known: known == 1 })
    }

    async fn commit_fenced(&self, partition: u32, epoch: u64, writes: Vec<Write>) -> StoreResult<Vec<CommitOutcome>> {
        self.commit_plain(partition, Some(epoch), writes).await
    }

    async fn mark_applied(
        &self,
        partition: u32,
        floor: Option<i64>,
        next: i64,
    ) -> StoreResult<Result<(), Option<i64>>> {
        let key = self.partition_key(partition, "applied");
        let answer: i64 = self
            .scripts
            .mark
            .key(&key)
            .arg(next)
            .arg(floor.map(|f| f.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if answer == -2 {
            let mark: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
            return Ok(Err(mark.and_then(|m| m.parse().ok())));
        }
        Ok(Ok(()))
    }

    async fn record_loss(&self, partition: u32) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.partition_key(partition, "lost"))
            .arg("waiting")
            .arg("NX")
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn accept_loss(&self, partition: u32) -> StoreResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.partition_key(partition, "lost"))
            .arg("accepted")
            .arg("XX")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn loss_accepted(&self, partition: u32) -> StoreResult<bool> {
        let taken: i64 = self
            .scripts
            .accepted
            .key(self.partition_key(partition, "lost"))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn claim_due_timers(&self, partition: u32, now: i64, max: usize) -> StoreResult<Vec<ReleasedTimer>> {
        let fields: Vec<(String, Vec<u8>)> = self
            .scripts
            .claim
            .key(self.partition_key(partition, "timers"))
            .key(self.partition_key(partition, "released"))
            .key(self.partition_key(partition, "tseq"))
            .arg(now)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut released = Vec::with_capacity(fields.len());
        for (seq, value) in fields {
            let bad = || StoreError::malformed(format!("corrupt released timer {seq} in partition {partition}"));
            let seq: i64 = seq.parse().map_err(|_| bad())?;
            let bar = value.iter().position(|&b| b == b'|').ok_or_else(bad)?;
            let fire_at: i64 = std::str::from_utf8(&value[..bar]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            released.push(ReleasedTimer { seq, fire_at, envelope: value[bar + 1..].to_vec() });
        }
        released.sort_by_key(|t| t.seq);
        Ok(released)
    }

    async fn ack_timers(&self, partition: u32, up_to_seq: i64) -> StoreResult<()> {
        let _: i64 = self
            .scripts
            .ack
            .key(self.partition_key(partition, "released"))
            .arg(up_to_seq)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn timer_backlog(&self, partition: u32) -> StoreResult<(Option<i64>, usize)> {
        let (first, parked, released): (Vec<(Vec<u8>, f64)>, usize, usize) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.partition_key(partition, "timers"))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZCARD")
            .arg(self.partition_key(partition, "timers"))
            .cmd("HLEN")
            .arg(self.partition_key(partition, "released"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok((first.first().map(|(_, score)| *score as i64), parked + released))
    }

    async fn list(
        &self,
        partition: u32,
        prefix: &str,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        // Ids are printable ASCII (`crate::id`): prefix + 0xFF bounds every id with the prefix.
        let min = match after {
            Some(after) if after >= prefix => format!("({after}").into_bytes(),
            _ => format!("[{prefix}").into_bytes(),
        };
        let max = if prefix.is_empty() { b"+".to_vec() } else { [b"[", prefix.as_bytes(), &[0xFF]].concat() };
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.partition_key(partition, "ids"))
            .arg(min)
            .arg(max)
            .arg("LIMIT")
            .arg(0)
            .arg(count.min(10_000))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET").arg(self.state_key(partition, id)).arg("x");
        }
        let entries: Vec<Option<String>> = pipe.query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(ids.into_iter().zip(entries).filter_map(|(id, entry)| Some((id, entry?))).collect())
    }

    async fn recent(
        &self,
        partition: u32,
        before: Option<(i64, &str)>,
        count: usize,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        let key = self.partition_key(partition, "recent");
        let mut conn = self.conn.clone();
        // Ties at one ms come in descending id order: skip those at or past `before`'s id.
        let (max, skip) = match before {
            None => ("+inf".to_owned(), 0),
            Some((at, id)) => {
                let tied: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(at)
                    .arg(at)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                (at.to_string(), tied.iter().filter(|t| t.as_str() >= id).count())
            }
        };
        let page: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&key)
            .arg(max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(skip)
            .arg(count.min(10_000))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &page {
            pipe.cmd("HGET").arg(self.state_key(partition, id)).arg("x");
        }
        let entries: Vec<Option<String>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(page.into_iter().zip(entries).filter_map(|((id, at), entry)| Some((at as i64, id, entry?))).collect())
    }

    async fn counts(&self, partition: u32) -> StoreResult<Vec<(String, u64)>> {
        let counts: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.partition_key(partition, "counts"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(counts.into_iter().map(|(group, n)| (group, n.max(0) as u64)).collect())
    }

    async fn deployment_secret(&self, offer: Vec<u8>, sealed_with: Option<Vec<u8>>) -> StoreResult<Secrets> {
        let key = format!("{}:secret", self.prefix);
        // The secrets accepted, newest first (a list beside the key: both are read and written
        // by every processor now and then, so neither needs to change atomically with the other).
        let list = format!("{}:secrets", self.prefix);
        let mut conn = self.conn.clone();
        // Two keys, two hash slots in a cluster: a pipeline each.
        let (current,): (Vec<u8>,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&offer)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let accepted: Vec<Vec<u8>> =
            redis::cmd("LRANGE").arg(&list).arg(0).arg(-1).query_async(&mut conn).await.map_err(unavailable)?;
        let mut pipe = redis::pipe();
        for s in sealed_with.iter().chain([&current]) {
            if !accepted.contains(s) {
                pipe.cmd("LPUSH").arg(&list).arg(s).ignore();
            }
        }
        pipe.cmd("LTRIM").arg(&list).arg(0).arg(Secrets::KEPT as i64 - 1).ignore();
        let () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(Secrets::new(current, sealed_with.into_iter().chain(accepted)))
    }
}

/// `url` with the password of its user-info part (`scheme://user:password@host`) replaced by
/// `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod url_tests {
    use super::redact_url;

    #[test]
    fn redis_urls_lose_their_password() {
        assert_eq!(redact_url("redis://u:pa:ss@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact_url("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
