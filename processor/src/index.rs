//! The instance index: what listing and counting instances reads, without Typesense. Pure.
//!
//! Every commit that changes an instance also writes its [`Summary`] (in the compact
//! [`Summary::entry`] form) to the store's index of that partition, in the same atomic step (see
//! [`crate::store::Store::list`]), and moves it between the per-partition counts of its
//! [`Summary::group`] (type and status). So the index is
//! exactly what is committed — no second writer, no lag — and counting is one read per
//! partition. Listing walks the partitions in order and each partition's ids in byte order,
//! resuming after the last id seen ([`Cursor`]), so an instance that exists for the whole walk is
//! listed exactly once. An instance committed before the index existed appears after its next
//! change.

use serde::{Deserialize, Serialize};

use crate::history::InstanceRecord;
use crate::id::InstanceId;

/// One instance in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Canonical id.
    pub instance: String,
    /// `orch` or `entity`.
    pub kind: String,
    /// Orchestration or entity name.
    pub name: String,
    /// Its key.
    pub key: String,
    /// `running`, `completed`, `failed`, `terminated` (orchestrations), `active` or `deleted`
    /// (entities).
    pub status: String,
    /// Version of its last commit.
    pub version: u64,
    /// When it was created (ms since the Unix epoch).
    pub created_at: i64,
    /// When it last changed (ms since the Unix epoch).
    pub updated_at: i64,
    /// Who may read it (`user:<id>`, `role:<name>`; see [`crate::access::Access::readers`]).
    #[serde(default)]
    pub readers: Vec<String>,
}

impl Summary {
    /// The summary of a committed record (`None` while nothing was applied to it).
    pub fn of(record: &InstanceRecord) -> Option<Self> {
        let change = record.state_change()?;
        let id = InstanceId::parse(&record.id).ok()?;
        Some(Self {
            instance: record.id.clone(),
            kind: id.kind().prefix().to_owned(),
            name: id.name().to_owned(),
            key: id.key().to_owned(),
            status: change.status,
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            readers: record.access.readers(),
        })
    }

    /// What it is counted under ([`group`]).
    pub fn group(&self) -> String {
        group(&self.type_name(), &self.status)
    }

    /// `<kind>:<name>`.
    pub fn type_name(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }

    /// The compact form the store keeps (the id gives kind, name and key):
    /// `<status>|<version>|<created_at>|<updated_at>|<readers as a JSON array>`.
    pub fn entry(&self) -> String {
        let readers = serde_json::to_string(&self.readers).expect("strings serialize");
        format!("{}|{}|{}|{}|{readers}", self.status, self.version, self.created_at, self.updated_at)
    }

    /// The summary of `instance` from its [`Summary::entry`], `None` if either does not parse.
    pub fn from_entry(instance: &str, entry: &str) -> Option<Self> {
        let id = InstanceId::parse(instance).ok()?;
        let mut fields = entry.splitn(5, '|');
        let status = fields.next()?.to_owned();
        let version = fields.next()?.parse().ok()?;
        let created_at = fields.next()?.parse().ok()?;
        let updated_at = fields.next()?.parse().ok()?;
        let readers = serde_json::from_str(fields.next()?).ok()?;
        Some(Self {
            instance: instance.to_owned(),
            kind: id.kind().prefix().to_owned(),
            name: id.name().to_owned(),
            key: id.key().to_owned(),
            status,
            version,
            created_at,
            updated_at,
            readers,
        })
    }
}

/// The count group of instances of type `type_name` (`<kind>:<name>`) in `status`:
/// `<kind>:<name>|<status>` (the Redis commit script builds the same).
pub fn group(type_name: &str, status: &str) -> String {
    format!("{type_name}|{status}")
}

/// The (kind, name, status) of a count group, `None` if `group` is not one.
pub fn parse_group(group: &str) -> Option<(&str, &str, &str)> {
    let (kind_name, status) = group.split_once('|')?;
    let (kind, name) = kind_name.split_once(':')?;
    Some((kind, name, status))
}

/// Which instances a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `orch` or `entity`.
    pub kind: Option<String>,
    /// Orchestration or entity name (needs `kind`).
    pub name: Option<String>,
    /// Status word.
    pub status: Option<String>,
    /// Changed at or after (ms).
    pub updated_from: Option<i64>,
    /// Changed before (ms).
    pub updated_before: Option<i64>,
    /// Created at or after (ms).
    pub created_from: Option<i64>,
    /// Created before (ms).
    pub created_before: Option<i64>,
}

impl Filter {
    /// The id prefix every matching instance has (`orch:`, `orch:Approval:`, or empty).
    pub fn prefix(&self) -> String {
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => format!("{kind}:{name}:"),
            (Some(kind), None) => format!("{kind}:"),
            _ => String::new(),
        }
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &Summary) -> bool {
        let within = |t: i64, from: Option<i64>, before: Option<i64>| {
            from.is_none_or(|f| t >= f) && before.is_none_or(|b| t < b)
        };
        self.kind.as_ref().is_none_or(|k| *k == s.kind)
            && self.name.as_ref().is_none_or(|n| *n == s.name)
            && self.status.as_ref().is_none_or(|st| *st == s.status)
            && within(s.updated_at, self.updated_from, self.updated_before)
            && within(s.created_at, self.created_from, self.created_before)
    }

    /// Whether a count group (see [`Summary::group`]) matches the filter's kind, name and status
    /// (counts do not know times).
    pub fn matches_group(&self, group: &str) -> bool {
        parse_group(group).is_some_and(|(kind, name, status)| {
            self.kind.as_ref().is_none_or(|k| k == kind)
                && self.name.as_ref().is_none_or(|n| n == name)
                && self.status.as_ref().is_none_or(|s| s == status)
        })
    }
}

/// When the instance of index entry `entry` last changed (its `updated_at`, the order of
/// [`crate::store::Store::recent`]); 0 if the entry does not say.
pub fn changed_at(entry: &str) -> i64 {
    entry.split('|').nth(3).and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// Where a listing by most recent change resumes: after the instance that changed at
/// `updated_at` with id `id` (the listing goes by `updated_at`, then id, both descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// When the last instance listed changed.
    pub updated_at: i64,
    /// Its id.
    pub id: String,
}

impl Since {
    /// The opaque text form: `c<updated_at>.<hex of the id>`.
    pub fn encode(&self) -> String {
        format!("c{}.{}", self.updated_at, hex(&self.id))
    }

    /// Read [`Since::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (at, hex) = s.strip_prefix('c')?.split_once('.')?;
        Some(Self { updated_at: at.parse().ok()?, id: unhex(hex)? })
    }
}

/// Where a listing resumes: the partition, and the last id listed in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The partition to read next.
    pub partition: u32,
    /// The last id read in it (`None`: from its start).
    pub after: Option<String>,
}

impl Cursor {
    /// The opaque text form: `<partition>` or `<partition>.<hex of the last id>`.
    pub fn encode(&self) -> String {
        match &self.after {
            None => self.partition.to_string(),
            Some(after) => format!("{}.{}", self.partition, hex(after)),
        }
    }

    /// Read [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (partition, hex) = match s.split_once('.') {
            Some((p, hex)) => (p, Some(hex)),
            None => (s, None),
        };
        let partition = partition.parse().ok()?;
        let after = match hex {
            None => None,
            Some(hex) => Some(unhex(hex)?),
        };
        Some(Self { partition, after })
    }
}

/// `id` as a cursor carries it: lower-case hex of its bytes.
fn hex(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The id a cursor carries as hex (at most 4,096 bytes of UTF-8), `None` if it is not that.
fn unhex(hex: &str) -> Option<String> {
    if hex.len() % 2 != 0 || hex.len() > 2 * 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use durable_schemas::Payload;

    use super::*;
    use crate::history::{Body, EntityState};

    #[test]
    fn a_summary_says_what_the_record_is_and_who_reads_it() {
        let mut r = InstanceRecord::new("entity:Counter:c%201", 5);
        assert_eq!(Summary::of(&r), None, "nothing applied: not indexed");
        r.body = Body::Entity(EntityState { state: Some(Payload::json(&1).unwrap()), ..Default::default() });
        r.version = 3;
        r.updated_at = 9;
        r.access.owners.insert("alice".into());
        let s = Summary::of(&r).unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.key.as_str(), s.status.as_str()),
            ("entity", "Counter", "c 1", "active")
        );
        assert_eq!((s.version, s.created_at, s.updated_at), (3, 5, 9));
        assert_eq!(s.readers, ["user:alice"]);
        assert_eq!(s.group(), "entity:Counter|active");
        assert_eq!(s.entry(), r#"active|3|5|9|["user:alice"]"#);
        assert_eq!(Summary::from_entry(&s.instance, &s.entry()), Some(s.clone()));
        let odd = Summary { readers: vec!["user:a|b\"c".into()], ..s.clone() };
        assert_eq!(Summary::from_entry(&odd.instance, &odd.entry()), Some(odd));
        for bad in ["", "active", "active|x|5|9|[]", "active|3|5|9|nope"] {
            assert_eq!(Summary::from_entry(&s.instance, bad), None, "{bad}");
        }
        assert_eq!(Summary::from_entry("not an id", &s.entry()), None);
        assert_eq!(parse_group(&s.group()), Some(("entity", "Counter", "active")));
    }

    #[test]
    fn filters_match_kind_name_status_and_time_windows() {
        let s = Summary {
            instance: "orch:Approval:a1".into(),
            kind: "orch".into(),
            name: "Approval".into(),
            key: "a1".into(),
            status: "running".into(),
            version: 1,
            created_at: 100,
            updated_at: 200,
            readers: vec![],
        };
        let f = |kind: Option<&str>, name: Option<&str>, status: Option<&str>| Filter {
            kind: kind.map(Into::into),
            name: name.map(Into::into),
            status: status.map(Into::into),
            ..Filter::default()
        };
        assert!(f(None, None, None).matches(&s));
        assert!(f(Some("orch"), Some("Approval"), Some("running")).matches(&s));
        assert!(!f(Some("entity"), None, None).matches(&s));
        assert!(!f(Some("orch"), Some("Transfer"), None).matches(&s));
        assert!(!f(None, None, Some("completed")).matches(&s));
        assert_eq!(f(Some("orch"), Some("Approval"), None).prefix(), "orch:Approval:");
        assert_eq!(f(Some("orch"), None, None).prefix(), "orch:");
        let window = Filter { updated_from: Some(200), updated_before: Some(201), ..Filter::default() };
        assert!(window.matches(&s));
        assert!(!Filter { updated_before: Some(200), ..Filter::default() }.matches(&s));
        assert!(!Filter { created_from: Some(101), ..Filter::default() }.matches(&s));
        assert!(f(Some("orch"), None, Some("running")).matches_group("orch:Approval|running"));
        assert!(!f(Some("orch"), None, Some("running")).matches_group("orch:Approval|failed"));
        assert!(!f(None, None, None).matches_group("garbage"));
    }

    #[test]
    fn change_cursors_round_trip_and_entries_say_when_they_changed() {
        let since = Since { updated_at: 1_700_000_000_123, id: "orch:A:x|y".into() };
        assert_eq!(Since::decode(&since.encode()), Some(since));
        for garbage in ["", "c", "c1", "c1.zz", "x1.00", "c.41", "3.41"] {
            assert_eq!(Since::decode(garbage), None, "{garbage}");
        }
        assert_eq!(changed_at("running|3|10|42|[]"), 42);
        assert_eq!(changed_at("garbage"), 0);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for c in
            [Cursor { partition: 0, after: None }, Cursor { partition: 31, after: Some("orch:Approval:a/1 é".into()) }]
        {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        for bad in ["", "x", "1.abc", "1.zz", "-1", "1.ff"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
