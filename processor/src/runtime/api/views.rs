//! What the API shows of an instance: its status view (with the actions a caller may take on it
//! now) and its history, paged; the registry.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiResult;
use super::query::Page;
use super::{caller, load, parse_id};
use crate::history::{Body, Completion, InstanceRecord};
use crate::id::InstanceId;
use crate::partition::payload_json;
use crate::runtime::Shared;

/// The status view of an instance (what `durable status` prints), with the actions a caller
/// may take on it now ([`durable_schemas::Status::actions`]).
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
            o.insert("state".into(), e.state.as_ref().map_or(Value::Null, payload_json));
            o.insert("locked_by".into(), e.lock.as_ref().map_or(Value::Null, |l| l.owner.clone().into()));
        }
        Body::Empty => {}
    }
    if let Some(status) = r.status() {
        o.insert("status".into(), status.as_str().into());
        o.insert("actions".into(), json!(status.actions()));
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

pub(super) async fn registry(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    caller(&shared, &headers)?;
    let (orchestrations, entities, activities) = shared.engine.registry().names();
    Ok((
        StatusCode::OK,
        Json(json!({ "orchestrations": orchestrations, "entities": entities, "activities": activities })),
    ))
}

pub(super) async fn instance(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let id = parse_id(&id)?;
    let record = load(&shared, &id, principal.as_ref()).await?;
    Ok((StatusCode::OK, Json(instance_view(&id, &record))))
}

pub(super) async fn history(
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
