//! What a partition core asks its driver to produce: events, state records, dead letters — all
//! built here, to the contract in [`durable_schemas::contract`].

use durable_schemas::contract::{dead_letter, StateRecord};
use durable_schemas::{Envelope, Origin, Payload};

use crate::effect::StateChange;
use crate::id::InstanceId;
use crate::store::ReleasedTimer;

/// Which topic of the deployment a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `<prefix>.events`.
    Events,
    /// `<prefix>.state`.
    State,
    /// `<prefix>.dead`.
    Dead,
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The topic.
    pub topic: Topic,
    /// The key (an instance id for events and state records; the original key of a dead letter).
    pub key: Vec<u8>,
    /// The value.
    pub payload: Vec<u8>,
    /// The partition; `None`: where the key's murmur2 hash puts it.
    pub partition: Option<u32>,
    /// Headers, in order (dead letters only).
    pub headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    /// An event, produced where its target's hash puts it (or to `partition`).
    pub fn event(envelope: &Envelope, partition: Option<u32>) -> Self {
        Self {
            topic: Topic::Events,
            key: envelope.target.as_bytes().to_vec(),
            payload: envelope.encode(),
            partition,
            headers: Vec::new(),
        }
    }

    /// A dead letter for `payload` (copied up to the contract's limit) read from `source`.
    pub fn dead(key: Vec<u8>, payload: &[u8], reason: &str, source: dead_letter::Source<'_>) -> Self {
        let (copy, truncated) = dead_letter::copy(payload);
        Self::dead_copy(key, copy.to_vec(), truncated, reason, source)
    }

    /// A dead letter whose value is already the copy [`dead_letter::copy`] made of a payload of
    /// `truncated_from` bytes (`None`: the whole payload).
    pub fn dead_copy(
        key: Vec<u8>,
        copy: Vec<u8>,
        truncated_from: Option<usize>,
        reason: &str,
        source: dead_letter::Source<'_>,
    ) -> Self {
        Self {
            topic: Topic::Dead,
            key,
            payload: copy,
            partition: None,
            headers: dead_letter::headers("processor", reason, source, truncated_from),
        }
    }

    /// The tombstone of a purged instance on the state topic: its key and a null value (an
    /// empty payload here; the driver produces it without a value).
    pub fn tombstone(instance: &str) -> Self {
        Self {
            topic: Topic::State,
            key: instance.as_bytes().to_vec(),
            payload: Vec::new(),
            partition: None,
            headers: Vec::new(),
        }
    }

    /// Whether this is a tombstone (produce it with a null value).
    pub fn is_tombstone(&self) -> bool {
        self.topic == Topic::State && self.payload.is_empty()
    }

    /// The reason header of a dead letter.
    pub fn reason(&self) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == dead_letter::REASON).map(|(_, v)| v.as_str())
    }
}

/// A payload as JSON (its bytes if they are JSON, else a description).
pub fn payload_json(p: &Payload) -> serde_json::Value {
    serde_json::from_slice(&p.data)
        .unwrap_or_else(|_| serde_json::json!({ "content_type": p.content_type, "bytes": p.data.len() }))
}

/// The state record of a committed change, readable by `readers` (`None` for an instance id
/// that does not parse, which a committed change never has); a tombstone for a purge.
pub fn state_record(change: &StateChange, readers: &[String]) -> Option<Outgoing> {
    let id = InstanceId::parse(&change.instance).ok()?;
    if change.is_purge() {
        return Some(Outgoing::tombstone(&change.instance));
    }
    let record = StateRecord {
        instance: change.instance.clone(),
        kind: id.kind().prefix().to_owned(),
        name: id.name().to_owned(),
        key: id.key().to_owned(),
        version: change.version,
        status: change.status.clone(),
        state: change.state.as_ref().map(payload_json),
        custom_status: change.custom_status.as_ref().map(payload_json),
        failure: change.failure.clone(),
        updated_at: change.updated_at,
        readers: readers.to_vec(),
    };
    let payload = serde_json::to_vec(&record).ok()?;
    Some(Outgoing {
        topic: Topic::State,
        key: change.instance.as_bytes().to_vec(),
        payload,
        partition: None,
        headers: Vec::new(),
    })
}

/// The records that release `timers` of `partition` (claimed from the store, in seq order):
/// each parked event stamped with origin `t<partition>`/seq. A parked event that does not
/// decode is dead-lettered (source offset -1, the reason names its seq) instead of holding every
/// later timer of the partition back; acknowledging up to the last seq is then safe.
pub fn timer_records(partition: u32, events_topic: &str, timers: &[ReleasedTimer]) -> Vec<Outgoing> {
    timers
        .iter()
        .map(|timer| match Envelope::decode(&timer.envelope) {
            Ok(mut e) => {
                e.origin = Some(Origin { stream: format!("t{partition}"), seq: timer.seq });
                Outgoing::event(&e, None)
            }
            Err(error) => {
                let reason = format!("parked timer t{partition}#{} does not decode: {error}", timer.seq);
                let source = dead_letter::Source { topic: events_topic, partition: partition as i32, offset: -1 };
                Outgoing::dead(Vec::new(), &timer.envelope, &reason, source)
            }
        })
        .collect()
}
