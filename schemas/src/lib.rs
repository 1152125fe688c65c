//! Durable's event envelope: the Avro schema, typed events and the wire codec.
//!
//! Every event Durable reads or writes is one [`Envelope`]: an id, the target instance, the sender,
//! a dedup stamp ([`Origin`]), a timestamp and a body. The body is an [`Event`]: either a *core*
//! event (start an orchestration, schedule an activity, an activity's result, an entity operation,
//! …) or a *wrapper* ([`Event::WithDelay`], [`Event::ReplyTo`], [`Event::WithLock`],
//! [`Event::WithPrincipal`]) around another event. Each layer of the processor unwraps the
//! wrappers it owns and passes the rest inward.
//!
//! On the wire an envelope is Avro **single-object encoding**: the two bytes `C3 01`, the 8-byte
//! little-endian CRC-64-AVRO (Rabin) fingerprint of the writer schema's canonical form, then the
//! Avro binary datum. The schema is `avro/envelope.avsc` in this crate; `README.md` documents the
//! format for producers in other languages.
//!
//! # Layout
//! - [`Envelope`], [`Event`], [`Payload`], [`Failure`], [`Origin`]: the typed events.
//! - [`Codec`]: encode/decode with schema resolution over known writer schemas
//!   ([`Envelope::encode`] / [`Envelope::decode`] use the current schema).
//! - `value`: the mapping between typed events and Avro values (private).
//! - [`Status`], [`Action`]: the words for where an instance stands and what may be done to it.
//! - [`contract`]: topic names, the state record and dead-letter headers (the other records
//!   components exchange).
//!
//! ```
//! use durable_schemas::{Envelope, Event, Payload};
//! let env = Envelope::new("e-1", "entity:Counter:c1", 1_700_000_000_000,
//!     Event::EntityOperation { operation: "add".into(), input: Payload::json(&5).unwrap() });
//! let bytes = env.encode();
//! assert_eq!(&bytes[..2], &[0xC3, 0x01]);
//! assert_eq!(Envelope::decode(&bytes).unwrap(), env);
//! ```
#![warn(missing_docs)]

pub mod bounded;
pub mod contract;
mod value;
mod words;

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

pub use words::{Action, Status};

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The envelope schema as shipped (`avro/envelope.avsc`).
pub const ENVELOPE_SCHEMA: &str = include_str!("../avro/envelope.avsc");

/// Earlier envelope schemas, which every reader still reads (`avro/history/`, named by their
/// fingerprints): data written by an older producer or processor resolves to the current schema.
pub const EARLIER_SCHEMAS: [&str; 4] = [
    include_str!("../avro/history/envelope-8659713f73004692.avsc"),
    include_str!("../avro/history/envelope-26917e7e9cb0d840.avsc"),
    include_str!("../avro/history/envelope-da7cdfc5d02c8447.avsc"),
    include_str!("../avro/history/envelope-e8357699c44ebf01.avsc"),
];

/// Content type of JSON payloads, the default.
pub const JSON: &str = "application/json";

/// The two magic bytes that start every single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Result with this crate's [`DecodeError`].
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// User data: inputs, outputs, entity state, event payloads.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Payload {
    /// MIME type of `data`; [`JSON`] unless said otherwise.
    pub content_type: String,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Payload {
    /// Serialize `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self { content_type: JSON.to_owned(), data: serde_json::to_vec(value)? })
    }

    /// The JSON `null` payload (what a unit result is sent as).
    pub fn null() -> Self {
        Self { content_type: JSON.to_owned(), data: b"null".to_vec() }
    }

    /// Deserialize a JSON payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.data) {
            Ok(text) if self.content_type == JSON => write!(f, "json({text})"),
            _ => write!(f, "{}({} bytes)", self.content_type, self.data.len()),
        }
    }
}

/// A typed error: what failed activities, operations and orchestrations report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failure {
    /// Machine-readable kind (`Timeout`, `Nondeterminism`, `Terminated`, an application's own …).
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Optional details (a stack, a JSON document …).
    pub details: Option<String>,
}

impl Failure {
    /// A failure of `kind` with `message` and no details.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: kind.into(), message: message.into(), details: None }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Where a Durable-emitted event came from, for exact duplicate detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// `p<N>`: emitted by the owner of partition N after a commit; `t<N>`: released by the timer
    /// set of partition N.
    pub stream: String,
    /// Strictly increasing within the stream, in produce order.
    pub seq: i64,
}

/// One event addressed to one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per logical event; deterministic for events Durable sends.
    pub id: String,
    /// Canonical id of the receiving instance (also the Kafka key).
    pub target: String,
    /// Canonical id of the sending instance, or a client name.
    pub source: Option<String>,
    /// Dedup stamp set by Durable when it emits the event; `None` from outside producers.
    pub origin: Option<Origin>,
    /// Milliseconds since the Unix epoch, in the sender's logical clock.
    pub timestamp: i64,
    /// The event.
    pub body: Event,
}

/// A core event or a wrapper around one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // fields are documented in avro/envelope.avsc, variant by variant
pub enum Event {
    /// Start (or restart, after it finished) the orchestration named by the target.
    StartOrchestration { input: Payload },
    /// Run the activity named by the target; the reply goes to the surrounding `ReplyTo`.
    /// `timeout_ms`: this call's own activity timeout (`None`: the processor's).
    ScheduleActivity { input: Payload, attempt: i32, timeout_ms: Option<i64> },
    /// An activity's result.
    ActivityCompleted { correlation: String, result: Payload },
    /// An activity's failure.
    ActivityFailed { correlation: String, failure: Failure },
    /// An external event for `wait_for_event(name)`.
    RaiseEvent { name: String, payload: Payload },
    /// An entity operation: a signal alone, a call inside `ReplyTo`.
    EntityOperation { operation: String, input: Payload },
    /// The reply to an entity call.
    OperationResult { correlation: String, outcome: std::result::Result<Payload, Failure> },
    /// A finished orchestration's reply to its parent.
    OrchestrationCompleted { correlation: String, output: Payload },
    /// A failed orchestration's reply to its parent.
    OrchestrationFailed { correlation: String, failure: Failure },
    /// A durable timer came due.
    TimerFired { correlation: String },
    /// Stop an orchestration now.
    Terminate { reason: String },
    /// Ask an entity to join the owner's critical section.
    LockRequest { owner: String, correlation: String, participants: Vec<String>, position: i32 },
    /// The whole lock set is held.
    LockGranted { correlation: String, participants: Vec<String> },
    /// The owner leaves its critical section.
    LockRelease { owner: String, correlation: String },
    /// Deliver `inner` at `fire_at` (ms since epoch).
    WithDelay { fire_at: i64, inner: Box<Event> },
    /// Reply to `inner` goes to `address`, quoting `correlation`.
    ReplyTo { address: String, correlation: String, inner: Box<Event> },
    /// `inner` was sent from inside `owner`'s critical section over `participants`.
    WithLock { owner: String, participants: Vec<String>, inner: Box<Event> },
    /// `inner` was sent on behalf of `user` with `roles`.
    WithPrincipal { user: String, roles: Vec<String>, inner: Box<Event> },
    /// Core: change who may do what to the target instance (one of six Avro records).
    Access(AccessChange),
    /// Pause a running orchestration; what arrives until [`Event::Resume`] is kept.
    Suspend { reason: String },
    /// End a suspension; the kept events apply in arrival order.
    Resume { reason: String },
    /// Delete a finished orchestration or an idle entity, and publish its tombstone.
    Purge { reason: String },
    /// Run a failed orchestration on from the activity failure that ended it.
    Rewind { reason: String },
}

/// A change to an instance's owners or shares: the sharing events. Each is its own record in
/// the Avro schema; operations are named as in [`AccessChange::OPERATIONS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // fields are documented in avro/envelope.avsc
pub enum AccessChange {
    /// Grant `user` `operations` (added to what the user had).
    ShareWithUser { user: String, operations: Vec<String> },
    /// Grant every principal with `role` `operations`.
    ShareWithRole { role: String, operations: Vec<String> },
    /// Withdraw everything shared with `user`.
    RevokeUser { user: String },
    /// Withdraw everything shared with `role`.
    RevokeRole { role: String },
    /// `user` becomes the only owner.
    TransferOwnership { user: String },
    /// `user` becomes an owner besides the present ones.
    AddOwner { user: String },
}

impl AccessChange {
    /// The operations an access change may name.
    pub const OPERATIONS: [&'static str; 8] = ["start", "signal", "call", "read", "terminate", "lock", "share", "own"];

    /// The Avro record name.
    pub fn name(&self) -> &'static str {
        match self {
            AccessChange::ShareWithUser { .. } => "ShareWithUser",
            AccessChange::ShareWithRole { .. } => "ShareWithRole",
            AccessChange::RevokeUser { .. } => "RevokeUser",
            AccessChange::RevokeRole { .. } => "RevokeRole",
            AccessChange::TransferOwnership { .. } => "TransferOwnership",
            AccessChange::AddOwner { .. } => "AddOwner",
        }
    }
}

/// The part an event plays in the protocol ([`Event::class`]): the one list every decision made
/// by kind of event reads — what an outside producer may send, what is deduplicated by its slot,
/// what carries its sender's principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Asks its target for something: `StartOrchestration`, `RaiseEvent`, `EntityOperation`,
    /// `Rewind`.
    Request,
    /// An operator's action on an instance: `Terminate`, `Suspend`, `Resume`, `Purge`.
    Operator,
    /// A sharing event: who may do what to the target.
    Access,
    /// An activity invocation (`ScheduleActivity`): only a processor sends it.
    Invocation,
    /// The answer to a slot: `ActivityCompleted`, `ActivityFailed`, `OperationResult`,
    /// `OrchestrationCompleted`, `OrchestrationFailed`, `TimerFired`, `LockGranted`.
    Reply,
    /// The lock protocol's request, passed along a lock set's chain.
    LockRequest,
    /// The lock protocol's release.
    LockRelease,
    /// A wrapper around another event (`WithDelay`, `ReplyTo`, `WithLock`, `WithPrincipal`).
    Wrapper,
}

impl Class {
    /// What an outside producer may send (a processor need not have sealed it): requests,
    /// operators' actions and sharing events.
    pub fn from_outside(self) -> bool {
        matches!(self, Class::Request | Class::Operator | Class::Access)
    }

    /// What acts for a principal, so that an instance sending it wraps it in the principal it
    /// acts for: everything but replies and releases (their parties' checks cover them).
    pub fn acts_for_sender(self) -> bool {
        !matches!(self, Class::Reply | Class::LockRelease | Class::Wrapper)
    }
}

impl Event {
    /// The part this event's outermost layer plays ([`Class`]).
    pub fn class(&self) -> Class {
        match self {
            Event::StartOrchestration { .. }
            | Event::RaiseEvent { .. }
            | Event::EntityOperation { .. }
            | Event::Rewind { .. } => Class::Request,
            Event::Terminate { .. } | Event::Suspend { .. } | Event::Resume { .. } | Event::Purge { .. } => {
                Class::Operator
            }
            Event::Access(_) => Class::Access,
            Event::ScheduleActivity { .. } => Class::Invocation,
            Event::ActivityCompleted { .. }
            | Event::ActivityFailed { .. }
            | Event::OperationResult { .. }
            | Event::OrchestrationCompleted { .. }
            | Event::OrchestrationFailed { .. }
            | Event::TimerFired { .. }
            | Event::LockGranted { .. } => Class::Reply,
            Event::LockRequest { .. } => Class::LockRequest,
            Event::LockRelease { .. } => Class::LockRelease,
            Event::WithDelay { .. } | Event::ReplyTo { .. } | Event::WithLock { .. } | Event::WithPrincipal { .. } => {
                Class::Wrapper
            }
        }
    }

    /// The Avro record name of this event's outermost layer.
    pub fn name(&self) -> &'static str {
        match self {
            Event::StartOrchestration { .. } => "StartOrchestration",
            Event::ScheduleActivity { .. } => "ScheduleActivity",
            Event::ActivityCompleted { .. } => "ActivityCompleted",
            Event::ActivityFailed { .. } => "ActivityFailed",
            Event::RaiseEvent { .. } => "RaiseEvent",
            Event::EntityOperation { .. } => "EntityOperation",
            Event::OperationResult { .. } => "OperationResult",
            Event::OrchestrationCompleted { .. } => "OrchestrationCompleted",
            Event::OrchestrationFailed { .. } => "OrchestrationFailed",
            Event::TimerFired { .. } => "TimerFired",
            Event::Terminate { .. } => "Terminate",
            Event::LockRequest { .. } => "LockRequest",
            Event::LockGranted { .. } => "LockGranted",
            Event::LockRelease { .. } => "LockRelease",
            Event::WithDelay { .. } => "WithDelay",
            Event::ReplyTo { .. } => "ReplyTo",
            Event::WithLock { .. } => "WithLock",
            Event::WithPrincipal { .. } => "WithPrincipal",
            Event::Access(change) => change.name(),
            Event::Suspend { .. } => "Suspend",
            Event::Resume { .. } => "Resume",
            Event::Purge { .. } => "Purge",
            Event::Rewind { .. } => "Rewind",
        }
    }

    /// The core event inside all wrappers.
    pub fn core(&self) -> &Event {
        match self {
            Event::WithDelay { inner, .. }
            | Event::ReplyTo { inner, .. }
            | Event::WithLock { inner, .. }
            | Event::WithPrincipal { inner, .. } => inner.core(),
            core => core,
        }
    }

    /// Whether this is a wrapper (has an inner event).
    pub fn is_wrapper(&self) -> bool {
        self.class() == Class::Wrapper
    }
}

impl Envelope {
    /// An envelope with no source and no origin.
    pub fn new(id: impl Into<String>, target: impl Into<String>, timestamp: i64, body: Event) -> Self {
        Self { id: id.into(), target: target.into(), source: None, origin: None, timestamp, body }
    }

    /// Encode with the current schema (single-object encoding).
    pub fn encode(&self) -> Vec<u8> {
        CURRENT.encode(self)
    }

    /// Decode any single-object encoded envelope written with a known schema version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        CURRENT.decode(bytes)
    }
}

/// Why bytes could not be read as an [`Envelope`]. Every variant is a reason to dead-letter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message does not start with `C3 01` and a fingerprint.
    #[error("not Avro single-object encoding (expected magic C3 01 and an 8-byte fingerprint)")]
    NotSingleObject,
    /// The writer schema's fingerprint is not one this reader knows.
    #[error("unknown writer schema fingerprint {fingerprint}")]
    UnknownSchema {
        /// Hex of the 8 fingerprint bytes.
        fingerprint: String,
    },
    /// The datum does not parse under the writer schema (truncated, corrupt …).
    #[error("malformed Avro datum: {0}")]
    Malformed(String),
    /// The datum parsed but does not have the shape of an envelope (e.g. an event type this
    /// version does not know).
    #[error("unexpected shape: {0}")]
    Shape(String),
}

/// An envelope codec: one reader schema, and the writer schemas it can resolve from.
///
/// The datum reader and writer of each schema are built once: building one resolves the
/// schema's names, which cost more than the datum itself (an encode + decode round trip of the
/// golden envelopes took 9.7 µs with a reader and a writer built per call, 2.7 µs with them
/// kept). They borrow their schema, so a codec's schemas live as long as the program: a codec is
/// made once (the shipped one is a static) and never dropped.
pub struct Codec {
    /// Writes with the reader schema.
    writer: GenericDatumWriter<'static>,
    /// Fingerprint of the reader schema.
    fingerprint: [u8; 8],
    /// Every writer schema this codec can read, by fingerprint (includes the reader schema).
    readers: HashMap<[u8; 8], Writer>,
    /// Union branch names of `Event.event` in the reader schema.
    branches: Vec<String>,
}

/// A writer schema this codec reads: its datum reader, the union branch names of its
/// `Event.event` in index order, and the schema with its named types for the bounded walk.
struct Writer {
    reader: GenericDatumReader<'static>,
    branches: Vec<String>,
    schema: &'static Schema,
    names: bounded::Names<'static>,
}

impl Writer {
    fn new(schema: &'static Schema) -> Result<Self, apache_avro::Error> {
        Ok(Self {
            reader: GenericDatumReader::builder(schema).build()?,
            branches: value::event_branches(schema),
            schema,
            names: bounded::Names::of(schema)?,
        })
    }
}

static CURRENT: LazyLock<Codec> =
    LazyLock::new(|| Codec::new(ENVELOPE_SCHEMA, &EARLIER_SCHEMAS).expect("the shipped envelope schemas parse"));

/// The CRC-64-AVRO fingerprint of a schema, as the 8 bytes single-object encoding puts on the wire.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    fp.bytes.as_slice().try_into().expect("Rabin fingerprints are 8 bytes")
}

impl Codec {
    /// A codec that writes `reader_json` and can also read data written with any of
    /// `other_writers_json`, older or newer.
    ///
    /// Resolution is by name: a datum is decoded with its own writer schema, event types are
    /// matched by record name and fields by field name, so fields a newer writer added are
    /// skipped. A field added to the typed events later must get a default in `value.rs` for
    /// data from writers that lack it.
    pub fn new(reader_json: &str, other_writers_json: &[&str]) -> Result<Self, apache_avro::Error> {
        let reader: &'static Schema = Box::leak(Box::new(Schema::parse_str(reader_json)?));
        let fingerprint = fingerprint(reader);
        let branches = value::event_branches(reader);
        let writer = GenericDatumWriter::builder(reader).build()?;
        let mut readers = HashMap::new();
        readers.insert(fingerprint, Writer::new(reader)?);
        for json in other_writers_json {
            let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(json)?));
            readers.insert(self::fingerprint(schema), Writer::new(schema)?);
        }
        Ok(Self { writer, fingerprint, readers, branches })
    }

    /// The codec for the shipped schema.
    pub fn current() -> &'static Codec {
        &CURRENT
    }

    /// Fingerprint of the schema this codec writes.
    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    /// Encode one envelope.
    pub fn encode(&self, envelope: &Envelope) -> Vec<u8> {
        let datum = value::envelope_to_value(envelope, &self.branches);
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.fingerprint);
        self.writer.write_value(&mut out, datum).expect("typed envelopes always match the schema they were mapped for");
        out
    }

    /// Decode one envelope. The datum is first walked within bounds (see [`bounded`]): too
    /// deep a nesting, a length or count larger than the record, or a malformed integer is an
    /// error before the decoder allocates or recurses.
    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() < 10 || bytes[..2] != SINGLE_OBJECT_MAGIC {
            return Err(DecodeError::NotSingleObject);
        }
        let fp: [u8; 8] = bytes[2..10].try_into().expect("checked length");
        let writer = self.readers.get(&fp).ok_or_else(|| DecodeError::UnknownSchema {
            fingerprint: fp.iter().map(|b| format!("{b:02x}")).collect(),
        })?;
        let mut rest = &bytes[10..];
        bounded::check(writer.schema, &writer.names, rest).map_err(DecodeError::Malformed)?;
        let datum = writer.reader.read_value(&mut rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed(format!("{} trailing bytes after the datum", rest.len())));
        }
        value::envelope_from_value(datum, &writer.branches)
    }
}

#[cfg(test)]
mod tests;
