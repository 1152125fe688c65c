//! The processor's HTTP server: the management API ([`super::api`]), `/metrics` (Prometheus
//! text format) and `/status` (JSON liveness and ownership).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use tokio_rustls::rustls;

use super::{Shared, Workers};
use crate::metrics;

/// The TLS settings of the management API (`DURABLE_API_TLS_CERT`/`_KEY`), if it serves https.
pub fn api_tls(config: &crate::config::ProcessorConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.api_tls_cert, &config.api_tls_key) else { return Ok(None) };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("DURABLE_API_TLS_CERT: cannot read certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("DURABLE_API_TLS_CERT: {} holds no PEM certificate", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("DURABLE_API_TLS_KEY: cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
        .map_err(|e| anyhow::anyhow!("DURABLE_API_TLS_CERT/KEY do not make a TLS server: {e}"))?;
    Ok(Some(Arc::new(tls)))
}

/// Serve `app` on `listener` until the task is aborted: plain HTTP, or https with `tls`.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, tls: Option<Arc<rustls::ServerConfig>>) {
    let Some(tls) = tls else {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            // A client that never finishes its handshake holds nothing for long.
            let Ok(Ok(stream)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The processor's listeners, bound before anything else starts (a taken port fails at once).
pub struct Listeners {
    /// `/metrics` and `/status`, and the API when it has no address of its own.
    metrics: tokio::net::TcpListener,
    /// The management API, when `DURABLE_API_ADDR` gives it its own address.
    api: Option<tokio::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listeners {
    /// Bind the configured addresses and read the API's TLS settings.
    pub async fn bind(config: &crate::config::ProcessorConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let metrics = tokio::net::TcpListener::bind(config.metrics_addr).await.with_context(|| {
            format!("cannot listen on {} for /metrics: set DURABLE_METRICS_ADDR", config.metrics_addr)
        })?;
        let tls = api_tls(config)?;
        let api =
            match config.api_addr {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr} for the management API: set DURABLE_API_ADDR")
                })?),
                None => None,
            };
        Ok(Self { metrics, api, tls })
    }

    /// Serve the API, `/metrics` and `/status`: the address of `/metrics` and the server tasks.
    pub fn serve(
        self,
        shared: &Arc<Shared>,
        workers: &Arc<Workers>,
    ) -> anyhow::Result<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
        let addr = self.metrics.local_addr()?;
        let status = status_router(shared.clone(), workers.clone());
        let api = super::api::router(shared.clone());
        Ok(match self.api {
            None => (addr, vec![tokio::spawn(serve(self.metrics, api.merge(status), self.tls))]),
            Some(listener) => (
                addr,
                vec![tokio::spawn(serve(self.metrics, status, None)), tokio::spawn(serve(listener, api, self.tls))],
            ),
        })
    }
}

/// `/metrics` and `/status`.
pub fn status_router(shared: Arc<Shared>, workers: Arc<Workers>) -> Router {
    Router::new()
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
        )
}
