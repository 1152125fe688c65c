//! The API's writes: each becomes an event produced to `<prefix>.events` on the caller's behalf,
//! checked first (authentication, the body's size and shape, whether the caller may send it,
//! whether the instance's status allows it); the operator actions one by one or in batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use durable_schemas::{Action, Envelope, Event};
use rdkafka::producer::FutureRecord;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::lists::page;
use super::query::{list_query, Endpoint, ListQuery, Start};
use super::{caller, may_send, stored};
use crate::access::{with_principal, Principal};
use crate::history::Body;
use crate::id::InstanceId;
use crate::requests::{self, Write};
use crate::runtime::{now_ms, Shared};

/// The request body, refused with 413 past the largest event the processor accepts
/// (`DURABLE_MAX_EVENT_BYTES`): a body larger than that could never be produced as an event.
///
/// Past the limit the rest is read and dropped (up to [`DRAIN_FACTOR`] times the limit) before
/// the answer: a client still sending when the server answers and closes may see the connection
/// reset instead of the 413 that says what to change.
pub(super) async fn read(shared: &Shared, raw: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    use axum::body::HttpBody;
    let limit = shared.config.max_event_bytes;
    let mut body = std::pin::pin!(raw);
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::bad_body(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(kept.into())
}

/// How far past the limit a refused body is still read (and dropped) before the 413.
const DRAIN_FACTOR: usize = 4;

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
pub(super) async fn send(
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
        return Err(ApiError::too_large(shared.config.max_event_bytes));
    }
    let topic = shared.config.events_topic();
    let headers = crate::runtime::produce::sealed(shared, envelope.target.as_bytes(), &bytes);
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
        ApiError::kafka_unavailable(format!("cannot produce to {topic}: {e}; is the broker running? (DURABLE_BROKERS)"))
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

/// The operator writes that depend on the instance's status are checked against the stored
/// record before they are sent (409 with what to do instead; the engine decides again when it
/// applies them); a restart takes its input from the record.
async fn fits(shared: &Shared, write: &Write<'_>, request: &mut requests::Request) -> Result<(), ApiError> {
    use crate::history::OrchestrationStatus as S;
    let Write::Operator { action, .. } = *write else { return Ok(()) };
    if action == Action::Terminate {
        return Ok(());
    }
    let id = &request.target;
    let record = stored(shared, id)
        .await?
        .filter(|r| !matches!(r.body, Body::Empty))
        .ok_or_else(|| ApiError::no_instance(id))?;
    let conflict = ApiError::wrong_status;
    match (&record.body, action) {
        (Body::Orchestration(h), Action::Suspend) if !matches!(h.status, S::Running) => {
            Err(conflict(format!("{id} is {}: only a running orchestration can be suspended", h.status.word())))
        }
        (Body::Orchestration(h), Action::Resume) if !matches!(h.status, S::Suspended { .. }) => {
            Err(conflict(format!("{id} is {}: only a suspended orchestration can be resumed", h.status.word())))
        }
        (body, Action::Purge) => crate::engine::purge_refusal(id, body).map_or(Ok(()), |why| Err(conflict(why))),
        (Body::Orchestration(h), Action::Restart) if !h.status.is_finished() => Err(conflict(format!(
            "{id} is {}: only a completed, failed or terminated orchestration is restarted (terminate it first)",
            h.status.word()
        ))),
        (Body::Orchestration(h), Action::Rewind) => {
            crate::engine::rewind_refusal(&id.canonical(), h).map_or(Ok(()), |why| Err(conflict(why)))
        }
        (Body::Orchestration(h), Action::Restart) => {
            request.event = Event::StartOrchestration { input: h.input.clone() };
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `POST /v1/orchestrations/{name}`.
pub(super) async fn start(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Start { name: &name }, raw).await
}

/// `POST /v1/entities/{name}/{key}/{operation}`.
pub(super) async fn signal(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((name, key, operation)): Path<(String, String, String)>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Signal { name: &name, key: &key, operation: &operation }, raw).await
}

/// `POST /v1/instances/{id}/events/{event}`.
pub(super) async fn raise(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, event)): Path<(String, String)>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Raise { id: &id, event: &event }, raw).await
}

/// `POST /v1/instances/{id}/access`.
pub(super) async fn change_access(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: axum::body::Body,
) -> ApiResult {
    write(&shared, &headers, Write::Access { id: &id }, raw).await
}

/// `POST /v1/instances/{id}/{action}`: one of the operator actions ([`Action::OPERATOR`]).
pub(super) async fn operate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    raw: axum::body::Body,
) -> ApiResult {
    let action = operator(&action)?;
    write(&shared, &headers, Write::Operator { action, id: &id }, raw).await
}

/// The operator action a path names; 404 `unknown_action` with the actions otherwise.
fn operator(word: &str) -> Result<Action, ApiError> {
    word.parse::<Action>().ok().filter(|a| a.is_operator()).ok_or_else(|| {
        let words: Vec<&str> = Action::OPERATOR.iter().map(|a| a.as_str()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_action",
            format!("no action {word:?}: actions are {}", words.join(", ")),
        )
    })
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
pub(super) async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    raw: axum::body::Body,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let action = operator(&action)?;
    let bytes = read(&shared, raw).await?;
    let body: BatchBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        BatchBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_body(format!("{e}; the body is {{\"reason\": …, \"dry_run\": true|false, \"event_id\": …}}"))
        })?
    };
    let ListQuery { filter, limit, start } = list_query(query.as_deref(), Endpoint::Batch)?;
    let Start::Id(cursor) = start else { unreachable!("a batch walks by id") };
    let (found, next) = page(&shared, principal.as_ref(), &filter, limit, cursor).await?;
    let (mut sent, mut refused, mut reasons) = (0, 0, Vec::new());
    if !body.dry_run {
        for summary in &found {
            let id = summary.instance.as_str();
            let event_id = body.event_id.as_ref().map(|e| format!("{e}/{id}"));
            let each = if !action.takes_reason() {
                json!({ "event_id": event_id })
            } else {
                json!({ "reason": body.reason, "event_id": event_id })
            }
            .to_string();
            match act(&shared, principal.as_ref(), Write::Operator { action, id }, each.as_bytes()).await {
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
