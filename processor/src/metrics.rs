//! Prometheus metrics of the processor, on one dedicated registry served at `/metrics`.
//! Labels are `partition` and `outcome` — never an instance id.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Label: the Kafka partition of `<prefix>.events`.
pub const PARTITION: &str = "partition";
/// Label: what happened to an event.
pub const OUTCOME: &str = "outcome";

/// The collectors.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `durable_events_total{partition, outcome}`: outcome is applied, dropped or dead.
    pub events: IntCounterVec,
    /// `durable_commits_total{partition}`: instance writes committed.
    pub commits: IntCounterVec,
    /// `durable_commit_conflicts_total{partition}`: writes that lost the compare-and-set.
    pub conflicts: IntCounterVec,
    /// `durable_reruns_total{partition}`: steps re-run after a conflict.
    pub reruns: IntCounterVec,
    /// `durable_dead_letters_total{partition}`.
    pub dead_letters: IntCounterVec,
    /// `durable_offsets_skipped_total{partition}`: offsets of the events topic never delivered
    /// (transaction markers, aborted transactions, records removed by retention, compaction or
    /// `DeleteRecords` before they were read).
    pub offsets_skipped: IntCounterVec,
    /// `durable_worker_restarts_total{partition}`: partition workers that died (a panic, a fatal
    /// error) while the partition stayed owned; it is read again from its last stored offset.
    pub worker_restarts: IntCounterVec,
    /// `durable_seal_secret_changes_total`: times the deployment secret kept in Redis changed
    /// under this processor (Redis lost it and another processor kept a new one).
    pub seal_changes: IntCounterVec,
    /// `durable_undeliverable_total{topic}`: outgoing records (topic `events` or `state`) the
    /// producer or the broker refused as too large or malformed, dead-lettered instead.
    pub undeliverable: IntCounterVec,
    /// `durable_commit_latency_seconds{partition}`: one group commit round trip.
    pub commit_latency: HistogramVec,
    /// `durable_batch_latency_seconds`: from fetch to offset stored, per batch.
    pub batch_latency: Histogram,
    /// `durable_produce_latency_seconds`: from the first record of a group's output enqueued to
    /// the last one acknowledged by the broker.
    pub produce_latency: Histogram,
    /// `durable_timer_backlog{partition}`: parked plus unacknowledged timers.
    pub timer_backlog: IntGaugeVec,
    /// `durable_consumer_lag{partition}`: records behind the partition's high watermark.
    pub consumer_lag: IntGaugeVec,
    /// `durable_state_lost{partition}`: 1 while the partition is stopped because the store lost
    /// state of it (until an operator accepts the loss).
    pub state_lost: IntGaugeVec,
    /// `durable_store_durable`: 1 if the store's settings make an acknowledged commit survive
    /// a crash of the store (see `/status`), 0 if not.
    pub store_durable: IntGaugeVec,
    /// `durable_activities_total{partition, outcome}`: outcome is completed, failed or panicked.
    pub activities: IntCounterVec,
    /// `durable_activities_cancelled_total`: running activity calls cancelled because their
    /// caller no longer waited for them.
    pub activities_cancelled: IntCounterVec,
    /// `durable_record_cache_total{partition, outcome}`: instances of a group found in the
    /// partition's record cache (hit) or loaded from the store (miss).
    pub record_cache: IntCounterVec,
    /// `durable_live_steps_total{partition}`: orchestration steps that continued the code kept
    /// in memory instead of replaying the history.
    pub live_steps: IntCounterVec,
    /// `durable_local_steps_deferred_total{partition}`: steps of a local round whose commit was
    /// left to their caller's next step (each one commit fewer).
    pub deferred: IntCounterVec,
    /// `durable_live_evictions_total{partition}`: live orchestrations dropped to stay within
    /// DURABLE_LIVE_BYTES (each replays at its next step).
    pub live_evictions: IntCounterVec,
    /// `durable_live_orchestrations{partition}`: orchestrations kept live now.
    pub live_orchestrations: IntGaugeVec,
    /// `durable_live_bytes{partition}`: about how many bytes they hold.
    pub live_bytes: IntGaugeVec,
    /// `durable_owned_partitions`: partitions this processor owns now.
    pub owned: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let buckets = vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    let commit_latency = HistogramVec::new(
        HistogramOpts::new("durable_commit_latency_seconds", "Redis group-commit round trip").buckets(buckets.clone()),
        &[PARTITION],
    )
    .expect("valid metric");
    registry.register(Box::new(commit_latency.clone())).expect("registered once");
    let batch_latency = Histogram::with_opts(
        HistogramOpts::new("durable_batch_latency_seconds", "Fetch to offset stored, per batch")
            .buckets(buckets.clone()),
    )
    .expect("valid metric");
    registry.register(Box::new(batch_latency.clone())).expect("registered once");
    let produce_latency = Histogram::with_opts(
        HistogramOpts::new("durable_produce_latency_seconds", "A group's output, first enqueued to last acknowledged")
            .buckets(buckets),
    )
    .expect("valid metric");
    registry.register(Box::new(produce_latency.clone())).expect("registered once");
    let metrics = Metrics {
        events: counter(&registry, "durable_events_total", "Events read, by outcome", &[PARTITION, OUTCOME]),
        commits: counter(&registry, "durable_commits_total", "Instance writes committed", &[PARTITION]),
        conflicts: counter(
            &registry,
            "durable_commit_conflicts_total",
            "Writes that lost the etag check",
            &[PARTITION],
        ),
        reruns: counter(&registry, "durable_reruns_total", "Steps re-run after a conflict", &[PARTITION]),
        dead_letters: counter(
            &registry,
            "durable_dead_letters_total",
            "Events sent to the dead-letter topic",
            &[PARTITION],
        ),
        offsets_skipped: counter(
            &registry,
            "durable_offsets_skipped_total",
            "Offsets of the events topic never delivered (gaps in the log)",
            &[PARTITION],
        ),
        seal_changes: counter(
            &registry,
            "durable_seal_secret_changes_total",
            "Times the deployment secret kept in Redis changed under this processor",
            &[],
        ),
        worker_restarts: counter(
            &registry,
            "durable_worker_restarts_total",
            "Partition workers that died while their partition stayed owned (read again from the last stored offset)",
            &[PARTITION],
        ),
        undeliverable: counter(
            &registry,
            "durable_undeliverable_total",
            "Outgoing records refused as too large or malformed, dead-lettered instead",
            &["topic"],
        ),
        activities: counter(&registry, "durable_activities_total", "Activity runs, by outcome", &[PARTITION, OUTCOME]),
        activities_cancelled: counter(
            &registry,
            "durable_activities_cancelled_total",
            "Running activity calls cancelled because their caller no longer waited for them",
            &[],
        ),
        timer_backlog: gauge(&registry, "durable_timer_backlog", "Parked and unacknowledged timers", &[PARTITION]),
        consumer_lag: gauge(&registry, "durable_consumer_lag", "Records behind the high watermark", &[PARTITION]),
        state_lost: gauge(
            &registry,
            "durable_state_lost",
            "1 while the partition is stopped because the store lost state of it",
            &[PARTITION],
        ),
        store_durable: gauge(
            &registry,
            "durable_store_durable",
            "1 if an acknowledged commit survives a crash of the store",
            &[],
        ),
        record_cache: counter(
            &registry,
            "durable_record_cache_total",
            "Instances found in the record cache or loaded",
            &[PARTITION, OUTCOME],
        ),
        live_steps: counter(
            &registry,
            "durable_live_steps_total",
            "Orchestration steps that continued live code instead of replaying the history",
            &[PARTITION],
        ),
        deferred: counter(
            &registry,
            "durable_local_steps_deferred_total",
            "Local-round steps whose commit was left to the caller's next step",
            &[PARTITION],
        ),
        live_evictions: counter(
            &registry,
            "durable_live_evictions_total",
            "Live orchestrations dropped to stay within DURABLE_LIVE_BYTES",
            &[PARTITION],
        ),
        live_orchestrations: gauge(
            &registry,
            "durable_live_orchestrations",
            "Orchestrations kept live in memory",
            &[PARTITION],
        ),
        live_bytes: gauge(&registry, "durable_live_bytes", "Approximate bytes of live orchestrations", &[PARTITION]),
        owned: gauge(&registry, "durable_owned_partitions", "Partitions owned by this processor", &[]),
        commit_latency,
        batch_latency,
        produce_latency,
        registry,
    };
    // Label-less families (and those with a fixed set of labels) show from the start, at zero.
    metrics.owned.with_label_values(&[] as &[&str]);
    for topic in ["events", "state"] {
        metrics.undeliverable.with_label_values(&[topic]);
    }
    metrics
});

/// The text exposition of every metric.
pub fn render() -> String {
    let families = METRICS.registry.gather();
    prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
}
