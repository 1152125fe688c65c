//! The API's pure parts: counting budgets, search keys, query parsing, the route table against
//! `openapi.yaml`.

use super::lists::count_readable;
use super::*;
use crate::index::{Cursor, Filter};

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
    let ListQuery { filter, limit, start } = list_query(
        Some("kind=orch&name=Approval&status=running&updated_from=5&limit=7&cursor=3&order=id"),
        Endpoint::List,
    )
    .unwrap();
    let Start::Id(cursor) = start else { panic!("order=id") };
    assert_eq!(
        (filter.kind.as_deref(), filter.name.as_deref(), filter.status.as_deref(), filter.updated_from),
        (Some("orch"), Some("Approval"), Some("running"), Some(5))
    );
    assert_eq!((limit, cursor), (7, Cursor { partition: 3, after: None }));
    let default = list_query(None, Endpoint::List).unwrap();
    assert_eq!((default.limit, default.start), (100, Start::Changed(None)), "most recently changed first");
    let since = crate::index::Since { updated_at: 7, id: "orch:A:1".into() };
    let next = list_query(Some(&format!("cursor={}", since.encode())), Endpoint::List).unwrap();
    assert_eq!(next.start, Start::Changed(Some(since)));
    assert!(list_query(Some("cursor=3"), Endpoint::List).is_err(), "an id cursor is not a change cursor");
    assert!(list_query(Some("order=changed"), Endpoint::Batch)
        .unwrap_err()
        .message
        .contains("unknown query parameter"));
    for (query, says) in [
        ("kind=job", "kind is orch or entity"),
        ("name=Approval", "name needs kind"),
        ("kind=orch&name=a%20b", "invalid name"),
        ("status=sleeping", "status is one of"),
        ("limit=0", "limit must be between 1 and 1000"),
        ("limit=1001", "limit must be between 1 and 1000"),
        ("cursor=zz", "not a cursor"),
        ("updated_from=yesterday", "ms since the Unix epoch"),
        ("order=asc", "order is changed or id"),
        ("sort=asc", "unknown query parameter \"sort\""),
        ("name=%zz", "bad percent-encoding"),
    ] {
        let e = list_query(Some(query), Endpoint::List).unwrap_err();
        assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains(says), "{query}: {}", e.message);
    }
    assert!(list_query(Some("limit=5"), Endpoint::Counts).unwrap_err().message.contains("takes kind, name and status"));
}

#[test]
fn every_path_is_documented_in_openapi_yaml() {
    let spec = include_str!("../../../../openapi.yaml");
    let paths = paths();
    for path in &paths {
        assert!(spec.contains(&format!("\n  {path}:\n")), "openapi.yaml documents {path}");
    }
    let documented = spec.lines().filter(|l| l.starts_with("  /v1/")).count();
    assert_eq!(documented, paths.len(), "openapi.yaml documents no path the API lacks");
}

/// The contract's word lists are the shared enums': every status a listing filters by, every
/// action an instance view lists.
#[test]
fn openapi_yaml_lists_the_shared_status_and_action_words() {
    let spec = include_str!("../../../../openapi.yaml");
    let statuses: Vec<&str> = durable_schemas::Status::LISTED.iter().map(|s| s.as_str()).collect();
    let status_enum = format!("enum: [{}]", statuses.join(", "));
    assert_eq!(spec.matches(&status_enum).count(), 5, "every status enum in openapi.yaml is {status_enum}");
    assert_eq!(spec.matches("enum: [running").count(), 5, "no other status list");
    let actions = format!("enum: [{}]", durable_schemas::Action::words().join(", "));
    assert!(spec.contains(&actions), "openapi.yaml lists the actions as {actions}");
    for action in durable_schemas::Action::OPERATOR {
        assert!(spec.contains(&format!("\n  /v1/instances/{{id}}/{action}:\n")), "{action} is documented");
    }
}
