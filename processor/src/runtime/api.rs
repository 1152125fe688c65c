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
//! | `GET /v1/instances?kind=&name=&status=&updated_from=&updated_before=&created_from=&created_before=&order=&limit=&cursor=` | list instances (the index, [`crate::index`]), most recently changed first or by id (`order=id`): a page of summaries and the cursor of the next |
//! | `GET /v1/counts?kind=&name=&status=` | how many instances per type and status |
//! | `GET /v1/instances/{id}` | status, input/output/failure or entity state, versions, times, the actions allowed now |
//! | `GET /v1/instances/{id}/history?offset=&limit=` | an orchestration's commands, deliveries and inbox; an entity's lock and queue (each list paged: at most 1,000 entries) |
//! | `POST /v1/orchestrations/{name}` `{"key"?, "input"?, "event_id"?}` | start (or restart a finished) orchestration |
//! | `POST /v1/entities/{name}/{key}/{operation}` `{"input"?, "event_id"?}` | signal an entity |
//! | `POST /v1/instances/{id}/events/{event}` `{"payload"?, "event_id"?}` | raise an external event |
//! | `POST /v1/instances/{id}/terminate` `{"reason"?, "event_id"?}` | terminate a running orchestration (and the sub-orchestrations it waits for) |
//! | `POST /v1/instances/{id}/suspend`, `…/resume`, `…/purge`, `…/restart`, `…/rewind` | operate an instance (one route, [`ACTION_PATH`]; see `README.md`, "Operating instances") |
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
//!
//! # Layout
//! - this file: the route table ([`routes`]), the anonymous-write guard, and what every
//!   handler asks first (who calls, the stored record, whether the caller may send an event);
//! - [`error`]: every refusal the API gives, as constructors of [`ApiError`];
//! - [`query`]: the one query-string parser (the listings' filter, the history's page);
//! - `views`: an instance's status view (with the actions allowed now) and its history;
//! - `lists`: listing and counting instances from the index;
//! - `writes`: the writes, the operator actions ([`durable_schemas::Action`]) one by one or in
//!   batches;
//! - `admin`: search keys, accepting a loss of state, dead letters.

use std::sync::Arc;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use durable_schemas::{Action, Event};

use super::Shared;
use crate::access::{holds, Operation, Principal};
use crate::history::{Body, InstanceRecord};
use crate::id::InstanceId;
use crate::requests;
use crate::store::Store as _;

mod admin;
pub mod error;
mod lists;
pub mod query;
#[cfg(test)]
mod tests;
mod views;
mod writes;

pub use admin::{scoped_search_key, SEARCH_KEY_TTL};
pub use error::{ApiError, ApiResult};
pub use lists::COUNT_BUDGET;
pub use query::{list_query, Endpoint, ListQuery, Page, Start, MAX_LIST, MAX_PAGE};
pub use views::{history_view, instance_view};

/// The path of the operator actions ([`Action::OPERATOR`]): `openapi.yaml` documents each as
/// its own path (`/v1/instances/{id}/terminate`, …).
pub const ACTION_PATH: &str = "/v1/instances/{id}/{action}";

/// The API's routes: every path with its handlers. A path with static segments wins over
/// [`ACTION_PATH`] (`/history`, `/access`).
fn routes() -> Vec<(&'static str, MethodRouter<Arc<Shared>>)> {
    vec![
        ("/v1/registry", get(views::registry)),
        ("/v1/instances", get(lists::list)),
        ("/v1/counts", get(lists::counts)),
        ("/v1/instances/{id}", get(views::instance)),
        ("/v1/instances/{id}/history", get(views::history)),
        ("/v1/instances/{id}/events/{event}", post(writes::raise)),
        ("/v1/instances/{id}/access", post(writes::change_access)),
        (ACTION_PATH, post(writes::operate)),
        ("/v1/orchestrations/{name}", post(writes::start)),
        ("/v1/entities/{name}/{key}/{operation}", post(writes::signal)),
        ("/v1/batch/{action}", post(writes::batch)),
        ("/v1/search/key", post(admin::search_key)),
        ("/v1/partitions/{partition}/accept-loss", post(admin::accept_loss)),
        ("/v1/dead", get(admin::dead_list)),
        ("/v1/dead/{id}", get(admin::dead_show)),
        ("/v1/dead/{id}/redrive", post(admin::dead_redrive)),
    ]
}

/// Every path the API serves, as `openapi.yaml` documents them: [`ACTION_PATH`] spelled out
/// once per operator action.
pub fn paths() -> Vec<String> {
    routes()
        .into_iter()
        .flat_map(|(path, _)| match path {
            ACTION_PATH => Action::OPERATOR.iter().map(|a| path.replace("{action}", a.as_str())).collect(),
            _ => vec![path.to_owned()],
        })
        .collect()
}

/// The API routes, the console's and the anonymous-write guard.
pub fn router(shared: Arc<Shared>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| router.route(path, handlers))
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
        .map_err(ApiError::store_unavailable)?
        .remove(0);
    stored.map(|s| InstanceRecord::from_blob(&s.blob)).transpose().map_err(|e| ApiError::corrupt_state(e.to_string()))
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
        _ => Err(ApiError::no_instance(id)),
    }
}

/// Who the request acts for: its bearer token's principal, `None` when anonymous (where that
/// is allowed); 401 otherwise.
fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let authorization = match headers.get(AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?),
    };
    shared.auth.principal(authorization).map_err(ApiError::unauthenticated)
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
        Err(reason) if !reason.starts_with("Forbidden: ") => Err(ApiError::bad_body(reason)),
        // Refused: say so to whoever may see the instance (or was refused creating it); to
        // anyone else it does not exist — an instance that does not exist yet, nobody may read.
        Err(reason)
            if (exists && holds(policy, principal, &access, Operation::Read))
                || (!exists && reason.contains(" may not create ")) =>
        {
            Err(ApiError::forbidden(reason))
        }
        Err(_) => Err(ApiError::no_instance(target)),
    }
}

fn parse_id(id: &str) -> Result<InstanceId, ApiError> {
    Ok(requests::parse_id(id)?)
}
