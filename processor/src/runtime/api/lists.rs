//! Listing and counting instances from the index ([`crate::index`]): only what the caller may
//! read, a page at a time with a cursor.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::caller;
use super::error::{ApiError, ApiResult};
use super::query::{list_query, Endpoint, ListQuery, Start, MAX_LIST};
use crate::access::{self, Principal};
use crate::index::{Cursor, Filter, Since, Summary};
use crate::runtime::Shared;
use crate::store::Store;

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

/// `GET /v1/instances`: a page of the instances the caller may read that match the filter —
/// most recently changed first (`order=changed`, the default) or partition by partition by id
/// (`order=id`, a complete walk) — and the cursor of the next page (`null` at the end). A page
/// may hold fewer than `limit` with a cursor still to follow: one request reads at most
/// 10 × `limit` + 1,000 index entries.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let ListQuery { filter, limit, start } = list_query(query.as_deref(), Endpoint::List)?;
    let (found, next) = match start {
        Start::Id(cursor) => page(&shared, principal.as_ref(), &filter, limit, cursor).await?,
        Start::Changed(since) => recent_page(&shared, principal.as_ref(), &filter, limit, since).await?,
    };
    Ok((StatusCode::OK, Json(json!({ "instances": found, "next": next }))))
}

/// One page by most recent change, after `since`: each round reads the next entries of every
/// partition and consumes them newest first as far as every partition's are known, so the
/// merge is exact; `updated_before` starts the walk there, `updated_from` ends it.
async fn recent_page(
    shared: &Shared,
    principal: Option<&Principal>,
    filter: &Filter,
    limit: usize,
    mut since: Option<Since>,
) -> Result<(Vec<Summary>, Option<String>), ApiError> {
    let policy = shared.engine.policy();
    let (budget, fetch) = (limit * 10 + 1000, (limit * 2).min(MAX_LIST));
    if let (None, Some(before)) = (&since, filter.updated_before) {
        since = Some(Since { updated_at: before, id: String::new() });
    }
    let (mut found, mut scanned) = (Vec::new(), 0);
    loop {
        let before = since.as_ref().map(|s| (s.updated_at, s.id.as_str()));
        let mut merged = Vec::new();
        for p in 0..shared.partitions {
            merged.extend(shared.store.recent(p, before, fetch).await.map_err(ApiError::store_unavailable)?);
        }
        merged.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        merged.truncate(fetch);
        if merged.is_empty() || merged[0].0 < filter.updated_from.unwrap_or(i64::MIN) {
            return Ok((found, None));
        }
        for (at, id, entry) in merged {
            scanned += 1;
            let summary = visible(filter, policy, principal, &id, &entry);
            since = Some(Since { updated_at: at, id });
            if let Some(summary) = summary {
                found.push(summary);
                if found.len() == limit {
                    return Ok((found, since.map(|s| s.encode())));
                }
            }
        }
        if scanned >= budget {
            return Ok((found, since.map(|s| s.encode())));
        }
    }
}

/// One page of the index from `cursor`: the summaries `principal` may read that match `filter`
/// (at most `limit`), and the cursor after them (`None` at the end).
pub(super) async fn page(
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
            .map_err(ApiError::store_unavailable)?;
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
pub(super) async fn counts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let principal = caller(&shared, &headers)?;
    let filter = list_query(query.as_deref(), Endpoint::Counts)?.filter;
    let policy = shared.engine.policy();
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    let mut complete = true;
    if policy.may_administer(principal.as_ref()) {
        for p in 0..shared.partitions {
            for (group, n) in shared.store.counts(p).await.map_err(ApiError::store_unavailable)? {
                if n > 0 && filter.matches_group(&group) {
                    *totals.entry(group).or_default() += n;
                }
            }
        }
    } else {
        (totals, complete) =
            count_readable(&shared.store, shared.partitions, &filter, policy, principal.as_ref(), COUNT_BUDGET)
                .await
                .map_err(ApiError::store_unavailable)?;
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
pub(super) async fn count_readable<S: Store>(
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
