//! Dead letters: what every record on `<prefix>.dead` carries, whoever wrote it.
//!
//! The value is the record as it arrived (or, past [`MAX_COPY`] bytes, its first `MAX_COPY`
//! bytes, with [`TRUNCATED`] set), the key is the original key, and the headers say why and
//! where from. Tools read these header names; they are the contract.

use rdkafka::message::{Header, OwnedHeaders};

/// Why the record could not be applied (UTF-8 text).
pub const REASON: &str = "durable.reason";
/// Which component dead-lettered it: `processor` or `projector`.
pub const COMPONENT: &str = "durable.component";
/// The topic the record was read from.
pub const SOURCE_TOPIC: &str = "durable.source.topic";
/// Its partition there (decimal).
pub const SOURCE_PARTITION: &str = "durable.source.partition";
/// Its offset there (decimal).
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
    /// Its partition.
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

/// The headers of a dead letter. `truncated_from` is the original size when the value is a
/// truncated copy.
pub fn headers(component: &str, reason: &str, source: Source<'_>, truncated_from: Option<usize>) -> OwnedHeaders {
    let (partition, offset) = (source.partition.to_string(), source.offset.to_string());
    let mut h = OwnedHeaders::new()
        .insert(Header { key: REASON, value: Some(reason) })
        .insert(Header { key: COMPONENT, value: Some(component) })
        .insert(Header { key: SOURCE_TOPIC, value: Some(source.topic) })
        .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_str()) });
    if let Some(size) = truncated_from {
        h = h.insert(Header { key: TRUNCATED, value: Some(size.to_string().as_str()) });
    }
    h
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;

    #[test]
    fn a_large_record_is_copied_truncated_with_its_size() {
        let big = vec![7u8; MAX_COPY + 10];
        let (value, size) = copy(&big);
        assert_eq!((value.len(), size), (MAX_COPY, Some(MAX_COPY + 10)));
        assert_eq!(copy(b"small"), (&b"small"[..], None));
        let h = headers("processor", "too big", Source { topic: "t", partition: 3, offset: 9 }, size);
        let keys: Vec<&str> = h.iter().map(|h| h.key).collect();
        assert_eq!(keys, [REASON, COMPONENT, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, TRUNCATED]);
    }
}
