//! `/metrics` (Prometheus text format) and `/status` (JSON liveness and ownership).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use super::{Shared, Workers};
use crate::metrics;

/// Serve until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, workers: Arc<Workers>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render()) }),
        )
        .route(
            "/status",
            get(move || {
                let (shared, workers) = (shared.clone(), workers.clone());
                async move {
                    let mut partitions = workers.all();
                    partitions.sort();
                    Json(serde_json::json!({
                        "status": "ok",
                        "events_topic": shared.config.events_topic(),
                        "group": shared.config.group,
                        "partitions": partitions,
                    }))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
