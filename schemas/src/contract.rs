//! The records Durable's components exchange besides the envelope, written down once: topic
//! names, the state record of `<prefix>.state`, and the headers of a dead letter on
//! `<prefix>.dead`. The processor writes them, the projector and tools read them; clients in
//! other languages read the same JSON and header names (`schemas/README.md`).

use serde::{Deserialize, Serialize};

use crate::Failure;

/// The topics of one deployment (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>.events`: every event, key = target instance id.
    pub events: String,
    /// `<prefix>.state` (compacted): the latest [`StateRecord`] of each instance.
    pub state: String,
    /// `<prefix>.dead`: records that cannot be applied, with [`dead_letter`] headers.
    pub dead: String,
}

impl Topics {
    /// The topics of `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self { events: format!("{prefix}.events"), state: format!("{prefix}.state"), dead: format!("{prefix}.dead") }
    }
}

/// A record of the state feed (`<prefix>.state`, key = canonical instance id, value = this as
/// JSON): the state of an instance after a commit. Versions are strictly increasing per
/// instance; a reader keeps the highest it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Canonical instance id (`orch:<name>:<key>` or `entity:<name>:<key>`).
    pub instance: String,
    /// `orch` or `entity`.
    pub kind: String,
    /// Orchestration or entity name.
    pub name: String,
    /// Instance key.
    pub key: String,
    /// Strictly increasing per instance.
    pub version: u64,
    /// Status word: `running`, `completed`, `failed` or `terminated` for an
    /// orchestration; `active` or `deleted` for an entity.
    pub status: String,
    /// Entity state or orchestration output (JSON; a payload that is not JSON is described as
    /// `{"content_type", "bytes"}`).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
    /// Orchestration custom status (JSON, as `state`).
    #[serde(default)]
    pub custom_status: Option<serde_json::Value>,
    /// Failure of a failed or terminated orchestration.
    #[serde(default)]
    pub failure: Option<Failure>,
    /// Commit time, ms since the Unix epoch.
    pub updated_at: i64,
}

/// Dead letters: what every record on `<prefix>.dead` carries, whoever wrote it.
///
/// The value is the record as it arrived (or, past [`MAX_COPY`](dead_letter::MAX_COPY) bytes,
/// its first `MAX_COPY` bytes, with [`TRUNCATED`](dead_letter::TRUNCATED) set), the key is the
/// original key, and the headers say why and where from. Tools read these header names; they are
/// the contract.
pub mod dead_letter {
    /// Why the record could not be applied (UTF-8 text).
    pub const REASON: &str = "durable.reason";
    /// Which component dead-lettered it: `processor` or `projector`.
    pub const COMPONENT: &str = "durable.component";
    /// The topic the record was read from.
    pub const SOURCE_TOPIC: &str = "durable.source.topic";
    /// Its partition there (decimal).
    pub const SOURCE_PARTITION: &str = "durable.source.partition";
    /// Its offset there (decimal; -1 for a record the component made itself).
    pub const SOURCE_OFFSET: &str = "durable.source.offset";
    /// Present, with the original size in bytes (decimal), when the value is a truncated copy.
    pub const TRUNCATED: &str = "durable.truncated";

    /// The most bytes of an original record a dead letter copies.
    pub const MAX_COPY: usize = 64 * 1024;

    /// Where a dead-lettered record came from.
    #[derive(Debug, Clone, Copy)]
    pub struct Source<'a> {
        /// Its topic.
        pub topic: &'a str,
        /// Its partition (-1 when unknown).
        pub partition: i32,
        /// Its offset (-1 when it was made by this component and never read from a topic).
        pub offset: i64,
    }

    /// The value a dead letter carries for `payload`: the payload itself, or its first
    /// [`MAX_COPY`] bytes and the original size.
    pub fn copy(payload: &[u8]) -> (&[u8], Option<usize>) {
        if payload.len() > MAX_COPY {
            (&payload[..MAX_COPY], Some(payload.len()))
        } else {
            (payload, None)
        }
    }

    /// The headers of a dead letter, in order. `truncated_from` is the original size when the
    /// value is a truncated copy.
    pub fn headers(
        component: &str,
        reason: &str,
        source: Source<'_>,
        truncated_from: Option<usize>,
    ) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (REASON, reason.to_owned()),
            (COMPONENT, component.to_owned()),
            (SOURCE_TOPIC, source.topic.to_owned()),
            (SOURCE_PARTITION, source.partition.to_string()),
            (SOURCE_OFFSET, source.offset.to_string()),
        ];
        if let Some(size) = truncated_from {
            h.push((TRUNCATED, size.to_string()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::dead_letter::*;
    use super::*;

    #[test]
    fn a_large_record_is_copied_truncated_with_its_size() {
        let big = vec![7u8; MAX_COPY + 10];
        let (value, size) = copy(&big);
        assert_eq!((value.len(), size), (MAX_COPY, Some(MAX_COPY + 10)));
        assert_eq!(copy(b"small"), (&b"small"[..], None));
        let h = headers("processor", "too big", Source { topic: "t", partition: 3, offset: 9 }, size);
        let keys: Vec<&str> = h.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [REASON, COMPONENT, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, TRUNCATED]);
        assert_eq!(h[3].1, "3");
    }

    #[test]
    fn a_state_record_reads_back_and_tolerates_missing_optionals() {
        let r = StateRecord {
            instance: "orch:A:k".into(),
            kind: "orch".into(),
            name: "A".into(),
            key: "k".into(),
            version: 3,
            status: "failed".into(),
            state: None,
            custom_status: Some(serde_json::json!({"step": 2})),
            failure: Some(Failure::new("Boom", "it broke")),
            updated_at: 5,
        };
        let json = serde_json::to_vec(&r).expect("serializes");
        assert_eq!(serde_json::from_slice::<StateRecord>(&json).expect("reads back"), r);
        let minimal = r#"{"instance":"entity:C:1","kind":"entity","name":"C","key":"1","version":1,"status":"active","updated_at":1}"#;
        let m: StateRecord = serde_json::from_str(minimal).expect("optional fields may be absent");
        assert_eq!((m.state, m.failure), (None, None));
        assert_eq!(Topics::new("x").dead, "x.dead");
    }
}
