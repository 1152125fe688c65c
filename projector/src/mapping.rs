//! From a state record (`<prefix>.state`, JSON, see the processor's runtime) to a Typesense
//! document, and the collections documents go to.
//!
//! - One collection per entity type, alias `<prefix>_entity_<Name>`: the entity's JSON state
//!   flattened into fields (`{"a":{"b":1}}` → `a.b`; a state that is not an object → `value`;
//!   arrays of objects → their JSON text), plus `instance`, `key`, `version`, `updated_at`. A
//!   state field named like one of those is stored as `state.<name>`.
//! - One collection of orchestration instances, alias `<prefix>_orchestrations`: `instance`,
//!   `name`, `key`, `status`, `custom_status` and `output_summary` (JSON text, cut at 1,000
//!   characters), `failure` (`kind: message`), `created_at` (from the version-1 record),
//!   `updated_at`, `version`.
//! - Every document has `readers`: who may read the instance (`user:<id>`, `role:<name>`; see
//!   the state record), the field a scoped search key filters on.
//! - Document id = the canonical instance id, so ids never collide across types.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A record of the state feed: the contract, defined once.
pub use durable_schemas::contract::StateRecord;

/// What to do in Typesense for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the document (`emplace` for orchestrations: `created_at` is only in version 1).
    Upsert(Value),
    /// Remove the document (a deleted entity).
    Delete,
}

/// One record, mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The collection alias.
    pub alias: String,
    /// The document id (canonical instance id).
    pub id: String,
    /// Its version.
    pub version: u64,
    /// What to do.
    pub action: Action,
}

/// Fields the projector sets itself.
const OWN: [&str; 6] = ["id", "instance", "key", "version", "updated_at", "readers"];

/// Characters kept in collection names.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The alias of an entity type's collection.
pub fn entity_alias(prefix: &str, name: &str) -> String {
    format!("{}_entity_{}", clean(prefix), clean(name))
}

/// The alias of the orchestrations collection.
pub fn orchestrations_alias(prefix: &str) -> String {
    format!("{}_orchestrations", clean(prefix))
}

fn flatten(into: &mut Map<String, Value>, path: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(into, &key, v);
            }
        }
        Value::Null => {}
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            into.insert(path.to_owned(), Value::String(v.to_string()));
        }
        other => {
            let key = if OWN.contains(&path) { format!("state.{path}") } else { path.to_owned() };
            into.insert(key, other.clone());
        }
    }
}

fn text(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
    .chars()
    .take(1000)
    .collect()
}

/// Map a record (`None` for kinds that are not projected, e.g. activities).
pub fn map(prefix: &str, r: &StateRecord) -> Option<Mapped> {
    match r.kind.as_str() {
        "entity" => {
            let alias = entity_alias(prefix, &r.name);
            let state = r.state.as_ref().filter(|s| !s.is_null());
            let action = match state {
                None => Action::Delete,
                Some(state) => {
                    let mut doc = Map::new();
                    match state {
                        Value::Object(_) => flatten(&mut doc, "", state),
                        other => flatten(&mut doc, "value", other),
                    }
                    doc.insert("id".into(), r.instance.clone().into());
                    doc.insert("instance".into(), r.instance.clone().into());
                    doc.insert("key".into(), r.key.clone().into());
                    doc.insert("version".into(), r.version.into());
                    doc.insert("updated_at".into(), r.updated_at.into());
                    doc.insert("readers".into(), json!(r.readers));
                    Action::Upsert(Value::Object(doc))
                }
            };
            Some(Mapped { alias, id: r.instance.clone(), version: r.version, action })
        }
        "orch" => {
            let failure = r.failure.as_ref().map_or(String::new(), |f| format!("{}: {}", f.kind, f.message));
            let output = if r.status == "completed" { text(&r.state) } else { String::new() };
            let mut doc = json!({
                "id": r.instance,
                "instance": r.instance,
                "name": r.name,
                "key": r.key,
                "status": r.status,
                "custom_status": text(&r.custom_status),
                "output_summary": output,
                "failure": failure,
                "updated_at": r.updated_at,
                "version": r.version,
                "readers": r.readers,
            });
            if r.version == 1 {
                doc["created_at"] = r.updated_at.into();
            }
            Some(Mapped {
                alias: orchestrations_alias(prefix),
                id: r.instance.clone(),
                version: r.version,
                action: Action::Upsert(doc),
            })
        }
        _ => None,
    }
}

/// Per-type schema configuration (a JSON file, `--schemas`): entity name, or `orchestrations`, →
/// `{"fields": [...], "default_sorting_field": "..."}` in Typesense's collection-schema format.
/// Types not listed get [`default_schema`].
pub type SchemaConfig = BTreeMap<String, Value>;

/// The automatic schema of a collection: the projector's own fields, typed; everything else
/// detected from the documents (`.*` auto); sorted by `updated_at` by default.
pub fn default_schema(orchestrations: bool) -> Value {
    let mut fields = vec![
        json!({ "name": "instance", "type": "string" }),
        json!({ "name": "key", "type": "string", "facet": true }),
        json!({ "name": "version", "type": "int64" }),
        json!({ "name": "updated_at", "type": "int64" }),
        json!({ "name": "readers", "type": "string[]", "facet": true, "optional": true }),
    ];
    if orchestrations {
        fields.extend([
            json!({ "name": "name", "type": "string", "facet": true }),
            json!({ "name": "status", "type": "string", "facet": true }),
            json!({ "name": "custom_status", "type": "string" }),
            json!({ "name": "output_summary", "type": "string" }),
            json!({ "name": "failure", "type": "string" }),
            json!({ "name": "created_at", "type": "int64", "optional": true }),
        ]);
    }
    fields.push(json!({ "name": ".*", "type": "auto" }));
    json!({ "fields": fields, "default_sorting_field": "updated_at" })
}

/// The schema for `type_name` (an entity name or `orchestrations`), named `collection`.
pub fn schema_for(config: &SchemaConfig, type_name: &str, collection: &str) -> Value {
    let orchestrations = type_name == "orchestrations";
    let mut schema = config.get(type_name).cloned().unwrap_or_else(|| default_schema(orchestrations));
    // The projector's own fields are always present and typed, whatever the configuration says.
    let own = default_schema(orchestrations);
    let fields = schema["fields"].as_array().cloned().unwrap_or_default();
    let mut merged: Vec<Value> = own["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter(|f| f["name"] != ".*" && !fields.iter().any(|g| g["name"] == f["name"]))
        .cloned()
        .collect();
    merged.extend(fields);
    schema["fields"] = Value::Array(merged);
    schema["name"] = collection.into();
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, state: Value) -> StateRecord {
        StateRecord {
            instance: format!("{kind}:Account:a1"),
            kind: kind.into(),
            name: "Account".into(),
            key: "a1".into(),
            version: 3,
            status: "active".into(),
            state: Some(state),
            custom_status: None,
            failure: None,
            updated_at: 7,
            readers: vec!["user:alice".into()],
        }
    }

    #[test]
    fn entity_state_is_flattened_beside_the_projectors_fields() {
        let r = record(
            "entity",
            json!({"owner": "alice", "balance": 120, "limits": {"daily": 50}, "tags": ["a"], "version": "x"}),
        );
        let m = map("bank", &r).unwrap();
        assert_eq!(m.alias, "bank_entity_Account");
        let Action::Upsert(doc) = m.action else { panic!("upsert") };
        assert_eq!(doc["owner"], "alice");
        assert_eq!(doc["balance"], 120);
        assert_eq!(doc["limits.daily"], 50);
        assert_eq!(doc["tags"], json!(["a"]));
        assert_eq!(doc["state.version"], "x", "a state field named like ours moves aside");
        assert_eq!(doc["version"], 3);
        assert_eq!(doc["readers"], json!(["user:alice"]), "who may read it, for scoped search keys");
        assert_eq!(doc["id"], "entity:Account:a1");
    }

    #[test]
    fn a_deleted_entity_is_a_delete_and_a_scalar_state_is_value() {
        let mut r = record("entity", Value::Null);
        r.state = None;
        assert_eq!(map("p", &r).unwrap().action, Action::Delete);
        let Action::Upsert(doc) = map("p", &record("entity", json!(5))).unwrap().action else { panic!() };
        assert_eq!(doc["value"], 5);
    }

    #[test]
    fn orchestrations_share_one_collection_and_carry_created_at_from_version_one() {
        let mut r = record("orch", json!(["Hello"]));
        r.instance = "orch:Hello:k".into();
        r.status = "completed".into();
        let m = map("p", &r).unwrap();
        assert_eq!(m.alias, "p_orchestrations");
        let Action::Upsert(doc) = &m.action else { panic!() };
        assert_eq!(doc["output_summary"], "[\"Hello\"]");
        assert!(doc.get("created_at").is_none());
        r.version = 1;
        let Action::Upsert(doc) = map("p", &r).unwrap().action else { panic!() };
        assert_eq!(doc["created_at"], 7);
    }

    #[test]
    fn configured_schemas_keep_the_projectors_fields() {
        let mut config = SchemaConfig::new();
        config.insert(
            "Account".into(),
            json!({"fields": [{"name": "balance", "type": "int64"}], "default_sorting_field": "balance"}),
        );
        let s = schema_for(&config, "Account", "bank_entity_Account_1");
        let names: Vec<&str> = s["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["instance", "key", "version", "updated_at", "readers", "balance"]);
        assert_eq!(s["default_sorting_field"], "balance");
        assert_eq!(s["name"], "bank_entity_Account_1");
    }
}
