//! Dead letters on Kafka: the contract (header names, the copy rule) is
//! [`durable_schemas::contract::dead_letter`]; this module turns its headers into Kafka's.

use rdkafka::message::{Header, OwnedHeaders};

pub use durable_schemas::contract::dead_letter::{
    copy, Source, COMPONENT, MAX_COPY, REASON, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC, TRUNCATED,
};

/// Headers (as the contract lists them) as Kafka headers.
pub fn kafka_headers(headers: &[(&str, String)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, (key, value)| {
        h.insert(Header { key, value: Some(value.as_str()) })
    })
}

/// The Kafka headers of a dead letter (see [`durable_schemas::contract::dead_letter::headers`]).
pub fn headers(component: &str, reason: &str, source: Source<'_>, truncated_from: Option<usize>) -> OwnedHeaders {
    kafka_headers(&durable_schemas::contract::dead_letter::headers(component, reason, source, truncated_from))
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;

    #[test]
    fn the_contract_headers_become_kafka_headers_in_order() {
        let h = headers("processor", "too big", Source { topic: "t", partition: 3, offset: 9 }, Some(70_000));
        let pairs: Vec<(&str, &[u8])> = h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect();
        assert_eq!(pairs[0], (REASON, &b"too big"[..]));
        assert_eq!(pairs[3], (SOURCE_PARTITION, &b"3"[..]));
        assert_eq!(pairs[5], (TRUNCATED, &b"70000"[..]));
    }
}
