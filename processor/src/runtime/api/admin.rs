//! What the API gives operators and search clients: scoped Typesense search keys, accepting a
//! partition's loss of state, and the dead letters (listed, shown, redriven: admins only).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::query::Query;
use super::writes::send;
use super::{caller, may_send, parse_id};
use crate::access::Principal;
use crate::runtime::dead::{self, Letter};
use crate::runtime::{now_ms, Shared};
use crate::store::Store as _;

/// How long a scoped search key is valid.
pub const SEARCH_KEY_TTL: Duration = Duration::from_secs(3600);

/// A Typesense scoped search key for the caller: derived from the search-only key
/// (`DURABLE_TYPESENSE_SEARCH_KEY`) with the filter of what the caller may read embedded, which
/// Typesense adds to every search made with it (a search's own `filter_by` is joined with `&&`).
/// Admins (and anonymous callers where anonymous access is on) get a key with no filter.
pub(super) async fn search_key(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let parent = shared.config.typesense_search_key.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "not_configured",
            "this deployment gives out no search keys: set DURABLE_TYPESENSE_SEARCH_KEY (a search-only Typesense key)",
        )
    })?;
    let filter = match &principal {
        Some(p) => crate::access::search_filter(shared.engine.policy(), p).map_err(ApiError::forbidden)?,
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
pub(super) async fn accept_loss(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(partition): Path<String>,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    if !shared.engine.policy().may_administer(principal.as_ref()) {
        return Err(ApiError::admins_only("accepting a loss of state", &shared.engine.policy().admin_role));
    }
    let p = partition.parse::<u32>().ok().filter(|p| *p < shared.partitions).ok_or_else(|| {
        ApiError::not_found(format!("no partition {partition:?}: partitions are 0 to {}", shared.partitions - 1))
    })?;
    let accepted = shared.store.accept_loss(p).await.map_err(ApiError::store_unavailable)?;
    if !accepted {
        return Err(ApiError::conflict(
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
        return Err(ApiError::admins_only(what, &shared.engine.policy().admin_role));
    }
    Ok(principal)
}

/// Run `read` with a fresh reader of the dead-letter topic, off the async threads.
async fn with_reader<T: Send + 'static>(
    shared: &Shared,
    read: impl FnOnce(&dead::Reader) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let config = shared.config.clone();
    let unavailable = |e: anyhow::Error| {
        ApiError::kafka_unavailable(format!(
            "cannot read the dead-letter topic: {e:#}; is the broker running? (DURABLE_BROKERS)"
        ))
    };
    tokio::task::spawn_blocking(move || dead::Reader::new(&config).and_then(|r| read(&r)))
        .await
        .map_err(|e| unavailable(anyhow::anyhow!("{e}")))?
        .map_err(unavailable)
}

/// `GET /v1/dead?limit=&cursor=`: the newest dead letters, newest first.
pub(super) async fn dead_list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    administers(&shared, &headers, "reading dead letters")?;
    let q = Query::parse(query.as_deref(), &["limit", "cursor"])?;
    let limit = q.number("limit", 1..=dead::MAX_LIST)?.unwrap_or(50);
    let cursor = q.get("cursor").map(dead::parse_cursor).transpose().map_err(ApiError::bad_query)?;
    let cursor = cursor.unwrap_or_else(dead::Cursor::new);
    let (letters, next) = with_reader(&shared, move |r| r.list(limit, &cursor)).await?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "topic": shared.config.dead_topic(),
            "letters": letters.iter().map(Letter::summary).collect::<Vec<_>>(),
            "next": next.as_ref().map(dead::cursor_string),
        })),
    ))
}

async fn dead_letter(shared: &Shared, id: String) -> Result<Letter, ApiError> {
    let wanted = id.clone();
    with_reader(shared, move |r| r.get(&wanted)).await?.ok_or_else(|| {
        ApiError::not_found(
            format!("no dead letter {id:?} in {}: ids are <partition>-<offset> as `durable dead list` shows them (old ones leave with the topic's retention)", shared.config.dead_topic()),
        )
    })
}

pub(super) async fn dead_show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    administers(&shared, &headers, "reading dead letters")?;
    let letter = dead_letter(&shared, id).await?;
    Ok((StatusCode::OK, Json(letter.view(&shared.config.events_topic()))))
}

pub(super) async fn dead_redrive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let principal = administers(&shared, &headers, "redriving dead letters")?;
    let letter = dead_letter(&shared, id).await?;
    let envelope = letter
        .redrivable(&shared.config.events_topic())
        .map_err(|why| ApiError::conflict("not_redrivable", format!("{} cannot be sent back: {why}", letter.id())))?;
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
async fn first_sender(shared: &Arc<Shared>, letter: &Letter) -> Result<Option<Principal>, ApiError> {
    let unknown = |why: &str| {
        ApiError::conflict(
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
