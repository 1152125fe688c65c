//! Instance ids and their one canonical string form.
//!
//! An instance is an orchestration, an entity or an activity invocation, named by `kind`, `name`
//! and `key`. The canonical form `<kind>:<name>:<key>` (kind is `orch`, `entity` or `activity`) is
//! the Kafka message key, the Redis key suffix and what users type in the CLI. Names are
//! restricted to `[A-Za-z0-9_.-]`, so the key is everything after the second `:`. Keys may hold
//! any string: bytes outside a safe set (letters, digits, `-._~:@/+=,;!'()*$`) are
//! percent-encoded, so a canonical id is printable, has no spaces, no `{`/`}` (Redis hash tags) and
//! no `#`, and every key round-trips.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What kind of instance an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A replayed, deterministic orchestration.
    Orchestration,
    /// An addressable object with state and operations.
    Entity,
    /// One invocation of a side-effecting activity.
    Activity,
}

impl Kind {
    /// The prefix used in the canonical form.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Orchestration => "orch",
            Kind::Entity => "entity",
            Kind::Activity => "activity",
        }
    }

    /// Whether the canonical id `id` is of this kind (a prefix check, no parsing).
    pub fn owns(self, id: &str) -> bool {
        id.strip_prefix(self.prefix()).is_some_and(|rest| rest.starts_with(':'))
    }
}

/// An instance id. Ordered (kind, name, key): the lock order of critical sections.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceId {
    kind: Kind,
    name: String,
    key: String,
}

/// Why a string is not an instance id or a handler name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The kind prefix is not `orch`, `entity` or `activity`.
    #[error("unknown instance kind {0:?} (expected orch, entity or activity)")]
    UnknownKind(String),
    /// The id lacks a `:` between kind, name and key.
    #[error("{0:?} is not an instance id; expected <kind>:<name>:<key>, e.g. entity:Counter:c1")]
    Malformed(String),
    /// The name is empty or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid name {0:?}: use 1-128 characters from A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    /// A `%` escape in the key is not two hex digits, or decodes to invalid UTF-8.
    #[error("invalid escape in key {0:?}")]
    InvalidEscape(String),
    /// An orchestration's or entity's key is longer than [`MAX_KEY_BYTES`].
    #[error("a key of {0} bytes is longer than the {MAX_KEY_BYTES} bytes an orchestration's or entity's key may have")]
    KeyTooLong(usize),
}

/// Longest key of an orchestration or an entity, in bytes (an activity invocation's key is its
/// caller's id and slot: derived, bounded by this).
pub const MAX_KEY_BYTES: usize = 4096;

/// Check a handler name.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::InvalidName(name.to_owned()))
    }
}

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b':'
                | b'@'
                | b'/'
                | b'+'
                | b'='
                | b','
                | b';'
                | b'!'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'$'
        )
}

fn escape_key(key: &str, out: &mut String) {
    for b in key.bytes() {
        if is_safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn unescape_key(escaped: &str) -> Result<String, IdError> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3).ok_or_else(|| IdError::InvalidEscape(escaped.to_owned()))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| IdError::InvalidEscape(escaped.to_owned()))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| IdError::InvalidEscape(escaped.to_owned()))
}

impl InstanceId {
    /// An id of `kind` with a validated `name` and any `key`.
    pub fn new(kind: Kind, name: &str, key: impl Into<String>) -> Result<Self, IdError> {
        validate_name(name)?;
        let key = key.into();
        if kind != Kind::Activity && key.len() > MAX_KEY_BYTES {
            return Err(IdError::KeyTooLong(key.len()));
        }
        Ok(Self { kind, name: name.to_owned(), key })
    }

    /// An orchestration id. Panics on an invalid name (use [`InstanceId::new`] for user input).
    pub fn orchestration(name: &str, key: impl Into<String>) -> Self {
        Self::new(Kind::Orchestration, name, key).expect("valid orchestration name")
    }

    /// An entity id. Panics on an invalid name (use [`InstanceId::new`] for user input).
    pub fn entity(name: &str, key: impl Into<String>) -> Self {
        Self::new(Kind::Entity, name, key).expect("valid entity name")
    }

    /// An activity invocation id. Panics on an invalid name.
    pub fn activity(name: &str, key: impl Into<String>) -> Self {
        Self::new(Kind::Activity, name, key).expect("valid activity name")
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The handler name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key (unescaped).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The canonical string form.
    pub fn canonical(&self) -> String {
        let mut s = String::with_capacity(self.name.len() + self.key.len() + 10);
        s.push_str(self.kind.prefix());
        s.push(':');
        s.push_str(&self.name);
        s.push(':');
        escape_key(&self.key, &mut s);
        s
    }

    /// Parse a canonical id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let mut parts = s.splitn(3, ':');
        let (kind, name, key) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(n), Some(key)) => (k, n, key),
            _ => return Err(IdError::Malformed(s.to_owned())),
        };
        let kind = match kind {
            "orch" => Kind::Orchestration,
            "entity" => Kind::Entity,
            "activity" => Kind::Activity,
            other => return Err(IdError::UnknownKind(other.to_owned())),
        };
        Self::new(kind, name, unescape_key(key)?)
    }

    /// The Kafka partition of this id among `partitions`, as Kafka's default partitioner puts it.
    pub fn partition(&self, partitions: u32) -> u32 {
        partition_for_key(self.canonical().as_bytes(), partitions)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.canonical())
    }
}

impl FromStr for InstanceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default (murmur2) partitioner picks for a keyed record.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An orchestration's or entity's key is at most MAX_KEY_BYTES, whether made or parsed; an
    /// activity invocation's (derived from its caller's id) is not limited.
    #[test]
    fn keys_are_bounded_in_length() {
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(InstanceId::new(Kind::Entity, "Counter", long.clone()), Err(IdError::KeyTooLong(MAX_KEY_BYTES + 1)));
        assert!(InstanceId::parse(&format!("orch:Transfer:{long}")).is_err());
        assert!(InstanceId::new(Kind::Orchestration, "Transfer", "k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(InstanceId::new(Kind::Activity, "SayHello", long).is_ok());
    }

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn canonical_form_is_readable() {
        let id = InstanceId::entity("Counter", "c1");
        assert_eq!(id.canonical(), "entity:Counter:c1");
        let tricky = InstanceId::orchestration("Hello", "a b#{x}%");
        assert_eq!(tricky.canonical(), "orch:Hello:a%20b%23%7Bx%7D%25");
        assert_eq!(InstanceId::parse("orch:Hello:a:b").unwrap().key(), "a:b");
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        assert_eq!(InstanceId::parse("Counter"), Err(IdError::Malformed("Counter".into())));
        assert_eq!(InstanceId::parse("thing:Counter:x"), Err(IdError::UnknownKind("thing".into())));
        assert_eq!(InstanceId::parse("entity:Count er:x"), Err(IdError::InvalidName("Count er".into())));
        assert!(matches!(InstanceId::parse("entity:C:%zz"), Err(IdError::InvalidEscape(_))));
        assert!(matches!(InstanceId::parse("entity:C:%ff"), Err(IdError::InvalidEscape(_))));
    }

    proptest! {
        #[test]
        fn any_key_round_trips(key in ".*", name in "[A-Za-z0-9_.-]{1,20}", kind in 0..3u8) {
            let kind = [Kind::Orchestration, Kind::Entity, Kind::Activity][kind as usize];
            let id = InstanceId::new(kind, &name, key).unwrap();
            let canonical = id.canonical();
            let forbidden = ['{', '}', '#', ' ', '\n'];
            prop_assert!(!canonical.contains(forbidden), "{} has a forbidden character", canonical);
            prop_assert_eq!(InstanceId::parse(&canonical).unwrap(), id);
        }

        #[test]
        fn partitions_are_in_range(key in proptest::collection::vec(any::<u8>(), 0..40), n in 1..300u32) {
            prop_assert!(partition_for_key(&key, n) < n);
        }
    }
}
