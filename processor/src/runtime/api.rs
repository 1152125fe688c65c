//! The management API, served by every processor next to `/metrics` (any processor answers for
//! any instance: the state is in the store). JSON in and out; `openapi.yaml` at the repository
//! root documents it.
//!
//! Reads come from the store; writes become events produced to `<prefix>.events` — the API never
//! edits state directly, so a write goes through the same commit protocol as any other event and
//! is applied once even if the request is retried with the same `event_id`.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /v1/instances?kind=&name=&status=&updated_from=&updated_before=&created_from=&created_before=&limit=&cursor=` | list instances (the index, [`crate::index`]): a page of summaries and the cursor of the next |
//! | `GET /v1/counts?kind=&name=&status=` | how many instances per type and status |
//! | `GET /v1/instances/{id}` | status, input/output/failure or entity state, versions, times |
//! | `GET /v1/instances/{id}/history?offset=&limit=` | an orchestration's commands, deliveries and inbox; an entity's lock and queue (each list paged: at most 1,000 entries) |
//! | `POST /v1/orchestrations/{name}` `{"key"?, "input"?, "event_id"?}` | start (or restart a finished) orchestration |
//! | `POST /v1/entities/{name}/{key}/{operation}` `{"input"?, "event_id"?}` | signal an entity |
//! | `POST /v1/instances/{id}/events/{event}` `{"payload"?, "event_id"?}` | raise an external event |
//! | `POST /v1/instances/{id}/terminate` `{"reason"?, "event_id"?}` | terminate a running orchestration (and the sub-orchestrations it waits for) |
//! | `POST /v1/instances/{id}/suspend`, `…/resume`, `…/purge`, `…/restart`, `…/rewind` | operate an instance (see `README.md`, "Operating instances") |
//! | `GET /v1/registry` | the registered orchestrations, entities and activities |
//! | `POST /v1/instances/{id}/access` `{"action", "user"?, "role"?, "operations"?, "event_id"?}` | share, revoke, transfer ownership, add an owner |
//! | `POST /v1/search/key` | a Typesense key that searches only what the caller may read (an hour) |
//! | `GET /v1/dead?limit=&cursor=` | the newest dead letters, newest first ([`super::dead`]); admins only |
//! | `GET /v1/dead/{id}` | one dead letter: why, where from, its event decoded; admins only |
//! | `POST /v1/dead/{id}/redrive` | send a dead letter's event back, as a new write of the caller; admins only |
//! | `POST /v1/partitions/{partition}/accept-loss` | accept that Redis lost state of a partition its owner stopped (see `store::Taken::check`); admins only |
//!
//! Every request acts for the principal its bearer token proves ([`super::auth`]); without one
//! it is anonymous, which only a deployment with anonymous access allows (else 401). Reads need
//! `read` on the instance and answer 404 otherwise, as for an instance that does not exist
//! (existence is not leaked). A write is checked before it is sent: 403 when the principal may
//! read the instance but not do this, or may not create it; 404 when it may not even read it
//! (nobody may read an instance that does not exist yet, so an event for an orchestration not
//! started yet is a 404: wait for the start). The engine checks every event again when it applies it ([`crate::access`]).
//!
//! Errors: an HTTP status and `{"code": "...", "message": "..."}` where the message says what to
//! do. Writes answer `202 Accepted` with `{"instance", "event_id", "partition", "offset"}` once
//! Kafka acknowledged the event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use durable_schemas::{Envelope, Event};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

use super::now_ms;
use super::Shared;
use crate::access::{self, holds, with_principal, Operation, Principal};
use crate::history::{Body, Completion, InstanceRecord};
use crate::id::InstanceId;
use crate::index::{Cursor, Filter, Summary};
use crate::partition::payload_json;
use crate::requests::{self, Refusal, Write};
use crate::store::Store;

/// An API error: status, machine-readable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

/// Every path of the API (each is documented in `openapi.yaml`).
pub const PATHS: [&str; 21] = [
    "/v1/registry",
    "/v1/instances/{id}",
    "/v1/instances/{id}/history",
    "/v1/orchestrations/{name}",
    "/v1/entities/{name}/{key}/{operation}",
    "/v1/instances/{id}/events/{event}",
    "/v1/instances/{id}/terminate",
    "/v1/partitions/{partition}/accept-loss",
    "/v1/instances/{id}/access",
    "/v1/search/key",
    "/v1/instances",
    "/v1/counts",
    "/v1/instances/{id}/suspend",
    "/v1/instances/{id}/resume",
    "/v1/instances/{id}/purge",
    "/v1/instances/{id}/restart",
    "/v1/batch/{action}",
    "/v1/dead",
    "/v1/dead/{id}",
    "/v1/dead/{id}/redrive",
    "/v1/instances/{id}/rewind",
];

/// The API routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(PATHS[0], get(registry))
        .route(PATHS[1], get(instance))
        .route(PATHS[2], get(history))
        .route(PATHS[3], post(start))
        .route(PATHS[4], post(signal))
        .route(PATHS[5], post(raise))
        .route(PATHS[6], post(terminate))
        .route(PATHS[7], post(accept_loss))
        .route(PATHS[8], post(change_access))
        .route(PATHS[9], post(search_key))
        .route(PATHS[10], get(list))
        .route(PATHS[11], get(counts))
        .route(PATHS[12], post(suspend))
        .route(PATHS[13], post(resume))
        .route(PATHS[14], post(purge))
        .route(PATHS[15], post(restart))
        .route(PATHS[16], post(batch))
        .route(PATHS[17], get(dead_list))
        .route(PATHS[18], get(dead_show))
        .route(PATHS[19], post(dead_redrive))
        .route(PATHS[20], post(rewind))
        .merge(super::ui::router())
        .layer(axum::middleware::from_fn(anonymous_writes))
        .with_state(shared)
}

/// An anonymous write (no `Authorization` header: only a deployment with anonymous access
/// takes it, `durable dev` for one) must be `Content-Type: application/json` and, from a
/// browser, come from the API's own origin: a web page of another origin can then neither post
/// a form or a plain `fetch` to a local `durable dev` (a JSON body makes the browser ask first,
/// and nothing here allows it), nor pass with its `Origin` header. A request with a token is
/// decided by its token alone.
async fn anonymous_writes(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let headers = request.headers();
    let reads = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if reads || headers.contains_key(AUTHORIZATION) {
        return next.run(request).await;
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "a write without a token must be Content-Type: application/json (send {} when it has nothing to say)",
        )
        .into_response();
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok());
        let authority = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, a)| a.trim_end_matches('/'));
        if authority.is_none() || authority != host {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "a write without a token is taken only from this API's own origin (the console it serves)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The stored record of `id`, if any.
async fn stored(shared: &Shared, id: &InstanceId) -> Result<Option<InstanceRecord>, ApiError> {
    let canonical = id.canonical();
    let stored = shared
        .store
        .load(id.partition(shared.partitions), std::slice::from_ref(&canonical))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("{e}; retry later")))?
        .remove(0);
    stored
        .map(|s| InstanceRecord::from_blob(&s.blob))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_state", e.to_string()))
}

fn not_found(id: &InstanceId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no instance {id}: start it first, or check the name and key (and that you may read it)"),
    )
}

/// The record of `id` if it exists and `principal` may read it; 404 otherwise, either way.
async fn load(shared: &Shared, id: &InstanceId, principal: Option<&Principal>) -> Result<InstanceRecord, ApiError> {
    match stored(shared, id).await? {
        Some(r)
            if !matches!(r.body, Body::Empty)
                && holds(shared.engine.policy(), principal, &r.access, Operation::Read) =>
        {
            Ok(r)
        }
        _ => Err(not_found(id)),
    }
}

/// Who the request acts for: its bearer token's principal, `None` when anonymous (where that
/// is allowed); 401 otherwise.
fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let authorization = match headers.get(AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| unauthenticated("the Authorization header is not text".into()))?),
    };
    shared.auth.principal(authorization).map_err(unauthenticated)
}

fn unauthenticated(message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// Whether `principal` may send `event` to `target` as things stand: 403 when it may read the
/// instance but not do this (or may not create it), 404 when it may not even read it. The
/// engine decides again when it applies the event.
async fn may_send(
    shared: &Shared,
    principal: Option<&Principal>,
    target: &InstanceId,
    event: &Event,
) -> Result<(), ApiError> {
    let policy = shared.engine.policy();
    let record = stored(shared, target).await?;
    let (access, exists) =
        record.as_ref().map_or((Default::default(), false), |r| (r.access.clone(), !matches!(r.body, Body::Empty)));
    let decision = match event {
        Event::Access(change) => {
            let mut scratch = access.clone();
            crate::access::change(policy, principal, target, &mut scratch, change).map(|_| ())
        }
        other => {
            // The API sends no calls; what it asks is what the engine will decide.
            let op = crate::access::asks(other.core(), false, target, exists).unwrap_or(Operation::Signal);
            crate::access::decide(policy, principal, op, target, &access, exists).map(|_| ())
        }
    };
    match decision {
        Ok(()) => Ok(()),
        Err(reason) if !reason.starts_with("Forbidden: ") => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", reason))
        }
        // Refused: say so to whoever may see the instance (or was refused creating it); to
        // anyone else it does not exist — an instance that does not exist yet, nobody may read.
        Err(reason)
            if (exists && holds(policy, principal, &access, Operation::Read))
                || (!exists && reason.contains(" may not create ")) =>
        {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason))
        }
        Err(_) => Err(not_found(target)),
    }
}

/// The status view of an instance (what `durable status` prints).
pub fn instance_view(id: &InstanceId, r: &InstanceRecord) -> Value {
    let mut v = json!({
        "instance": id.canonical(),
        "kind": id.kind().prefix(),
        "name": id.name(),
        "key": id.key(),
        "version": r.version,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    });
    let o = v.as_object_mut().expect("object");
    match &r.body {
        Body::Orchestration(h) => {
            use crate::history::OrchestrationStatus as S;
            o.insert("status".into(), h.status.word().into());
            o.insert("generation".into(), h.generation.into());
            o.insert("input".into(), payload_json(&h.input));
            o.insert("custom_status".into(), h.custom_status.as_ref().map_or(Value::Null, payload_json));
            match &h.status {
                S::Completed { output } => {
                    o.insert("output".into(), payload_json(output));
                }
                S::Failed { failure } => {
                    o.insert("failure".into(), json!(failure));
                }
                S::Terminated { reason } => {
                    o.insert("reason".into(), reason.clone().into());
                }
                S::Suspended { reason, held } => {
                    o.insert("reason".into(), reason.clone().into());
                    o.insert("held".into(), held.len().into());
                }
                S::Pending => {
                    o.insert("raised".into(), h.inbox.len().into());
                }
                S::Running => {}
            }
        }
        Body::Entity(e) => {
            o.insert("status".into(), if e.state.is_some() { "active" } else { "deleted" }.into());
            o.insert("state".into(), e.state.as_ref().map_or(Value::Null, payload_json));
            o.insert("locked_by".into(), e.lock.as_ref().map_or(Value::Null, |l| l.owner.clone().into()));
        }
        Body::Empty => {
            o.insert("status".into(), "empty".into());
        }
    }
    v
}

fn completion_json(c: &Completion) -> Value {
    match c {
        Completion::Value(p) => json!({ "value": payload_json(p) }),
        Completion::Failure(f) => json!({ "failure": f }),
        Completion::Done => json!("done"),
    }
}

/// Most commands, deliveries, inbox events or queued operations one history page lists.
pub const MAX_PAGE: usize = 1000;

/// Most instances one listing returns.
pub const MAX_LIST: usize = 1000;

fn bad_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// The filter, page size and cursor a listing's query string asks for (`counts` takes only
/// kind, name and status); a 400 with what is wrong otherwise.
pub fn list_query(query: Option<&str>, counts: bool) -> Result<(Filter, usize, Cursor), ApiError> {
    let mut filter = Filter::default();
    let (mut limit, mut cursor) = (100, Cursor::default());
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad_query(format!("{key}: bad percent-encoding")))?;
        let time =
            || value.parse::<i64>().map_err(|_| bad_query(format!("{key} is ms since the Unix epoch, not {value:?}")));
        match key {
            "kind" if value == "orch" || value == "entity" => filter.kind = Some(value.clone()),
            "kind" => return Err(bad_query(format!("kind is orch or entity, not {value:?}"))),
            "name" => {
                crate::id::validate_name(&value).map_err(|e| bad_query(e.to_string()))?;
                filter.name = Some(value.clone());
            }
            "status" if STATUSES.contains(&value.as_str()) => filter.status = Some(value.clone()),
            "status" => return Err(bad_query(format!("status is one of {}, not {value:?}", STATUSES.join(", ")))),
            "updated_from" if !counts => filter.updated_from = Some(time()?),
            "updated_before" if !counts => filter.updated_before = Some(time()?),
            "created_from" if !counts => filter.created_from = Some(time()?),
            "created_before" if !counts => filter.created_before = Some(time()?),
            "limit" if !counts => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIST).contains(l))
                    .ok_or_else(|| bad_query(format!("limit must be between 1 and {MAX_LIST}, not {value:?}")))?
            }
            "cursor" if !counts => {
                cursor = Cursor::decode(&value)
                    .ok_or_else(|| bad_query(format!("{value:?} is not a cursor this API gave out (its `next`)")))?
            }
            _ => {
                let takes = if counts {
                    "kind, name and status"
                } else {
                    "kind, name, status, updated_from, updated_before, created_from, created_before, limit and cursor"
                };
                return Err(bad_query(format!("unknown query parameter {key:?}: this endpoint takes {takes}")));
            }
        }
    }
    if filter.name.is_some() && filter.kind.is_none() {
        return Err(bad_query("name needs kind (orch or entity)".into()));
    }
    Ok((filter, limit, cursor))
}

/// Every status word.
const STATUSES: [&str; 8] =
    ["running", "pending", "suspended", "completed", "failed", "terminated", "active", "deleted"];

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn store_unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("{e}; retry later"))
}

/// The summary of an index entry that matches `filter` and that `principal` may read.
fn visible(
    filter: &Filter,
    policy: &crate::access::Policy,
    principal: Option<&Principal>,
    id: &str,
    entry: &str,
) -> Option<Summary> {
    Summary::from_entry(id, entry).filter(|s| filter.matches(s) && access::reads(policy, principal, &s.readers))
}

/// `GET /v1/instances`: a page of the instances the caller may read that match the filter, in
/// (partition, id) order, and the cursor of the next page (`null` at the end). A page may hold
/// fewer than `limit` with a cursor still to follow: one request reads at most 10 × `limit` +
/// 1,000 index entries.
async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap, RawQuery(query): RawQuery) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let (filter, limit, cursor) = list_query(query.as_deref(), false)?;
    let (found, next) = page(&shared, principal.as_ref(), &filter, limit, cursor).await?;
    Ok((StatusCode::OK, Json(json!({ "instances": found, "next": next }))))
}

/// One page of the index from `cursor`: the summaries `principal` may read that match `filter`
/// (at most `limit`), and the cursor after them (`None` at the end).
async fn page(
    shared: &Shared,
    principal: Option<&Principal>,
    filter: &Filter,
    limit: usize,
    mut cursor: Cursor,
) -> Result<(Vec<Summary>, Option<String>), ApiError> {
    let policy = shared.engine.policy();
    let prefix = filter.prefix();
    let budget = limit * 10 + 1000;
    let (mut found, mut scanned) = (Vec::new(), 0);
    'partitions: while cursor.partition < shared.partitions {
        let batch = shared
            .store
            .list(cursor.partition, &prefix, cursor.after.as_deref(), (limit * 2).min(MAX_LIST))
            .await
            .map_err(store_unavailable)?;
        if batch.is_empty() {
            cursor = Cursor { partition: cursor.partition + 1, after: None };
            continue;
        }
        for (id, entry) in batch {
            scanned += 1;
            let summary = visible(filter, policy, principal, &id, &entry);
            cursor.after = Some(id);
            if let Some(summary) = summary {
                found.push(summary);
                if found.len() == limit {
                    break 'partitions;
                }
            }
        }
        if scanned >= budget {
            break;
        }
    }
    let next = (cursor.partition < shared.partitions).then(|| cursor.encode());
    Ok((found, next))
}

/// `GET /v1/counts`: how many instances the caller may read there are per type and status.
/// Admins (and anonymous access) read the counts the commits keep, one read per partition;
/// anyone else's are counted from the index entries they may read.
async fn counts(State(shared): State<Arc<Shared>>, headers: HeaderMap, RawQuery(query): RawQuery) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let (filter, _, _) = list_query(query.as_deref(), true)?;
    let policy = shared.engine.policy();
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    let mut complete = true;
    if policy.may_administer(principal.as_ref()) {
        for p in 0..shared.partitions {
            for (group, n) in shared.store.counts(p).await.map_err(store_unavailable)? {
                if n > 0 && filter.matches_group(&group) {
                    *totals.entry(group).or_default() += n;
                }
            }
        }
    } else {
        (totals, complete) =
            count_readable(&shared.store, shared.partitions, &filter, policy, principal.as_ref(), COUNT_BUDGET)
                .await
                .map_err(store_unavailable)?;
    }
    let total: u64 = totals.values().sum();
    let counts: Vec<Value> = totals
        .iter()
        .filter_map(|(group, n)| {
            let (kind, name, status) = crate::index::parse_group(group)?;
            Some(json!({ "kind": kind, "name": name, "status": status, "count": n }))
        })
        .collect();
    Ok((StatusCode::OK, Json(json!({ "counts": counts, "total": total, "complete": complete }))))
}

/// The counts per group of what `principal` may read of the instances `filter` matches, counted
/// from the index entry by entry (someone who may not read everything): at most `budget`
/// entries are read (a page more at most), then `false` says the counts are incomplete.
async fn count_readable<S: Store>(
    store: &S,
    partitions: u32,
    filter: &Filter,
    policy: &crate::access::Policy,
    principal: Option<&Principal>,
    budget: usize,
) -> Result<(std::collections::BTreeMap<String, u64>, bool), crate::store::StoreError> {
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    let prefix = filter.prefix();
    let mut read = 0;
    for p in 0..partitions {
        let mut after: Option<String> = None;
        loop {
            if read >= budget {
                return Ok((totals, false));
            }
            let batch = store.list(p, &prefix, after.as_deref(), MAX_LIST).await?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            read += batch.len();
            for (id, entry) in batch {
                if let Some(s) = visible(filter, policy, principal, &id, &entry) {
                    *totals.entry(s.group()).or_default() += 1;
                }
            }
        }
    }
    Ok((totals, true))
}

/// Most index entries one count reads for someone who may not read everything (admins' counts
/// come from the store's totals): past it the answer says `"complete": false`.
pub const COUNT_BUDGET: usize = 100_000;

/// Which part of a history to list: `?offset=N&limit=M` (default 0 and [`MAX_PAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Entries to skip in each list.
    pub offset: usize,
    /// Most entries of each list.
    pub limit: usize,
}

impl Page {
    /// The page a query string asks for; a 400 with what is wrong otherwise.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut page = Page { offset: 0, limit: MAX_PAGE };
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value.parse::<usize>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("{key} must be a whole number, not {value:?}"),
                    )
                })
            };
            match key {
                "offset" => page.offset = number()?,
                "limit" => page.limit = number()?,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("unknown query parameter {key:?}: this endpoint takes offset and limit"),
                    ))
                }
            }
        }
        if page.limit == 0 || page.limit > MAX_PAGE {
            let message = format!("limit must be between 1 and {MAX_PAGE}, not {}", page.limit);
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message));
        }
        Ok(page)
    }

    fn list<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        items.into_iter().skip(self.offset).take(self.limit).collect()
    }
}

/// The history view of an instance (what `durable history` prints): each list cut to `page`, with
/// the totals under `page`.
pub fn history_view(id: &InstanceId, r: &InstanceRecord, page: Page) -> Value {
    let totals = |lists: Value| json!({ "offset": page.offset, "limit": page.limit, "totals": lists });
    match &r.body {
        Body::Orchestration(h) => json!({
            "instance": id.canonical(),
            "status": h.status.word(),
            "generation": h.generation,
            "started_at": h.started_at,
            "input": payload_json(&h.input),
            "commands": page.list(h.commands.iter().enumerate().map(|(slot, c)| json!({
                "slot": slot, "kind": format!("{:?}", c.kind), "name": c.name, "answered": c.kind.is_answered(),
            }))),
            "deliveries": page.list(h.log.iter().map(|e| json!({
                "slot": e.slot, "at": e.at, "completion": completion_json(&e.completion),
            }))),
            "inbox": page.list(h.inbox.iter().map(|(name, p)| json!({ "name": name, "payload": payload_json(p) }))),
            "locks": h.locks.as_ref().map(|l| json!({ "participants": l.participants, "granted": l.granted })),
            "page": totals(json!({ "commands": h.commands.len(), "deliveries": h.log.len(), "inbox": h.inbox.len() })),
        }),
        Body::Entity(e) => json!({
            "instance": id.canonical(),
            "state": e.state.as_ref().map_or(Value::Null, payload_json),
            "locked_by": e.lock.as_ref().map(|l| l.owner.clone()),
            "queued": page.list(e.queue.iter().map(|q| json!({ "event": q.body.name(), "id": q.id }))),
            "page": totals(json!({ "queued": e.queue.len() })),
        }),
        Body::Empty => json!({ "instance": id.canonical() }),
    }
}

async fn registry(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    caller(&shared, &headers)?;
    let (orchestrations, entities, activities) = shared.engine.registry().names();
    Ok((
        StatusCode::OK,
        Json(json!({ "orchestrations": orchestrations, "entities": entities, "activities": activities })),
    ))
}

async fn instance(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let id = parse_id(&id)?;
    let record = load(&shared, &id, principal.as_ref()).await?;
    Ok((StatusCode::OK, Json(instance_view(&id, &record))))
}

async fn history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let id = parse_id(&id)?;
    let page = Page::parse(query.as_deref())?;
    let record = load(&shared, &id, principal.as_ref()).await?;
    Ok((StatusCode::OK, Json(history_view(&id, &record, page))))
}

/// The request body, refused with 413 past the largest event the processor accepts
/// (`DURABLE_MAX_EVENT_BYTES`): a body larger than that could never be produced as an event.
///
/// Past the limit the rest is read and dropped (up to [`DRAIN_FACTOR`] times the limit) before
/// the answer: a client still sending when the server answers and closes may see the connection
/// reset instead of the 413 that says what to change.
async fn read(shared: &Shared, raw: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    use axum::body::HttpBody;
    let limit = shared.config.max_event_bytes;
    let mut body = std::pin::pin!(raw);
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok(kept.into())
}

/// How far past the limit a refused body is still read (and dropped) before the 413.
const DRAIN_FACTOR: usize = 4;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request is larger than the largest event accepted, {limit} bytes (DURABLE_MAX_EVENT_BYTES)"),
    )
}

static SENT: AtomicU64 = AtomicU64::new(0);

/// A fresh event id: unique per process and time.
fn event_id() -> String {
    format!("api-{}-{}-{}", std::process::id(), now_ms(), SENT.fetch_add(1, Ordering::Relaxed))
}

fn registered(names: Vec<String>, name: &str, what: &str) -> Result<(), ApiError> {
    if names.iter().any(|n| n == name) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_registered",
        format!("no {what} named {name:?} is registered; registered: {}", names.join(", ")),
    ))
}

/// Produce `body` to `target` on behalf of `principal` and answer with where it landed.
async fn send(
    shared: &Shared,
    principal: Option<&Principal>,
    target: &InstanceId,
    id: Option<String>,
    body: Event,
) -> ApiResult {
    let body = match principal {
        Some(p) => with_principal(body, p),
        None => body,
    };
    let mut envelope = Envelope::new(id.unwrap_or_else(event_id), target.canonical(), now_ms(), body);
    envelope.source = Some("api".into());
    let bytes = envelope.encode();
    if bytes.len() > shared.config.max_event_bytes {
        return Err(too_large(shared.config.max_event_bytes));
    }
    let topic = shared.config.events_topic();
    let headers = super::produce::sealed(shared, envelope.target.as_bytes(), &bytes);
    let record = FutureRecord::to(&topic).key(envelope.target.as_bytes()).payload(&bytes).headers(headers);
    let delivered = shared.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| {
        use rdkafka::types::RDKafkaErrorCode as Code;
        if matches!(e.rdkafka_error_code(), Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize)) {
            // Under the processor's limit but over the producer's or the broker's.
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the event ({} bytes) is larger than Kafka accepts: {e}", bytes.len()),
            );
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!("cannot produce to {topic}: {e}; is the broker running? (DURABLE_BROKERS)"),
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "instance": envelope.target,
            "event_id": envelope.id,
            "partition": delivered.partition,
            "offset": delivered.offset,
        })),
    ))
}

/// A refusal of [`requests::read`] with its code: 404 for a name not registered, else 400.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = if r.code == "not_registered" { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, r.code, r.message)
    }
}

fn parse_id(id: &str) -> Result<InstanceId, ApiError> {
    Ok(requests::parse_id(id)?)
}

/// Authenticate, read a write's body (413 past the limit), check it may be sent, and send its
/// event on the caller's behalf.
async fn write(shared: &Shared, headers: &HeaderMap, write: Write<'_>, raw: axum::body::Body) -> ApiResult {
    let principal = caller(shared, headers)?;
    let bytes = read(shared, raw).await?;
    act(shared, principal.as_ref(), write, &bytes).await
}

/// A write's body read: check it may be sent and fits the instance's state, and send it.
async fn act(shared: &Shared, principal: Option<&Principal>, write: Write<'_>, bytes: &[u8]) -> ApiResult {
    let mut request = requests::read(&write, bytes, event_id)?;
    let names = shared.engine.registry().names();
    match write {
        Write::Start { name } => registered(names.0, name, "orchestration")?,
        Write::Signal { name, .. } => registered(names.1, name, "entity")?,
        _ => {}
    }
    may_send(shared, principal, &request.target, &request.event).await?;
    fits(shared, &write, &mut request).await?;
    send(shared, principal, &request.target, request.event_id, request.event).await
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "wrong_status", message)
}

/// The operator writes that depend on the instance's status are checked against the stored
/// record before they are sent (409 with what to do instead; the engine decides again when it
/// applies them); a restart takes its input from the record.
async fn fits(shared: &Shared, write: &Write<'_>, request: &mut requests::Request) -> Result<(), ApiError> {
    use crate::history::OrchestrationStatus as S;
    if !matches!(
        write,
        Write::Suspend { .. }
            | Write::Resume { .. }
            | Write::Purge { .. }
            | Write::Restart { .. }
            | Write::Rewind { .. }
    ) {
        return Ok(());
    }
    let id = &request.target;
    let record = stored(shared, id).await?.filter(|r| !matches!(r.body, Body::Empty)).ok_or_else(|| not_found(id))?;
    match (&record.body, write) {
        (Body::Orchestration(h), Write::Suspend { .. }) if !matches!(h.status, S::Running) => {
            Err(conflict(format!("{id} is {}: only a running orchestration can be suspended", h.status.word())))
        }
        (Body::Orchestration(h), Write::Resume { .. }) if !matches!(h.status, S::Suspended { .. }) => {
            Err(conflict(format!("{id} is {}: only a suspended orchestration can be resumed", h.status.word())))
        }
        (body, Write::Purge { .. }) => crate::engine::purge_refusal(id, body).map_or(Ok(()), |why| Err(conflict(why))),
        (Body::Orchestration(h), Write::Restart { .. }) if !h.status.is_finished() => Err(conflict(format!(
            "{id} is {}: only a completed, failed or terminated orchestration is restarted (terminate it first)",
            h.status.word()
        ))),
        (Body::Orchestration(h), Write::Rewind { .. }) => {
            crate::engine::rewind_refusal(&id.canonical(), h).map_or(Ok(()), |why| Err(conflict(why)))
        }
        (Body::Orchestration(h), Write::Restart { .. }) => {
            request.event = Event::StartOrchestration { input: h.input.clone() };
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn start(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Start { name: &name }, raw).await
}

async fn signal(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((name, key, operation)): Path<(String, String, String)>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Signal { name: &name, key: &key, operation: &operation }, raw).await
}

async fn raise(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, event)): Path<(String, String)>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Raise { id: &id, event: &event }, raw).await
}

async fn terminate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Terminate { id: &id }, raw).await
}

async fn suspend(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Suspend { id: &id }, raw).await
}

async fn resume(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Resume { id: &id }, raw).await
}

async fn purge(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Purge { id: &id }, raw).await
}

async fn restart(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Restart { id: &id }, raw).await
}

async fn rewind(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Rewind { id: &id }, raw).await
}

/// The body of a batch operation.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    reason: Option<String>,
    #[serde(default)]
    dry_run: bool,
    /// Makes a retried page one request: each instance's event id is `<event_id>/<instance>`.
    event_id: Option<String>,
}

/// Most refusals one batch page reports one by one (the rest are counted).
const MAX_REPORTED: usize = 20;

/// `POST /v1/batch/{action}?<the filter of GET /v1/instances>`: do `action` (terminate,
/// suspend, resume, purge or restart) to one page of the instances the caller may read that
/// match, each checked and sent like its own request; answer how many matched, were sent and
/// were refused (with the first reasons), and the cursor of the next page. With `dry_run` only
/// count. Clients call again with `cursor` until `next` is null (`durable batch` does, showing
/// progress).
async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    raw: axum::body::Body,
) -> ApiResult {
    const ACTIONS: [&str; 6] = ["terminate", "suspend", "resume", "purge", "restart", "rewind"];
    let principal = caller(&shared, &headers)?;
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_action",
            format!("no batch action {action:?}: actions are {}", ACTIONS.join(", ")),
        ));
    }
    let bytes = read(&shared, raw).await?;
    let body: BatchBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        BatchBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("{e}; the body is {{\"reason\": …, \"dry_run\": true|false, \"event_id\": …}}"),
            )
        })?
    };
    let (filter, limit, cursor) = list_query(query.as_deref(), false)?;
    let (found, next) = page(&shared, principal.as_ref(), &filter, limit, cursor).await?;
    let (mut sent, mut refused, mut reasons) = (0, 0, Vec::new());
    if !body.dry_run {
        for summary in &found {
            let id = summary.instance.as_str();
            let event_id = body.event_id.as_ref().map(|e| format!("{e}/{id}"));
            let each = if action == "restart" {
                json!({ "event_id": event_id })
            } else {
                json!({ "reason": body.reason, "event_id": event_id })
            }
            .to_string();
            let write = match action.as_str() {
                "terminate" => Write::Terminate { id },
                "suspend" => Write::Suspend { id },
                "resume" => Write::Resume { id },
                "purge" => Write::Purge { id },
                "rewind" => Write::Rewind { id },
                _ => Write::Restart { id },
            };
            match act(&shared, principal.as_ref(), write, each.as_bytes()).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    refused += 1;
                    if reasons.len() < MAX_REPORTED {
                        reasons.push(json!({ "instance": id, "code": e.code, "message": e.message }));
                    }
                }
            }
        }
    }
    Ok((
        StatusCode::OK,
        Json(json!({
            "action": action,
            "dry_run": body.dry_run,
            "matched": found.len(),
            "sent": sent,
            "refused": refused,
            "refusals": reasons,
            "next": next,
        })),
    ))
}

async fn change_access(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Access { id: &id }, raw).await
}

/// How long a scoped search key is valid.
pub const SEARCH_KEY_TTL: Duration = Duration::from_secs(3600);

/// A Typesense scoped search key for the caller: derived from the search-only key
/// (`DURABLE_TYPESENSE_SEARCH_KEY`) with the filter of what the caller may read embedded, which
/// Typesense adds to every search made with it (a search's own `filter_by` is joined with `&&`).
/// Admins (and anonymous callers where anonymous access is on) get a key with no filter.
async fn search_key(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let parent = shared.config.typesense_search_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            "this deployment gives out no search keys: set DURABLE_TYPESENSE_SEARCH_KEY (a search-only Typesense key)",
        )
    })?;
    let filter = match &principal {
        Some(p) => crate::access::search_filter(shared.engine.policy(), p)
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "forbidden", e))?,
        None => None,
    };
    let expires_at = (now_ms() / 1000) as u64 + SEARCH_KEY_TTL.as_secs();
    let mut params = json!({ "expires_at": expires_at });
    if let Some(filter) = &filter {
        params["filter_by"] = filter.clone().into();
    }
    let key = scoped_search_key(parent.expose(), &params.to_string());
    Ok((StatusCode::OK, Json(json!({ "key": key, "expires_at": expires_at, "filter_by": filter }))))
}

/// Typesense's scoped search key: base64 of (base64 of HMAC-SHA256(parent, params) ‖ the
/// parent's first four characters ‖ params).
pub fn scoped_search_key(parent: &str, params: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(parent.as_bytes()).expect("HMAC takes any key length");
    mac.update(params.as_bytes());
    let digest = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let prefix: String = parent.chars().take(4).collect();
    base64::engine::general_purpose::STANDARD.encode(format!("{digest}{prefix}{params}"))
}

/// An operator accepts that Redis lost state of `partition`, whose owner stopped it: the owner
/// goes on from Kafka's committed offset with what Redis still has. 409 if no loss of it is
/// recorded (an acceptance never waits for a future loss).
async fn accept_loss(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(partition): Path<String>,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    if !shared.engine.policy().may_administer(principal.as_ref()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("accepting a loss of state is for admins (role {:?})", shared.engine.policy().admin_role),
        ));
    }
    let p = partition.parse::<u32>().ok().filter(|p| *p < shared.partitions).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no partition {partition:?}: partitions are 0 to {}", shared.partitions - 1),
        )
    })?;
    let accepted = shared.store.accept_loss(p).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("{e}; retry later"))
    })?;
    if !accepted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_lost",
            format!("partition {p} has no recorded loss of state: nothing to accept (see /status lost_partitions of its owner)"),
        ));
    }
    tracing::warn!(partition = p, "an operator accepted the loss of this partition's state");
    Ok((StatusCode::ACCEPTED, Json(json!({ "partition": p, "accepted": true }))))
}

/// The dead letters are anyone's data: admins only (and anonymous access, where it is on).
fn administers(shared: &Shared, headers: &HeaderMap, what: &str) -> Result<Option<Principal>, ApiError> {
    let principal = caller(shared, headers)?;
    if !shared.engine.policy().may_administer(principal.as_ref()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} is for admins (role {:?})", shared.engine.policy().admin_role),
        ));
    }
    Ok(principal)
}

/// Run `read` with a fresh reader of the dead-letter topic, off the async threads.
async fn with_reader<T: Send + 'static>(
    shared: &Shared,
    read: impl FnOnce(&super::dead::Reader) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let config = shared.config.clone();
    let unavailable = |e: anyhow::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!("cannot read the dead-letter topic: {e:#}; is the broker running? (DURABLE_BROKERS)"),
        )
    };
    tokio::task::spawn_blocking(move || super::dead::Reader::new(&config).and_then(|r| read(&r)))
        .await
        .map_err(|e| unavailable(anyhow::anyhow!("{e}")))?
        .map_err(unavailable)
}

async fn dead_list(State(shared): State<Arc<Shared>>, headers: HeaderMap, RawQuery(query): RawQuery) -> ApiResult {
    administers(&shared, &headers, "reading dead letters")?;
    let (mut limit, mut cursor) = (50, super::dead::Cursor::new());
    for pair in query.as_deref().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad_query(format!("{key}: bad percent-encoding")))?;
        match key {
            "limit" => {
                limit = value.parse().ok().filter(|l| (1..=super::dead::MAX_LIST).contains(l)).ok_or_else(|| {
                    bad_query(format!("limit must be between 1 and {}, not {value:?}", super::dead::MAX_LIST))
                })?
            }
            "cursor" => cursor = super::dead::parse_cursor(&value).map_err(bad_query)?,
            _ => {
                return Err(bad_query(format!("unknown query parameter {key:?}: this endpoint takes limit and cursor")))
            }
        }
    }
    let (letters, next) = with_reader(&shared, move |r| r.list(limit, &cursor)).await?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "topic": shared.config.dead_topic(),
            "letters": letters.iter().map(super::dead::Letter::summary).collect::<Vec<_>>(),
            "next": next.as_ref().map(super::dead::cursor_string),
        })),
    ))
}

async fn dead_letter(shared: &Shared, id: String) -> Result<super::dead::Letter, ApiError> {
    let wanted = id.clone();
    with_reader(shared, move |r| r.get(&wanted)).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {id:?} in {}: ids are <partition>-<offset> as `durable dead list` shows them (old ones leave with the topic's retention)", shared.config.dead_topic()),
        )
    })
}

async fn dead_show(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    administers(&shared, &headers, "reading dead letters")?;
    let letter = dead_letter(&shared, id).await?;
    Ok((StatusCode::OK, Json(letter.view(&shared.config.events_topic()))))
}

async fn dead_redrive(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let principal = administers(&shared, &headers, "redriving dead letters")?;
    let letter = dead_letter(&shared, id).await?;
    let envelope = letter.redrivable(&shared.config.events_topic()).map_err(|why| {
        ApiError::new(StatusCode::CONFLICT, "not_redrivable", format!("{} cannot be sent back: {why}", letter.id()))
    })?;
    let target = parse_id(&envelope.target)?;
    let sender = first_sender(&shared, &letter).await?;
    may_send(&shared, sender.as_ref(), &target, &envelope.body).await?;
    tracing::info!(
        letter = %letter.id(),
        event_id = %envelope.id,
        target = %envelope.target,
        operator = principal.as_ref().map_or("anonymous", |p| p.user.as_str()),
        sender = sender.as_ref().map_or("anonymous", |p| p.user.as_str()),
        "an operator redrove a dead letter on behalf of its sender"
    );
    send(&shared, sender.as_ref(), &target, Some(envelope.id), envelope.body).await
}

/// Who sent the event of `letter` first (`None`: anonymous), from the record it names as its
/// source ([`crate::letter::first_sender`]). 409 when that record is gone or holds another event.
async fn first_sender(shared: &Arc<Shared>, letter: &super::dead::Letter) -> Result<Option<Principal>, ApiError> {
    let unknown = |why: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_redrivable",
            format!("{} cannot be sent back: {why}, so who sent it cannot be known (a redrive acts for its sender, never for you)", letter.id()),
        )
    };
    let Some((topic, partition, offset)) = letter.source().map(|(t, p, o)| (t.to_owned(), p, o)) else {
        return Err(unknown("it names no record it came from"));
    };
    let record = with_reader(shared, move |r| r.record(&topic, partition, offset))
        .await?
        .ok_or_else(|| unknown("the record it came from is no longer in the events topic"))?;
    let value = record.value.clone().unwrap_or_default();
    let key = record.key.clone().unwrap_or_default();
    let mac = record.header_value(durable_schemas::contract::seal::HEADER).map(str::as_bytes);
    let sealed = shared.seal.verify(&key, &value, mac);
    crate::letter::first_sender(letter, &value, sealed, shared.engine.policy().ingress.as_ref())
        .map_err(|why| unknown(&why))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count for someone who may not read everything reads at most the budget of index
    /// entries (a page more at most) and then says it is incomplete; within it, it counts only
    /// what they may read.
    #[test]
    fn counts_for_a_reader_stop_at_the_budget_and_say_so() {
        use crate::index::Summary;
        use crate::store::{Indexed, MemoryStore, Write};
        let store = MemoryStore::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let summary = |i: usize, reader: &str| Summary {
            instance: format!("entity:Counter:c{i:05}"),
            kind: "entity".into(),
            name: "Counter".into(),
            key: format!("c{i:05}"),
            status: "active".into(),
            version: 1,
            created_at: 1,
            updated_at: 1,
            readers: vec![format!("user:{reader}")],
        };
        let (partitions, per_partition) = (2u32, 1_500);
        for p in 0..partitions {
            let writes = (0..per_partition)
                .map(|i| {
                    let s = summary(p as usize * per_partition + i, if i % 3 == 0 { "alice" } else { "bob" });
                    Write {
                        id: s.instance.clone(),
                        expected: None,
                        blob: b"x".to_vec(),
                        append: false,
                        timers: vec![],
                        index: Some(Indexed::of(&s)),
                        expire: None,
                    }
                })
                .collect();
            rt.block_on(store.commit(p, writes)).expect("a commit");
        }
        let policy = crate::access::Policy::enforcing();
        let alice = Principal::new("alice", Vec::<String>::new());
        let count = |budget| {
            rt.block_on(count_readable(&store, partitions, &Filter::default(), &policy, Some(&alice), budget))
                .expect("the memory store answers")
        };
        let (all, complete) = count(10_000);
        assert!(complete);
        assert_eq!(all.get("entity:Counter|active"), Some(&1_000), "alice reads a third: {all:?}");
        let (some, complete) = count(1_000);
        assert!(!complete, "1,000 of 3,000 entries is not all of them");
        let n = some.get("entity:Counter|active").copied().unwrap_or(0);
        assert!((300..=(1_000 + MAX_LIST as u64) / 3 + 1).contains(&n), "{n} counted within the budget");
    }

    #[test]
    fn scoped_search_keys_are_typesenses() {
        // Typesense's documented example: parent key RN23GFr1s6jQ9kgSNg2O7fYcAUXU7127 with
        // {"filter_by":"company_id:124","expires_at":1906054106}.
        let key = scoped_search_key(
            "RN23GFr1s6jQ9kgSNg2O7fYcAUXU7127",
            r#"{"filter_by":"company_id:124","expires_at":1906054106}"#,
        );
        assert_eq!(
            key,
            "OW9DYWZGS1Q1RGdSbmo0S1QrOWxhbk9PL2kxbTU1eXA3bCthdmE5eXJKRT1STjIzeyJmaWx0ZXJfYnkiOiJjb21wYW55X2lkOjEyNCIsImV4cGlyZXNfYXQiOjE5MDYwNTQxMDZ9"
        );
    }

    #[test]
    fn list_queries_parse_and_say_what_is_wrong() {
        let (filter, limit, cursor) =
            list_query(Some("kind=orch&name=Approval&status=running&updated_from=5&limit=7&cursor=3"), false).unwrap();
        assert_eq!(
            (filter.kind.as_deref(), filter.name.as_deref(), filter.status.as_deref(), filter.updated_from),
            (Some("orch"), Some("Approval"), Some("running"), Some(5))
        );
        assert_eq!((limit, cursor), (7, Cursor { partition: 3, after: None }));
        assert_eq!(list_query(None, false).unwrap().1, 100);
        for (query, says) in [
            ("kind=job", "kind is orch or entity"),
            ("name=Approval", "name needs kind"),
            ("kind=orch&name=a%20b", "invalid name"),
            ("status=sleeping", "status is one of"),
            ("limit=0", "limit must be between 1 and 1000"),
            ("limit=1001", "limit must be between 1 and 1000"),
            ("cursor=zz", "not a cursor"),
            ("updated_from=yesterday", "ms since the Unix epoch"),
            ("order=asc", "unknown query parameter \"order\""),
            ("name=%zz", "bad percent-encoding"),
        ] {
            let e = list_query(Some(query), false).unwrap_err();
            assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains(says), "{query}: {}", e.message);
        }
        assert!(list_query(Some("limit=5"), true).unwrap_err().message.contains("takes kind, name and status"));
    }

    #[test]
    fn every_path_is_documented_in_openapi_yaml() {
        let spec = include_str!("../../../openapi.yaml");
        for path in PATHS {
            assert!(spec.contains(&format!("\n  {path}:\n")), "openapi.yaml documents {path}");
        }
        let documented = spec.lines().filter(|l| l.starts_with("  /v1/")).count();
        assert_eq!(documented, PATHS.len(), "openapi.yaml documents no path the API lacks");
    }
}
