//! The projector's Prometheus metrics and its small HTTP server (`/metrics`, `/status`).

use std::sync::LazyLock;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The collectors.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `durable_projector_records_total{outcome}`: projected, stale (older than the index),
    /// ignored (kinds not projected), dead (not a state record).
    pub records: IntCounterVec,
    /// `durable_projector_documents_total{action}`: upserted, deleted, rejected.
    pub documents: IntCounterVec,
    /// `durable_projector_batch_size`: records per batch.
    pub batch_size: Histogram,
    /// `durable_projector_batch_latency_seconds`: one batch into Typesense.
    pub batch_latency: Histogram,
    /// `durable_projector_lag{partition}`: records behind the feed's end.
    pub lag: IntGaugeVec,
    /// `durable_projector_retries_total`: batches retried because Typesense was unavailable.
    pub retries: IntCounterVec,
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry.register(Box::new(c.clone())).expect("registered once");
        c
    };
    let records = counter("durable_projector_records_total", "State records read, by outcome", &["outcome"]);
    let documents = counter("durable_projector_documents_total", "Typesense documents written, by action", &["action"]);
    let retries = counter("durable_projector_retries_total", "Batches retried while Typesense was unavailable", &[]);
    let batch_size = Histogram::with_opts(
        HistogramOpts::new("durable_projector_batch_size", "Records per batch")
            .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
    )
    .expect("valid metric");
    registry.register(Box::new(batch_size.clone())).expect("registered once");
    let batch_latency = Histogram::with_opts(
        HistogramOpts::new("durable_projector_batch_latency_seconds", "One batch into Typesense")
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
    )
    .expect("valid metric");
    registry.register(Box::new(batch_latency.clone())).expect("registered once");
    let lag = IntGaugeVec::new(
        Opts::new("durable_projector_lag", "Records behind the end of the state feed"),
        &["partition"],
    )
    .expect("valid metric");
    registry.register(Box::new(lag.clone())).expect("registered once");
    for outcome in ["projected", "stale", "ignored", "dead"] {
        records.with_label_values(&[outcome]);
    }
    for action in ["upserted", "deleted", "rejected"] {
        documents.with_label_values(&[action]);
    }
    retries.with_label_values(&[] as &[&str]);
    Metrics { registry, records, documents, batch_size, batch_latency, lag, retries }
});

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&METRICS.registry.gather(), &mut out).expect("encodes");
    String::from_utf8(out).expect("utf-8")
}

/// Serve `/metrics` and `/status` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()) }),
        )
        .route("/status", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
