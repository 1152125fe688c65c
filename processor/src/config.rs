//! The processor's configuration: flags with environment fallbacks (see `example.env`).

use std::net::SocketAddr;
use std::time::Duration;

use durable_kafka::{KafkaConnection, Secret, TopicSettings, Topics};

use crate::access::{Creation, Policy, Principal};
use crate::engine::Limits;
use crate::quota;
use crate::retention::Retention;

/// The processor's defaults, each stated once: the command line shows them (`--help`) and
/// [`ProcessorConfig::new`] starts from them. The engine's limits default in
/// [`Limits::default`], the partition core's in [`crate::partition::Settings`].
pub mod defaults {
    use std::time::Duration;

    /// `DURABLE_PARTITIONS`.
    pub const PARTITIONS: i32 = 32;
    /// `DURABLE_BATCH`.
    pub const BATCH: usize = 256;
    /// `DURABLE_MAX_EVENT_BYTES`.
    pub const MAX_EVENT_BYTES: usize = 1_000_000;
    /// `DURABLE_TIMER_INTERVAL`.
    pub const TIMER_INTERVAL: &str = "100ms";
    /// `DURABLE_ACTIVITY_TIMEOUT`.
    pub const ACTIVITY_TIMEOUT: &str = "5m";
    /// `DURABLE_ACTIVITY_CONCURRENCY`.
    pub const ACTIVITY_CONCURRENCY: usize = 512;
    /// `DURABLE_MAX_DELAY` ([`crate::engine::Limits::MAX_DELAY_MS`]).
    pub const MAX_DELAY: &str = "366d";
    /// `DURABLE_MAX_SEALED_AGE` ([`crate::engine::Limits::MAX_SEALED_AGE_MS`]).
    pub const MAX_SEALED_AGE: &str = "24h";
    /// `DURABLE_PURGE_GRACE`.
    pub const PURGE_GRACE: &str = "1h";

    /// One of the durations above.
    pub fn duration(text: &str) -> Duration {
        humantime::parse_duration(text).expect("the defaults are durations")
    }
}

/// How a processor connects and behaves. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorConfig {
    /// Where the brokers are and how to connect to them.
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// How missing topics are created.
    #[command(flatten)]
    pub topic_settings: TopicSettings,
    /// Name prefix: topics <prefix>.events, <prefix>.state, <prefix>.dead and Redis keys <prefix>:…
    #[arg(long, env = "DURABLE_PREFIX", default_value = durable_schemas::contract::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Partitions of <prefix>.events when this processor creates it (fixed afterwards: the most
    /// processors that can share the work). An existing topic keeps its own count, which the
    /// processor reads from the broker.
    #[arg(long, env = "DURABLE_PARTITIONS", default_value_t = defaults::PARTITIONS)]
    pub partitions: i32,
    /// Consumer group the processors share.
    #[arg(long, env = "DURABLE_GROUP", default_value = "durable-processors")]
    pub group: String,
    /// Redis URL of the state store (redis://[user:password@]host:port[/db], rediss:// for TLS).
    #[arg(long, env = "DURABLE_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// DURABLE_REDIS_URL names nodes of a Redis Cluster, comma separated (some of them are
    /// enough: the client learns the rest).
    #[arg(long, env = "DURABLE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// PEM file of the CA certificate that signed the Redis server's (for a rediss:// URL);
    /// unset: the system's trusted roots.
    #[arg(long, env = "DURABLE_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// Start even though Redis evicts keys under memory pressure (a maxmemory-policy other than
    /// noeviction): evicted instance state is lost without a trace. Without it such a Redis is
    /// refused at start.
    #[arg(long, env = "DURABLE_REDIS_ALLOW_EVICTION")]
    pub redis_allow_eviction: bool,
    /// Address serving /metrics and /status, and the management API (/v1/…) unless
    /// DURABLE_API_ADDR gives it one of its own.
    #[arg(long, env = "DURABLE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Address of the management API (/v1/…) on its own, so that /metrics need not share its
    /// exposure.
    #[arg(long, env = "DURABLE_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// PEM certificate chain the management API serves https with (with DURABLE_API_TLS_KEY).
    #[arg(long, env = "DURABLE_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "DURABLE_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<std::path::PathBuf>,
    /// Most records a partition applies and commits in one group.
    #[arg(long, env = "DURABLE_BATCH", default_value_t = defaults::BATCH)]
    pub batch: usize,
    /// Largest event (encoded record value) a processor applies; larger records go to the
    /// dead-letter topic with their first 64 KiB. Keep it at or below the brokers'
    /// message.max.bytes (1 MB by default).
    #[arg(long, env = "DURABLE_MAX_EVENT_BYTES", default_value_t = defaults::MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// How often each partition looks for due timers.
    #[arg(long, env = "DURABLE_TIMER_INTERVAL", default_value = defaults::TIMER_INTERVAL, value_parser = humantime::parse_duration)]
    pub timer_interval: Duration,
    /// Send each activity invocation to the partition of its own id, so that a fan-out's
    /// activities run on every processor. By default an activity runs in its caller's partition
    /// right after the commit that scheduled it, and its reply is applied there too, which saves
    /// two trips through the broker.
    #[arg(long, env = "DURABLE_SPREAD_ACTIVITIES")]
    pub spread_activities: bool,
    /// How long one activity call may run past its start or its last heartbeat
    /// (ActivityContext::heartbeat): past it the call fails with kind `Timeout` (the caller's
    /// retry policy applies) and its partition goes on.
    #[arg(long, env = "DURABLE_ACTIVITY_TIMEOUT", default_value = defaults::ACTIVITY_TIMEOUT, value_parser = humantime::parse_duration)]
    pub activity_timeout: Duration,
    /// Most activity calls running at once in this process, across all its partitions; more wait
    /// for room.
    #[arg(long, env = "DURABLE_ACTIVITY_CONCURRENCY", default_value_t = defaults::ACTIVITY_CONCURRENCY)]
    pub activity_concurrency: usize,
    /// Most bytes of live orchestrations each owned partition keeps in memory: a running
    /// orchestration's code stays suspended between its steps, so a step continues it instead
    /// of replaying its whole history. Past it the least recently stepped are dropped (they
    /// replay at their next step). 0 replays every step.
    #[arg(long, env = "DURABLE_LIVE_BYTES", default_value_t = crate::partition::Settings::LIVE_LIMIT)]
    pub live_bytes: usize,
    /// Most bytes of instance records (as stored) each owned partition keeps in memory between
    /// its groups, to save loading them again; past it the least recently used leave.
    #[arg(long, env = "DURABLE_CACHE_BYTES", default_value_t = crate::partition::Settings::CACHE_BYTES)]
    pub cache_bytes: usize,
    /// The deployment secret: processors seal every record they produce to <prefix>.events with
    /// it, and a record without a valid seal may only start, raise, signal or terminate
    /// (schemas/README.md, "Who may send what"). At least 16 bytes; during a rotation give
    /// several, comma separated: the first seals, all are accepted. Unset, the processors share
    /// a random one kept in Redis (<prefix>:secret).
    #[arg(long, env = "DURABLE_SECRET", hide_env_values = true, value_delimiter = ',')]
    pub secret: Vec<Secret>,
    /// Largest entity state, orchestration output or custom status (bytes; it travels in a state
    /// record, so keep it under DURABLE_MAX_EVENT_BYTES): an operation that would store more
    /// fails with kind StateTooLarge and changes nothing; an orchestration fails with it.
    #[arg(long, env = "DURABLE_MAX_STATE_BYTES", default_value_t = Limits::default().max_state_bytes)]
    pub max_state_bytes: usize,
    /// Largest orchestration history (approximate bytes of the current generation): past it the
    /// orchestration fails with kind HistoryTooLarge. Long-running ones use continue_as_new.
    #[arg(long, env = "DURABLE_MAX_HISTORY_BYTES", default_value_t = Limits::default().max_history_bytes)]
    pub max_history_bytes: usize,
    /// Most external events an orchestration buffers before a wait_for_event takes them; more
    /// are dead-lettered.
    #[arg(long, env = "DURABLE_MAX_INBOX", default_value_t = Limits::default().max_inbox)]
    pub max_inbox: usize,
    /// Most operations waiting at a locked entity; more are dead-lettered (calls get QueueFull).
    #[arg(long, env = "DURABLE_MAX_ENTITY_QUEUE", default_value_t = Limits::default().max_entity_queue)]
    pub max_entity_queue: usize,
    /// Most new commands one orchestration issues in one step: past it, it fails with kind
    /// FanOutTooLarge.
    #[arg(long, env = "DURABLE_MAX_FAN_OUT", default_value_t = Limits::default().max_fan_out)]
    pub max_fan_out: usize,
    /// Longest delay an event may ask for (WithDelay, past the time it arrives), e.g. `30d`: one
    /// asking for more is dead-lettered. Parked events wait in Redis until they are due.
    #[arg(long, env = "DURABLE_MAX_DELAY", default_value = defaults::MAX_DELAY, value_parser = humantime::parse_duration)]
    pub max_delay: Duration,
    /// Most bytes of events one instance keeps waiting in its record (for its start, its
    /// resume, a wait_for_event, its creation limit's ledger, or a lock), together: the event
    /// that would pass it is dead-lettered (a call gets QueueFull).
    #[arg(long, env = "DURABLE_MAX_BUFFERED_BYTES", default_value_t = Limits::default().max_buffered_bytes)]
    pub max_buffered_bytes: usize,
    /// Most events sent with a delay (WithDelay, from a client or an outside producer) that
    /// wait parked for one instance at a time; more are dead-lettered. Their bytes count
    /// against DURABLE_MAX_BUFFERED_BYTES too.
    #[arg(long, env = "DURABLE_MAX_DELAYED", default_value_t = Limits::default().max_delayed)]
    pub max_delayed: usize,
    /// How old (or how far ahead of this processor's clock) an event the API sealed may be
    /// when it is applied, e.g. `24h`: an older one is dead-lettered, as it can no longer be told
    /// from a captured record sent again (a redrive seals it anew).
    #[arg(long, env = "DURABLE_MAX_SEALED_AGE", default_value = defaults::MAX_SEALED_AGE, value_parser = humantime::parse_duration)]
    pub max_sealed_age: Duration,
    /// How long finished instances are kept before they are purged: a duration for every
    /// type (`30d`), and/or per orchestration or entity name, comma separated, e.g.
    /// `7d,Transfer=1h,Cart=30m`. Counted from when an orchestration completes, fails or is
    /// terminated, or an entity's state is deleted. Unset: kept until purged by hand.
    #[arg(long, env = "DURABLE_RETENTION")]
    pub retention: Option<String>,
    /// How long the store keeps the small record a purged instance leaves (its duplicate
    /// detection marks) before it expires.
    #[arg(long, env = "DURABLE_PURGE_GRACE", default_value = defaults::PURGE_GRACE, value_parser = humantime::parse_duration)]
    pub purge_grace: Duration,
    /// Who may do what (bearer tokens, anonymous access, creation policies).
    #[command(flatten)]
    pub auth: AuthConfig,
    /// A Typesense search-only API key (documents:search on the <prefix>_* collections): the
    /// API derives from it the scoped keys it gives out (POST /v1/search/key), each limited to
    /// what its principal may read. The admin key stays with the projector.
    #[arg(long, env = "DURABLE_TYPESENSE_SEARCH_KEY", hide_env_values = true)]
    pub typesense_search_key: Option<Secret>,
    /// Faults a test injects into this process (none: no flag or variable sets them).
    #[arg(skip)]
    pub faults: Faults,
}

/// Authentication and authorization settings (`processor/src/access.rs` has the model).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// Allow anonymous access: API requests without a bearer token, and events from outside
    /// Kafka producers when DURABLE_KAFKA_PRINCIPAL is unset, may do everything. For
    /// development only (`durable dev` runs so, and says it). Without it a processor needs a way
    /// to verify tokens (DURABLE_JWT_SECRETS or DURABLE_JWT_PUBLIC_KEYS).
    #[arg(long, env = "DURABLE_ANONYMOUS")]
    pub anonymous: bool,
    /// HS256 secrets that sign the API's bearer tokens (JWT), comma separated: during a rotation
    /// give the new one and the old one. At least 32 bytes each.
    #[arg(long, env = "DURABLE_JWT_SECRETS", hide_env_values = true, value_delimiter = ',')]
    pub jwt_secrets: Vec<Secret>,
    /// PEM files of public keys that sign bearer tokens, comma separated: an RSA key verifies
    /// RS256 tokens, an EC P-256 key ES256 tokens.
    #[arg(long, env = "DURABLE_JWT_PUBLIC_KEYS", value_delimiter = ',')]
    pub jwt_public_keys: Vec<std::path::PathBuf>,
    /// The audience (`aud`) every token must name (required with token keys).
    #[arg(long, env = "DURABLE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The issuer (`iss`) every token must name (required with token keys).
    #[arg(long, env = "DURABLE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The claim that lists a token's roles (an array of strings); `sub` is the user.
    #[arg(long, env = "DURABLE_JWT_ROLES_CLAIM", default_value = "roles")]
    pub jwt_roles_claim: String,
    /// The role that may do everything.
    #[arg(long, env = "DURABLE_ADMIN_ROLE", default_value = "admin")]
    pub admin_role: String,
    /// Who may create instances, per orchestration or entity name: comma separated
    /// `Name=rule`, rule `*` (anyone authenticated), `none` (admins only) or roles joined by
    /// `|`; `*=rule` sets the rule of unlisted names (default `*`). E.g.
    /// `Transfer=teller|manager,Vault=none`.
    #[arg(long, env = "DURABLE_CREATE_POLICY")]
    pub create_policy: Option<String>,
    /// Most live instances one user may have created, per orchestration or entity name: comma
    /// separated `Name=N`, e.g. `Transfer=5,Cart=1` (unlisted names: no limit; admins are not
    /// limited). An orchestration is live until it finishes, an entity while it holds state.
    #[arg(long, env = "DURABLE_CREATE_LIMITS")]
    pub create_limits: Option<String>,
    /// The principal events from outside Kafka producers act as: `user` or `user:role|role`.
    /// Unset: anonymous (refused unless DURABLE_ANONYMOUS). A principal written into such an
    /// event is never believed.
    #[arg(long, env = "DURABLE_KAFKA_PRINCIPAL")]
    pub kafka_principal: Option<String>,
}

impl AuthConfig {
    /// Anonymous access, no token keys: what tests and embedding start from.
    pub fn anonymous() -> Self {
        Self {
            anonymous: true,
            jwt_secrets: Vec::new(),
            jwt_public_keys: Vec::new(),
            jwt_audience: None,
            jwt_issuer: None,
            jwt_roles_claim: "roles".into(),
            admin_role: "admin".into(),
            create_policy: None,
            create_limits: None,
            kafka_principal: None,
        }
    }

    /// The authorization policy these settings give, or what is wrong with them.
    pub fn policy(&self) -> Result<Policy, String> {
        let mut policy = Policy { anonymous: self.anonymous, admin_role: self.admin_role.clone(), ..Policy::open() };
        if let Some(spec) = self.create_policy.as_deref() {
            for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (name, rule) = item.split_once('=').ok_or_else(|| {
                    format!("DURABLE_CREATE_POLICY: {item:?} is not Name=rule (rule: *, none or role|role)")
                })?;
                let rule = match rule.trim() {
                    "*" => Creation::Anyone,
                    "none" => Creation::Nobody,
                    roles => Creation::Roles(
                        roles.split('|').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect(),
                    ),
                };
                match name.trim() {
                    "*" => policy.default_creation = rule,
                    name => {
                        policy.creation.insert(name.to_owned(), rule);
                    }
                }
            }
        }
        if let Some(spec) = self.create_limits.as_deref() {
            for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let bad = || {
                    format!(
                        "DURABLE_CREATE_LIMITS: {item:?} is not Name=N (an orchestration or entity name, N from 0 to {})",
                        quota::MAX_LIMIT
                    )
                };
                let (name, limit) = item.split_once('=').ok_or_else(bad)?;
                let limit: u32 = limit.trim().parse().map_err(|_| bad())?;
                let name = name.trim();
                if limit > quota::MAX_LIMIT || crate::id::validate_name(name).is_err() {
                    return Err(bad());
                }
                policy.limits.insert(name.to_owned(), limit);
            }
        }
        if let Some(spec) = self.kafka_principal.as_deref() {
            let (user, roles) = spec.split_once(':').unwrap_or((spec, ""));
            let principal = Principal::new(user.trim(), roles.split('|').map(str::trim).filter(|r| !r.is_empty()));
            principal.check().map_err(|e| format!("DURABLE_KAFKA_PRINCIPAL: {e}"))?;
            policy.ingress = Some(principal);
        }
        Ok(policy)
    }
}

impl ProcessorConfig {
    /// A configuration with the defaults, for tests and embedding: anonymous access is on
    /// (set [`ProcessorConfig::auth`] to require tokens).
    pub fn new(brokers: &str, redis_url: &str, prefix: &str) -> Self {
        Self {
            kafka: KafkaConnection::plaintext(brokers),
            topic_settings: TopicSettings::default(),
            prefix: prefix.to_owned(),
            partitions: defaults::PARTITIONS,
            group: format!("{prefix}-processors"),
            redis_url: redis_url.to_owned(),
            redis_ca: None,
            redis_cluster: false,
            redis_allow_eviction: false,
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            api_addr: None,
            api_tls_cert: None,
            api_tls_key: None,
            batch: defaults::BATCH,
            max_event_bytes: defaults::MAX_EVENT_BYTES,
            timer_interval: defaults::duration(defaults::TIMER_INTERVAL),
            spread_activities: false,
            activity_timeout: defaults::duration(defaults::ACTIVITY_TIMEOUT),
            activity_concurrency: defaults::ACTIVITY_CONCURRENCY,
            live_bytes: crate::partition::Settings::LIVE_LIMIT,
            cache_bytes: crate::partition::Settings::CACHE_BYTES,
            secret: Vec::new(),
            max_state_bytes: Limits::default().max_state_bytes,
            max_history_bytes: Limits::default().max_history_bytes,
            max_inbox: Limits::default().max_inbox,
            max_entity_queue: Limits::default().max_entity_queue,
            max_fan_out: Limits::default().max_fan_out,
            max_delay: defaults::duration(defaults::MAX_DELAY),
            max_buffered_bytes: Limits::default().max_buffered_bytes,
            max_delayed: Limits::default().max_delayed,
            max_sealed_age: defaults::duration(defaults::MAX_SEALED_AGE),
            retention: None,
            purge_grace: defaults::duration(defaults::PURGE_GRACE),
            auth: AuthConfig::anonymous(),
            typesense_search_key: None,
            faults: Faults::default(),
        }
    }

    /// The limits the engine enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.max_state_bytes,
            max_history_bytes: self.max_history_bytes,
            max_inbox: self.max_inbox,
            max_entity_queue: self.max_entity_queue,
            max_fan_out: self.max_fan_out,
            max_delay_ms: self.max_delay.as_millis().min(i64::MAX as u128) as i64,
            max_buffered_bytes: self.max_buffered_bytes,
            max_delayed: self.max_delayed,
            max_sealed_age_ms: self.max_sealed_age.as_millis().min(i64::MAX as u128) as i64,
            ..Limits::default()
        }
    }

    /// The retention periods of [`ProcessorConfig::retention`], or what is wrong with them.
    pub fn retention(&self) -> Result<Retention, String> {
        let mut retention = Retention::default();
        let Some(spec) = self.retention.as_deref() else { return Ok(retention) };
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = |why: String| {
                format!("DURABLE_RETENTION: {item:?} {why} (a duration such as 7d or 12h, or Name=duration)")
            };
            let (name, period) = match item.split_once('=') {
                Some((name, period)) => (Some(name.trim()), period.trim()),
                None => (None, item),
            };
            let period = humantime::parse_duration(period).map_err(|e| bad(format!("is not a duration: {e}")))?;
            let ms = i64::try_from(period.as_millis()).map_err(|_| bad("is too long".into()))?;
            match name {
                Some(name) => {
                    crate::id::validate_name(name).map_err(|e| bad(format!("names no type: {e}")))?;
                    retention.by_name.insert(name.to_owned(), ms);
                }
                None => retention.default = Some(ms),
            }
        }
        Ok(retention)
    }

    /// How long an emptied record stays, in ms.
    pub fn purge_grace_ms(&self) -> u64 {
        u64::try_from(self.purge_grace.as_millis()).unwrap_or(u64::MAX)
    }

    /// The topics of this prefix.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.prefix)
    }

    /// The events topic.
    pub fn events_topic(&self) -> String {
        self.topics().events
    }

    /// The compacted state-record topic.
    pub fn state_topic(&self) -> String {
        self.topics().state
    }

    /// The dead-letter topic.
    pub fn dead_topic(&self) -> String {
        self.topics().dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's defaults and `ProcessorConfig::new`'s are the same values, and the
    /// engine's limits are what a processor runs with when nothing is set.
    #[test]
    fn every_default_is_stated_once() {
        use clap::{Args as _, FromArgMatches as _};
        // The defaults alone: no environment variable counts.
        let command = ProcessorConfig::augment_args(clap::Command::new("processor")).mut_args(|a| a.env(None));
        let matches = command.try_get_matches_from(["processor"]).expect("no argument is required");
        let parsed = ProcessorConfig::from_arg_matches(&matches).expect("the defaults parse");
        let made = ProcessorConfig::new("127.0.0.1:9092", "redis://127.0.0.1:6379", "durable");
        assert_eq!(parsed.limits(), made.limits());
        assert_eq!(parsed.limits(), Limits::default());
        assert_eq!(
            (parsed.partitions, parsed.batch, parsed.max_event_bytes, parsed.timer_interval, parsed.activity_timeout),
            (made.partitions, made.batch, made.max_event_bytes, made.timer_interval, made.activity_timeout)
        );
        assert_eq!(
            (parsed.activity_concurrency, parsed.live_bytes, parsed.cache_bytes, parsed.purge_grace),
            (made.activity_concurrency, made.live_bytes, made.cache_bytes, made.purge_grace)
        );
    }

    #[test]
    fn creation_policies_and_the_kafka_principal_read_from_their_settings() {
        let mut auth = AuthConfig::anonymous();
        auth.anonymous = false;
        auth.create_policy = Some("Transfer=teller|manager, Vault=none,*=staff".into());
        auth.kafka_principal = Some("shop-backend:producer|staff".into());
        let policy = auth.policy().unwrap();
        assert!(!policy.anonymous);
        assert_eq!(policy.creation["Transfer"], Creation::Roles(["teller".into(), "manager".into()].into()));
        assert_eq!(policy.creation["Vault"], Creation::Nobody);
        assert_eq!(policy.default_creation, Creation::Roles(["staff".into()].into()));
        assert_eq!(policy.ingress, Some(Principal::new("shop-backend", ["producer", "staff"])));
        auth.create_limits = Some("Transfer=5, Cart=0".into());
        let policy = auth.policy().unwrap();
        assert_eq!(policy.limits, [("Transfer".to_owned(), 5), ("Cart".to_owned(), 0)].into());
        for bad in ["Transfer", "Transfer=-1", "Transfer=10001", "Trans fer=3", "=3"] {
            auth.create_limits = Some(bad.into());
            assert!(auth.policy().unwrap_err().contains("is not Name=N"), "{bad}");
        }
        auth.create_limits = None;
        auth.create_policy = Some("Transfer".into());
        assert!(auth.policy().unwrap_err().contains("is not Name=rule"));
        auth.create_policy = None;
        auth.kafka_principal = Some(":admin".into());
        assert!(auth.policy().unwrap_err().contains("needs a user"));
    }
}

/// Faults a test injects into a processor it runs in its own process
/// ([`ProcessorConfig::faults`]), to reach what a bug would: none by default, and nothing outside
/// code sets them.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Groups this process's workers start (together) before one of them panics — once, right
    /// after taking its records off its queue, as a bug would kill it.
    worker_panic_after: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Faults {
    /// A worker panics at the start of the `groups`th group this process applies.
    pub fn worker_panic_after(groups: u64) -> Self {
        Self { worker_panic_after: Some(std::sync::Arc::new(groups.into())) }
    }

    /// Called by a worker as it starts a group: panics if this is the one.
    pub fn before_group(&self, partition: u32) {
        use std::sync::atomic::Ordering;
        let Some(left) = &self.worker_panic_after else { return };
        if left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1) {
            panic!("an injected fault: the worker of partition {partition} dies with its group taken");
        }
    }
}
