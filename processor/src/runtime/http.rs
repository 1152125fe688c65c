//! The processor's HTTP server: the management API ([`super::api`]), `/metrics` (Prometheus
//! text format) and `/status` (JSON liveness and ownership).

use std::sync::Arc;

use axum::routing::get;
use axum::Json;

use super::{Shared, Workers};
use crate::metrics;

/// Serve until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, workers: Arc<Workers>) {
    let app = super::api::router(shared.clone())
        .route(
            "/metrics",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render()) }),
        )
        .route(
            "/status",
            get(move || {
                let (shared, workers) = (shared.clone(), workers.clone());
                async move {
                    use rdkafka::consumer::Consumer as _;
                    let mut assigned: Vec<i32> = shared
                        .consumer
                        .assignment()
                        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
                        .unwrap_or_default();
                    assigned.sort();
                    let mut active = workers.all();
                    active.sort();
                    let lost: Vec<u32> = shared.lost.lock().expect("lost lock").iter().copied().collect();
                    let store = match &shared.store_health {
                        Some(h) => serde_json::json!({
                            "kind": "redis",
                            "durable": h.durable(),
                            "appendonly": h.appendonly,
                            "appendfsync": h.appendfsync,
                            "maxmemory_policy": h.maxmemory_policy,
                            "replicas": h.replicas,
                        }),
                        None => serde_json::json!({ "kind": "memory", "durable": false }),
                    };
                    Json(serde_json::json!({
                        "status": if lost.is_empty() { "ok" } else { "state_lost" },
                        "events_topic": shared.config.events_topic(),
                        "group": shared.config.group,
                        "partitions": assigned,
                        "active_partitions": active,
                        "lost_partitions": lost,
                        "store": store,
                    }))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
