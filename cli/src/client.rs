//! The management API client: JSON over HTTP, errors turned into one line that says what to do.

use std::time::Duration;

use durable_schemas::Action;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::exit;

/// An error to print (one line) and the exit code it means.
#[derive(Debug)]
pub struct CliError {
    /// The message, saying what to do.
    pub message: String,
    /// The exit code.
    pub exit: u8,
}

impl CliError {
    /// The API refused (exit 4).
    pub fn refused(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: exit::REFUSED }
    }

    /// Wrong arguments or unreachable (exit 2).
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: exit::USAGE_OR_UNREACHABLE }
    }
}

/// Characters kept as they are in a path segment; everything else is percent-encoded (ids
/// contain `:` and their keys may contain anything).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b':');

/// One path segment, percent-encoded.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A processor's management API.
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:9464`), anonymous.
    pub fn new(base: &str) -> Result<Self, CliError> {
        Self::with(base, None, None)
    }

    /// A client of the API at `base` (`http://` or `https://`) sending `token` as its bearer
    /// token, trusting `ca` (a PEM file) besides the system's roots for https.
    pub fn with(base: &str, token: Option<&str>, ca: Option<&std::path::Path>) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            CliError::unreachable(format!("--api/DURABLE_API {base:?} is not a URL ({e}); e.g. http://127.0.0.1:9464"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::unreachable(format!(
                "--api/DURABLE_API {base:?} is not an http:// or https:// URL; e.g. http://127.0.0.1:9464"
            )));
        }
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(30));
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                CliError::unreachable("--token/DURABLE_TOKEN is not a token (it holds characters a header cannot)")
            })?;
            value.set_sensitive(true);
            builder = builder.default_headers([(reqwest::header::AUTHORIZATION, value)].into_iter().collect());
        }
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| {
                CliError::unreachable(format!("--api-ca/DURABLE_API_CA: cannot read {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                CliError::unreachable(format!(
                    "--api-ca/DURABLE_API_CA: {} is not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| CliError::unreachable(format!("cannot create an HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        CliError::unreachable(format!(
            "cannot reach the Durable API at {}: is a processor or `durable dev` running? set DURABLE_API or --api ({})",
            self.base,
            root_cause(e)
        ))
    }

    async fn answer(&self, response: Result<reqwest::Response, reqwest::Error>) -> Result<Option<Value>, CliError> {
        let response = response.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| {
            CliError::unreachable(format!(
                "{} answered {status} with something that is not the Durable API's JSON ({e}): is DURABLE_API the right address?",
                self.base
            ))
        })?;
        if status.is_success() {
            return Ok(Some(body));
        }
        if status == reqwest::StatusCode::NOT_FOUND && body["code"] == "not_found" {
            return Ok(None);
        }
        let message = body["message"].as_str().unwrap_or("no message").to_owned();
        let code = body["code"].as_str().unwrap_or("error");
        if status.is_client_error() {
            Err(CliError::refused(format!("{message} ({code})")))
        } else {
            Err(CliError::unreachable(format!("the API at {} failed: {message} ({code})", self.base)))
        }
    }

    /// Send a request, again while the API answers 503 (its store or Kafka is unavailable for a
    /// moment, e.g. while Redis restarts): backing off from 200 ms to 2 s, for up to
    /// [`RETRY_FOR`]. Writes carry an event id, so a retried one is applied once.
    async fn send(&self, request: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let response = request().send().await?;
            if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || started.elapsed() + backoff > RETRY_FOR
            {
                return Ok(response);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// `GET path`; `None` if the instance does not exist.
    async fn get_optional(&self, path: &str) -> Result<Option<Value>, CliError> {
        let response = self.send(|| self.http.get(format!("{}{path}", self.base))).await;
        self.answer(response).await
    }

    /// `GET path`; a missing instance is an error (exit 4).
    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.get_optional(path).await?.ok_or_else(|| {
            CliError::refused(format!(
                "no such instance at {}{path}: start it first, or check the name and key (ids look like orch:<name>:<key>)",
                self.base
            ))
        })
    }

    /// `POST path` with a JSON body. A write without an `event_id` gets a fresh one, so that
    /// its retries are one event.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let mut body = body.clone();
        if let Some(fields) = body.as_object_mut().filter(|f| !f.contains_key("event_id") || f["event_id"].is_null()) {
            fields.insert("event_id".into(), Value::String(fresh_event_id()));
        }
        let response = self.send(|| self.http.post(format!("{}{path}", self.base)).json(&body)).await;
        self.answer(response).await?.ok_or_else(|| CliError::refused(format!("{path}: not found")))
    }
}

/// The API's routes, one method each (the paths `openapi.yaml` documents); writes answer with
/// where the event landed (`{"instance", "event_id", "partition", "offset"}`).
impl Api {
    /// `GET /status`: the processor's liveness and ownership.
    pub async fn status(&self) -> Result<Value, CliError> {
        self.get("/status").await
    }

    /// `GET /v1/instances/{id}`: its status view (an error, exit 4, if there is none).
    pub async fn instance(&self, id: &str) -> Result<Value, CliError> {
        self.get(&format!("/v1/instances/{}", segment(id))).await
    }

    /// `GET /v1/instances/{id}`, `None` while it does not exist (or may not be read).
    pub async fn instance_if_any(&self, id: &str) -> Result<Option<Value>, CliError> {
        self.get_optional(&format!("/v1/instances/{}", segment(id))).await
    }

    /// `GET /v1/instances/{id}/history`.
    pub async fn history(&self, id: &str) -> Result<Value, CliError> {
        self.get(&format!("/v1/instances/{}/history", segment(id))).await
    }

    /// `GET /v1/instances?<query>`: one page of summaries and the cursor of the next.
    pub async fn list(&self, query: &[String]) -> Result<Value, CliError> {
        self.get(&format!("/v1/instances?{}", query.join("&"))).await
    }

    /// `GET /v1/counts?<query>`.
    pub async fn counts(&self, query: &[String]) -> Result<Value, CliError> {
        self.get(&format!("/v1/counts?{}", query.join("&"))).await
    }

    /// `POST /v1/orchestrations/{name}` with `{"key"?, "input"?, "event_id"?}`.
    pub async fn start(&self, name: &str, body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/orchestrations/{}", segment(name)), body).await
    }

    /// `POST /v1/entities/{name}/{key}/{operation}` with `{"input"?, "event_id"?}`.
    pub async fn signal(&self, name: &str, key: &str, operation: &str, body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/entities/{}/{}/{}", segment(name), segment(key), segment(operation)), body).await
    }

    /// `POST /v1/instances/{id}/events/{event}` with `{"payload"?, "event_id"?}`.
    pub async fn raise(&self, id: &str, event: &str, body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/instances/{}/events/{}", segment(id), segment(event)), body).await
    }

    /// `POST /v1/instances/{id}/{action}`: an operator action, with `{"reason"?, "event_id"?}`.
    pub async fn operate(&self, id: &str, action: Action, body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/instances/{}/{action}", segment(id)), body).await
    }

    /// `POST /v1/instances/{id}/access`: share, revoke, transfer, add an owner.
    pub async fn access(&self, id: &str, body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/instances/{}/access", segment(id)), body).await
    }

    /// `POST /v1/batch/{action}?<query>`: one page of an operator action over a filter.
    pub async fn batch(&self, action: Action, query: &[String], body: &Value) -> Result<Value, CliError> {
        self.post(&format!("/v1/batch/{action}?{}", query.join("&")), body).await
    }

    /// `POST /v1/search/key`: a Typesense key scoped to what the caller may read.
    pub async fn search_key(&self) -> Result<Value, CliError> {
        self.post("/v1/search/key", &serde_json::json!({})).await
    }

    /// `POST /v1/partitions/{partition}/accept-loss`.
    pub async fn accept_loss(&self, partition: u32) -> Result<Value, CliError> {
        self.post(&format!("/v1/partitions/{partition}/accept-loss"), &serde_json::json!({})).await
    }

    /// `GET /v1/dead?limit=&cursor=`: a page of dead letters, newest first.
    pub async fn dead_letters(&self, limit: usize, cursor: Option<&str>) -> Result<Value, CliError> {
        let cursor = cursor.map(|c| format!("&cursor={}", segment(c))).unwrap_or_default();
        self.get(&format!("/v1/dead?limit={limit}{cursor}")).await
    }

    /// `GET /v1/dead/{id}`.
    pub async fn dead_letter(&self, id: &str) -> Result<Value, CliError> {
        self.get(&format!("/v1/dead/{}", segment(id))).await
    }

    /// `POST /v1/dead/{id}/redrive`.
    pub async fn redrive(&self, id: &str) -> Result<Value, CliError> {
        self.post(&format!("/v1/dead/{}/redrive", segment(id)), &serde_json::json!({})).await
    }
}

/// How long the CLI retries a request the API answers with 503.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// A unique event id for a write of this process (`cli-<pid>-<nanoseconds>-<n>`).
fn fresh_event_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("cli-{}-{nanos}-{n}", std::process::id())
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_ids_readable_and_escape_the_rest() {
        assert_eq!(segment("orch:HelloSequence:k1"), "orch:HelloSequence:k1");
        assert_eq!(segment("entity:Account:a b/c?"), "entity:Account:a%20b%2Fc%3F");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Api::new("http://127.0.0.1:9464/").is_ok());
        assert_eq!(Api::new("127.0.0.1:9464").err().map(|e| e.exit), Some(exit::USAGE_OR_UNREACHABLE));
        assert!(Api::new("https://x").is_ok());
        assert_eq!(Api::new("ftp://x").err().map(|e| e.exit), Some(exit::USAGE_OR_UNREACHABLE));
        let bad = Api::with("http://x", Some("a\nb"), None).err().map(|e| e.message).unwrap_or_default();
        assert!(bad.contains("not a token") && !bad.contains("a\nb"), "{bad}");
    }
}
