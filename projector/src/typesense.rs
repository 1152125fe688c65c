//! A small Typesense client over `reqwest`: collections, aliases, bulk import, single-document
//! reads and deletes, search. Every call distinguishes "Typesense is unreachable or failing"
//! ([`TsError::Unavailable`], retried by the caller) from "Typesense refused this request"
//! ([`TsError::Refused`]).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum TsError {
    /// Down, slow, or answering 5xx: retry later.
    #[error("Typesense unavailable: {0}")]
    Unavailable(String),
    /// A 4xx answer: the request itself is wrong.
    #[error("Typesense refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Typesense's message.
        message: String,
    },
}

/// One line of a bulk import's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportResult {
    /// Whether the document was written.
    pub success: bool,
    /// Why not.
    pub error: Option<String>,
}

/// A Typesense server.
#[derive(Debug, Clone)]
pub struct Typesense {
    base: String,
    key: String,
    http: reqwest::Client,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl Typesense {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8108`, or `https://…`: TLS by
    /// rustls against the bundled web roots) with `api_key`.
    pub fn new(base: &str, api_key: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::with_ca(base, api_key, timeout, None)
    }

    /// [`Typesense::new`], trusting the CA certificate in PEM file `ca` (for an `https://` server
    /// whose certificate a CA of its own signed) besides the web roots.
    pub fn with_ca(base: &str, api_key: &str, timeout: Duration, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(timeout);
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the Typesense CA certificate {} (DURABLE_TYPESENSE_CA): {e}",
                    path.display()
                )
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("{} is not a PEM certificate (DURABLE_TYPESENSE_CA): {e}", path.display())
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build()?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), key: api_key.to_owned(), http })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), TsError> {
        let response = request
            .header("X-TYPESENSE-API-KEY", &self.key)
            .send()
            .await
            .map_err(|e| TsError::Unavailable(format!("{} ({e})", self.base)))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| TsError::Unavailable(format!("{} ({e})", self.base)))?;
        if status >= 500 {
            return Err(TsError::Unavailable(format!("{} answered {status}: {body}", self.base)));
        }
        Ok((status, body))
    }

    fn refused(status: u16, body: &str) -> TsError {
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.to_owned());
        TsError::Refused { status, message }
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Option<Value>, TsError> {
        let (status, body) = self.call(request).await?;
        match status {
            200..=299 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| TsError::Unavailable(format!("unexpected answer ({e}): {body}"))),
            404 => Ok(None),
            _ => Err(Self::refused(status, &body)),
        }
    }

    /// `GET /health`.
    pub async fn healthy(&self) -> bool {
        matches!(self.json(self.http.get(format!("{}/health", self.base))).await, Ok(Some(v)) if v["ok"] == true)
    }

    /// The collection an alias points to.
    pub async fn alias(&self, alias: &str) -> Result<Option<String>, TsError> {
        let v = self.json(self.http.get(format!("{}/aliases/{}", self.base, enc(alias)))).await?;
        Ok(v.and_then(|v| v["collection_name"].as_str().map(str::to_owned)))
    }

    /// Point `alias` at `collection` (atomically, for readers).
    pub async fn set_alias(&self, alias: &str, collection: &str) -> Result<(), TsError> {
        let request = self
            .http
            .put(format!("{}/aliases/{}", self.base, enc(alias)))
            .json(&json!({ "collection_name": collection }));
        match self.json(request).await? {
            Some(_) => Ok(()),
            None => Err(TsError::Refused { status: 404, message: format!("no collection {collection}") }),
        }
    }

    /// All aliases: (alias, collection).
    pub async fn aliases(&self) -> Result<Vec<(String, String)>, TsError> {
        let v = self.json(self.http.get(format!("{}/aliases", self.base))).await?.unwrap_or_default();
        Ok(v["aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| Some((x["name"].as_str()?.to_owned(), x["collection_name"].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A collection's schema, if it exists.
    pub async fn collection(&self, name: &str) -> Result<Option<Value>, TsError> {
        self.json(self.http.get(format!("{}/collections/{}", self.base, enc(name)))).await
    }

    /// Create a collection from `schema` (its `name` included); an existing one is fine.
    pub async fn create_collection(&self, schema: &Value) -> Result<(), TsError> {
        let (status, body) = self.call(self.http.post(format!("{}/collections", self.base)).json(schema)).await?;
        match status {
            200..=299 | 409 => Ok(()),
            _ => Err(Self::refused(status, &body)),
        }
    }

    /// Drop a collection (a missing one is fine).
    pub async fn drop_collection(&self, name: &str) -> Result<(), TsError> {
        self.json(self.http.delete(format!("{}/collections/{}", self.base, enc(name)))).await.map(|_| ())
    }

    /// One document, if present.
    pub async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, TsError> {
        self.json(self.http.get(format!("{}/collections/{}/documents/{}", self.base, enc(collection), enc(id)))).await
    }

    /// Delete one document (a missing one is fine).
    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), TsError> {
        self.json(self.http.delete(format!("{}/collections/{}/documents/{}", self.base, enc(collection), enc(id))))
            .await
            .map(|_| ())
    }

    /// Bulk import `docs` with `action` (`upsert`, `emplace`); one result per document.
    pub async fn import(&self, collection: &str, action: &str, docs: &[Value]) -> Result<Vec<ImportResult>, TsError> {
        let mut body = String::new();
        for d in docs {
            body.push_str(&d.to_string());
            body.push('\n');
        }
        let url = format!("{}/collections/{}/documents/import?action={action}", self.base, enc(collection));
        let (status, text) = self.call(self.http.post(url).header("content-type", "text/plain").body(body)).await?;
        if !(200..300).contains(&status) {
            return Err(Self::refused(status, &text));
        }
        let results: Vec<ImportResult> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|_| json!({ "success": false, "error": l }));
                ImportResult { success: v["success"] == true, error: v["error"].as_str().map(str::to_owned) }
            })
            .collect();
        if results.len() != docs.len() {
            return Err(TsError::Unavailable(format!(
                "import answered {} lines for {} documents",
                results.len(),
                docs.len()
            )));
        }
        Ok(results)
    }

    /// Search: `params` are Typesense's query parameters (`q`, `query_by`, `filter_by`, …).
    pub async fn search(&self, collection: &str, params: &[(&str, &str)]) -> Result<Value, TsError> {
        let url = format!("{}/collections/{}/documents/search", self.base, enc(collection));
        let v = self.json(self.http.get(url).query(params)).await?;
        v.ok_or_else(|| TsError::Refused { status: 404, message: format!("no collection or alias {collection}") })
    }
}
