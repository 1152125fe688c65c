//! The records Durable's components exchange besides the envelope, written down once: topic
//! names, the state record of `<prefix>.state`, and the headers of a dead letter on
//! `<prefix>.dead`. The processor writes them, the projector and tools read them; clients in
//! other languages read the same JSON and header names (`schemas/README.md`).

use serde::{Deserialize, Serialize};

use crate::Failure;

/// The prefix every component uses when none is configured (`DURABLE_PREFIX`).
pub const DEFAULT_PREFIX: &str = "durable";

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
    /// Who may read the instance: `user:<id>` for its owners and the users it is shared `read`
    /// with, `role:<name>` for the roles (admins read everything). Empty for an instance nobody
    /// owns (created anonymously). Absent from records written before authorization.
    #[serde(default)]
    pub readers: Vec<String>,
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

/// The seal: how a processor marks the records it produces to `<prefix>.events`, so that
/// protocol fields (origin stamps, replies, lock messages, `ReplyTo`, `WithLock`,
/// `WithPrincipal`, instance senders) count only when Durable itself wrote them.
///
/// Every record a processor produces to the events topic carries the header [`HEADER`]: the
/// lowercase hex of the first 16 bytes of HMAC-SHA256 under the deployment secret over
/// `u32 big-endian length of the key ‖ key ‖ value`. A record without the header, or with one
/// no current secret produces, is an *outside* record: see `schemas/README.md` ("Who may send
/// what") for what those may carry. Several secrets may be valid at once (rotation): the first
/// signs, all verify.
pub mod seal {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// The header carrying a record's seal.
    pub const HEADER: &str = "durable.mac";
    /// The shortest secret accepted, in bytes.
    pub const MIN_SECRET_BYTES: usize = 16;
    /// Bytes of the MAC kept (hex-encoded in the header: twice as many characters).
    pub const MAC_BYTES: usize = 16;

    /// The deployment's secrets. Its `Debug` shows how many there are, never what they are.
    #[derive(Clone)]
    pub struct Seal {
        keys: Vec<Hmac<Sha256>>,
    }

    impl std::fmt::Debug for Seal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Seal({} secret(s))", self.keys.len())
        }
    }

    impl Seal {
        /// A seal signing with the first of `secrets` and accepting any of them; `Err` names
        /// what is wrong (never the secret): none given, or one shorter than
        /// [`MIN_SECRET_BYTES`].
        pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Self, String> {
            if secrets.is_empty() {
                return Err("no secret given".into());
            }
            let mut keys = Vec::with_capacity(secrets.len());
            for (i, s) in secrets.iter().enumerate() {
                let s = s.as_ref();
                if s.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "secret number {} has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                        i + 1,
                        s.len()
                    ));
                }
                keys.push(Hmac::<Sha256>::new_from_slice(s).expect("HMAC takes keys of any length"));
            }
            Ok(Self { keys })
        }

        fn mac(key: &Hmac<Sha256>, record_key: &[u8], value: &[u8]) -> Hmac<Sha256> {
            let mut m = key.clone();
            m.update(&(record_key.len() as u32).to_be_bytes());
            m.update(record_key);
            m.update(value);
            m
        }

        /// The header value for a record with `key` and `value`.
        pub fn sign(&self, key: &[u8], value: &[u8]) -> String {
            let tag = Self::mac(&self.keys[0], key, value).finalize().into_bytes();
            hex::encode(&tag[..MAC_BYTES])
        }

        /// Whether `header` (the [`HEADER`] value, if the record has one) seals `key` and `value`
        /// under one of the secrets. Constant time in the MAC.
        pub fn verify(&self, key: &[u8], value: &[u8], header: Option<&[u8]>) -> bool {
            let Some(header) = header else { return false };
            let mut tag = [0u8; MAC_BYTES];
            if header.len() != 2 * MAC_BYTES || hex::decode_to_slice(header, &mut tag).is_err() {
                return false;
            }
            self.keys.iter().any(|k| Self::mac(k, key, value).verify_truncated_left(&tag).is_ok())
        }
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
            readers: vec!["user:alice".into(), "role:auditor".into()],
        };
        let json = serde_json::to_vec(&r).expect("serializes");
        assert_eq!(serde_json::from_slice::<StateRecord>(&json).expect("reads back"), r);
        let minimal = r#"{"instance":"entity:C:1","kind":"entity","name":"C","key":"1","version":1,"status":"active","updated_at":1}"#;
        let m: StateRecord = serde_json::from_str(minimal).expect("optional fields may be absent");
        assert_eq!((m.state, m.failure, m.readers), (None, None, vec![]));
        assert_eq!(Topics::new("x").dead, "x.dead");
    }

    #[test]
    fn a_seal_verifies_under_any_current_secret_and_nothing_else() {
        use super::seal::*;
        let old = Seal::new(&["an old secret, long enough"]).unwrap();
        let rotated = Seal::new(&["the new secret, long enough", "an old secret, long enough"]).unwrap();
        let mac = old.sign(b"entity:C:1", b"value");
        assert_eq!(mac.len(), 2 * MAC_BYTES);
        assert!(old.verify(b"entity:C:1", b"value", Some(mac.as_bytes())));
        assert!(rotated.verify(b"entity:C:1", b"value", Some(mac.as_bytes())), "old secrets still verify");
        assert!(!old.verify(b"entity:C:1", b"value", Some(rotated.sign(b"entity:C:1", b"value").as_bytes())));
        assert!(!old.verify(b"entity:C:1", b"valuE", Some(mac.as_bytes())), "the value is covered");
        assert!(!old.verify(b"entity:C:2", b"value", Some(mac.as_bytes())), "the key is covered");
        // The key's length is framed: moving a byte between key and value changes the MAC.
        assert!(!old.verify(b"entity:C:1v", b"alue", Some(mac.as_bytes())));
        assert!(!old.verify(b"entity:C:1", b"value", None));
        assert!(!old.verify(b"entity:C:1", b"value", Some(b"zz")));
        assert!(!old.verify(b"entity:C:1", b"value", Some(&[b'g'; 32])));
        assert!(Seal::new(&["short"]).unwrap_err().contains("at least 16"));
        assert!(Seal::new::<&str>(&[]).is_err());
        assert_eq!(format!("{old:?}"), "Seal(1 secret(s))");
    }
}
