//! A bounded walk over an Avro datum before anything decodes it.
//!
//! The Avro decoder (apache-avro's, then ours in `value`) recurses once per nested record and
//! trusts length prefixes: a record of a few hundred kilobytes of nested wrappers would overflow
//! the stack (the process aborts, and every processor that takes the partition over aborts on the
//! same record), and a ten-byte record could claim a string of a gigabyte. So every datum is first
//! walked here, without recursion (an explicit stack) and without allocating anything
//! proportional to what the input claims:
//!
//! - records may nest at most [`MAX_RECORD_DEPTH`] deep, which for the envelope schema is
//!   exactly [`MAX_WRAPPERS`] wrappers around a core event;
//! - every length (string, bytes) and every block count (array, map) must fit in the bytes that
//!   remain, so nothing can ask for more memory than the record's own size;
//! - integers are well-formed zig-zag varints (at most 10 bytes), union indexes in range, and
//!   the datum ends exactly where the input does.
//!
//! Only a datum that passes is given to the decoder, whose recursion is then bounded too.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::Schema;

/// Most wrappers (`WithDelay`, `ReplyTo`, `WithLock`, `WithPrincipal`) around one core event.
/// Durable itself never nests more than four.
pub const MAX_WRAPPERS: usize = 32;

/// Most records nested in one envelope: the envelope, its body, then two records per wrapper
/// (the wrapper and the `Event` inside it), the core event and its payload.
pub const MAX_RECORD_DEPTH: usize = 4 + 2 * MAX_WRAPPERS;

/// Most bytes one datum may have (a processor's own limit, `DURABLE_MAX_EVENT_BYTES`, is lower).
pub const MAX_DATUM_BYTES: usize = 16 * 1024 * 1024;

/// Named types of a schema, to follow references.
pub struct Names<'s>(HashMap<Name, &'s Schema>);

impl<'s> Names<'s> {
    /// The named types of `schema`.
    pub fn of(schema: &'s Schema) -> Result<Self, apache_avro::Error> {
        let resolved = ResolvedSchema::try_from(schema)?;
        Ok(Self(resolved.get_names().iter().map(|(n, s)| (n.clone(), *s)).collect()))
    }
}

/// What is left to read.
enum Task<'s> {
    /// One value of this schema, at this record depth.
    Value(&'s Schema, usize),
    /// The rest of an array's (or, with `map`, a map's) current block, then its next blocks.
    Items { item: &'s Schema, left: u64, map: bool, depth: usize },
}

/// Walk `datum` under `schema`; `Err` says what is wrong.
pub fn check(schema: &Schema, names: &Names<'_>, datum: &[u8]) -> Result<(), String> {
    if datum.len() > MAX_DATUM_BYTES {
        return Err(format!("datum of {} bytes is over the limit of {MAX_DATUM_BYTES}", datum.len()));
    }
    let mut input = Input { bytes: datum, at: 0 };
    let mut stack = vec![Task::Value(schema, 0)];
    while let Some(task) = stack.pop() {
        match task {
            Task::Items { item, left: 0, map, depth } => {
                let count = input.block_count()?;
                if count > 0 {
                    stack.push(Task::Items { item, left: count, map, depth });
                }
            }
            Task::Items { item, left, map, depth } => {
                stack.push(Task::Items { item, left: left - 1, map, depth });
                stack.push(Task::Value(item, depth));
                if map {
                    input.skip_len("map key")?;
                }
            }
            Task::Value(schema, depth) => value(schema, depth, names, &mut input, &mut stack)?,
        }
    }
    if input.at != datum.len() {
        return Err(format!("{} trailing bytes after the datum", datum.len() - input.at));
    }
    Ok(())
}

/// Read one value of `schema` at record `depth`: scalars are checked here, what they contain
/// is pushed on `stack` for later.
fn value<'s>(
    schema: &'s Schema,
    depth: usize,
    names: &Names<'s>,
    input: &mut Input<'_>,
    stack: &mut Vec<Task<'s>>,
) -> Result<(), String> {
    match schema {
        Schema::Null => {}
        Schema::Boolean => match input.byte()? {
            0 | 1 => {}
            b => return Err(format!("boolean byte {b} at {}", input.at - 1)),
        },
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let v = input.long()?;
            if i32::try_from(v).is_err() {
                return Err(format!("int out of range at {}", input.at));
            }
        }
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => {
            input.long()?;
        }
        Schema::Float => input.skip(4, "float")?,
        Schema::Double => input.skip(8, "double")?,
        Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Decimal(_) | Schema::Uuid(_) => {
            input.skip_len("string or bytes")?
        }
        Schema::Fixed(f) | Schema::Duration(f) => input.skip(f.size, "fixed")?,
        Schema::Enum(e) => {
            let i = input.long()?;
            if i < 0 || i as usize >= e.symbols.len() {
                return Err(format!("enum index {i} out of range at {}", input.at));
            }
        }
        Schema::Array(a) => stack.push(Task::Items { item: &a.items, left: 0, map: false, depth }),
        Schema::Map(m) => stack.push(Task::Items { item: &m.types, left: 0, map: true, depth }),
        Schema::Union(u) => {
            let i = input.long()?;
            let variant = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| format!("union index {i} out of range at {}", input.at))?;
            stack.push(Task::Value(variant, depth));
        }
        Schema::Record(r) => {
            if depth >= MAX_RECORD_DEPTH {
                return Err(format!(
                    "records nested deeper than {MAX_RECORD_DEPTH} (at most {MAX_WRAPPERS} wrappers around an event)"
                ));
            }
            stack.extend(r.fields.iter().rev().map(|f| Task::Value(&f.schema, depth + 1)));
        }
        Schema::Ref { name } => {
            let named = names.0.get(name).ok_or_else(|| format!("unknown named type {name}"))?;
            stack.push(Task::Value(named, depth));
        }
    }
    Ok(())
}

struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("the datum ends early")?;
        self.at += 1;
        Ok(b)
    }

    /// A zig-zag varint of at most 10 bytes.
    fn long(&mut self) -> Result<i64, String> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(format!("a varint longer than 10 bytes at {}", self.at))
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!("{what} of {n} bytes but only {} remain", self.remaining()));
        }
        self.at += n;
        Ok(())
    }

    /// A length prefix and that many bytes.
    fn skip_len(&mut self, what: &str) -> Result<(), String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("negative length {n} of a {what}"))?;
        self.skip(n, what)
    }

    /// An array or map block's item count (a negative count is followed by the block's size).
    fn block_count(&mut self) -> Result<u64, String> {
        let n = self.long()?;
        if n < 0 {
            self.long()?;
        }
        let count = n.unsigned_abs();
        // Every item of the schemas we read takes at least one byte: a count above what
        // remains is a lie meant to make the decoder allocate.
        if count > self.remaining() as u64 {
            return Err(format!("block of {count} items but only {} bytes remain", self.remaining()));
        }
        Ok(count)
    }
}
