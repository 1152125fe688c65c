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
                    Json(serde_json::json!({
                        "status": "ok",
                        "events_topic": shared.config.events_topic(),
                        "group": shared.config.group,
                        "partitions": assigned,
                        "active_partitions": active,
                    }))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
