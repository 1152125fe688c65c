//! The API's one query-string parser: pairs percent-decoded, every key checked against what the
//! endpoint takes (an unknown one is a 400 that lists them), numbers, times, words and cursors
//! read with messages that say what is wrong; the listings' filter and the history's page
//! are read with it.

use std::ops::RangeInclusive;

use super::error::ApiError;
use crate::index::{Cursor, Filter, Since};

/// Most commands, deliveries, inbox events or queued operations one history page lists.
pub const MAX_PAGE: usize = 1000;

/// Most instances one listing returns.
pub const MAX_LIST: usize = 1000;

/// A query string, read: its pairs in order, each key one the endpoint takes.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Read `query`: a 400 for bad percent-encoding or a key not in `takes`.
    pub fn parse(query: Option<&str>, takes: &[&str]) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| ApiError::bad_query(format!("{key}: bad percent-encoding")))?;
            if !takes.contains(&key) {
                let list = match takes {
                    [] => "nothing".to_owned(),
                    [one] => (*one).to_owned(),
                    [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
                };
                return Err(ApiError::bad_query(format!(
                    "unknown query parameter {key:?}: this endpoint takes {list}"
                )));
            }
            pairs.push((key.to_owned(), value));
        }
        Ok(Self { pairs })
    }

    /// The value of `key` (the last one given).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A whole number within `range`, if given.
    pub fn number(&self, key: &str, range: RangeInclusive<usize>) -> Result<Option<usize>, ApiError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let n = value
            .parse::<usize>()
            .map_err(|_| ApiError::bad_query(format!("{key} must be a whole number, not {value:?}")))?;
        if !range.contains(&n) {
            return Err(ApiError::bad_query(format!(
                "{key} must be between {} and {}, not {value:?}",
                range.start(),
                range.end()
            )));
        }
        Ok(Some(n))
    }

    /// A time in ms since the Unix epoch, if given.
    pub fn time(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_query(format!("{key} is ms since the Unix epoch, not {v:?}")))
            })
            .transpose()
    }
}

/// Which endpoint a listing query is for: each takes its own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v1/instances`: the filter, a page, and its order.
    List,
    /// `POST /v1/batch/{action}`: the filter and a page, always in id order (a complete walk:
    /// the actions change the instances as it goes).
    Batch,
    /// `GET /v1/counts`: kind, name and status only.
    Counts,
}

/// Where a listing starts, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Most recently changed first (`order=changed`, the default of `GET /v1/instances`).
    Changed(Option<Since>),
    /// Partition by partition, by id (`order=id`): a complete walk, each instance once.
    Id(Cursor),
}

/// A listing query, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Which instances.
    pub filter: Filter,
    /// Most of them in the page.
    pub limit: usize,
    /// In which order, from where.
    pub start: Start,
}

/// What a listing's query string asks for at `endpoint`; a 400 with what is wrong otherwise.
pub fn list_query(query: Option<&str>, endpoint: Endpoint) -> Result<ListQuery, ApiError> {
    const FILTER: [&str; 3] = ["kind", "name", "status"];
    const PAGE: [&str; 6] = ["updated_from", "updated_before", "created_from", "created_before", "limit", "cursor"];
    let takes: Vec<&str> = match endpoint {
        Endpoint::Counts => FILTER.to_vec(),
        Endpoint::Batch => [&FILTER[..], &PAGE].concat(),
        Endpoint::List => [&FILTER[..], &PAGE, &["order"]].concat(),
    };
    let q = Query::parse(query, &takes)?;
    let kind = match q.get("kind") {
        None => None,
        Some(k @ ("orch" | "entity")) => Some(k.to_owned()),
        Some(other) => return Err(ApiError::bad_query(format!("kind is orch or entity, not {other:?}"))),
    };
    let name = q.get("name").map(|n| crate::id::validate_name(n).map(|_| n.to_owned())).transpose();
    let name = name.map_err(|e| ApiError::bad_query(e.to_string()))?;
    if name.is_some() && kind.is_none() {
        return Err(ApiError::bad_query("name needs kind (orch or entity)"));
    }
    let status = match q.get("status") {
        None => None,
        Some(s) => match s.parse::<durable_schemas::Status>() {
            Ok(status) if durable_schemas::Status::LISTED.contains(&status) => Some(s.to_owned()),
            _ => {
                let words: Vec<&str> = durable_schemas::Status::LISTED.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::bad_query(format!("status is one of {}, not {s:?}", words.join(", "))));
            }
        },
    };
    let filter = Filter {
        kind,
        name,
        status,
        updated_from: q.time("updated_from")?,
        updated_before: q.time("updated_before")?,
        created_from: q.time("created_from")?,
        created_before: q.time("created_before")?,
    };
    let limit = q.number("limit", 1..=MAX_LIST)?.unwrap_or(100);
    let not_ours = |v: &str| ApiError::bad_query(format!("{v:?} is not a cursor this API gave out (its `next`)"));
    let start = match (endpoint, q.get("order").unwrap_or("changed")) {
        (Endpoint::List, "changed") => {
            Start::Changed(q.get("cursor").map(|v| Since::decode(v).ok_or_else(|| not_ours(v))).transpose()?)
        }
        (_, "id" | "changed") => Start::Id(
            q.get("cursor").map(|v| Cursor::decode(v).ok_or_else(|| not_ours(v))).transpose()?.unwrap_or_default(),
        ),
        (_, other) => return Err(ApiError::bad_query(format!("order is changed or id, not {other:?}"))),
    };
    Ok(ListQuery { filter, limit, start })
}

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
        let q = Query::parse(query, &["offset", "limit"])?;
        Ok(Page {
            offset: q.number("offset", 0..=usize::MAX)?.unwrap_or(0),
            limit: q.number("limit", 1..=MAX_PAGE)?.unwrap_or(MAX_PAGE),
        })
    }

    /// This page of `items`.
    pub fn list<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        items.into_iter().skip(self.offset).take(self.limit).collect()
    }
}

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
