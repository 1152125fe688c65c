//! Producing what a partition core asks for: records enqueued in order on the idempotent
//! producer, acknowledgements awaited, and records Kafka can never take dead-lettered.

use std::time::{Duration, Instant};

use durable_kafka::dead_letter;
use durable_schemas::contract::seal;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tracing::warn;

use super::Shared;
use crate::error::Error;
use crate::metrics::METRICS;
use crate::partition::{Outgoing, Topic};

/// Whether a produce error concerns this one record and no retry can cure it (too large or
/// malformed for the producer's or the broker's limits). Such a record is dead-lettered, so that
/// it cannot hold its partition forever; every other error (broker unavailable, not the leader,
/// not authorized) is retried with the whole group, offsets not stored.
fn undeliverable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::InvalidMessage
                | Code::InvalidMessageSize
        )
    )
}

/// The hint a produce error deserves.
fn produce_error(topic: &str, e: &rdkafka::error::KafkaError) -> Error {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let hint = match e.rdkafka_error_code() {
        Some(Code::TopicAuthorizationFailed | Code::ClusterAuthorizationFailed) => {
            " (the processor's Kafka principal needs Write on the topic: check the broker's ACLs)"
        }
        _ => "",
    };
    Error::transient(format!("cannot produce to {topic}: {e}{hint}"))
}

/// The dead letter of a record that cannot be produced to `topic`: its first bytes and the
/// reason (the caller keeps its key).
fn undeliverable_letter(topic: &str, payload: &[u8], error: &rdkafka::error::KafkaError) -> (Vec<u8>, OwnedHeaders) {
    let reason = format!("cannot produce a record of {} bytes to {topic}: {error}", payload.len());
    warn!(%topic, bytes = payload.len(), %error, "an outgoing record cannot be produced: dead-lettered");
    METRICS.undeliverable.with_label_values(&[topic_kind(topic)]).inc();
    let (copy, truncated) = dead_letter::copy(payload);
    let headers =
        dead_letter::headers("processor", &reason, dead_letter::Source { topic, partition: -1, offset: -1 }, truncated);
    (copy.to_vec(), headers)
}

/// `events` or `state` for the metric label (the topic name carries the prefix).
fn topic_kind(topic: &str) -> &'static str {
    if topic.ends_with(".state") {
        "state"
    } else {
        "events"
    }
}

/// The headers of a record this processor produces to the events topic: its seal
/// ([`crate::trust`]).
pub fn sealed(shared: &Shared, key: &[u8], payload: &[u8]) -> OwnedHeaders {
    let mac = shared.seal.sign(key, payload);
    OwnedHeaders::new_with_capacity(1).insert(Header { key: seal::HEADER, value: Some(mac.as_bytes()) })
}

/// The topic's name.
pub fn topic_name(shared: &Shared, topic: Topic) -> String {
    match topic {
        Topic::Events => shared.config.events_topic(),
        Topic::State => shared.config.state_topic(),
        Topic::Dead => shared.config.dead_topic(),
    }
}

/// Enqueue one record (to `partition`, or where the key's hash puts it); waits while the
/// producer's queue is full. A record the producer refuses as too large goes to the dead-letter
/// topic instead (see [`undeliverable`]).
async fn enqueue(
    shared: &Shared,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    partition: Option<i32>,
) -> Result<DeliveryFuture, Error> {
    let dead_topic = shared.config.dead_topic();
    let mut letter: Option<(Vec<u8>, OwnedHeaders)> = None;
    loop {
        let (to, value, headers, partition) = match &letter {
            Some((copy, h)) => (dead_topic.as_str(), copy.as_slice(), Some(h), None),
            None => (topic, payload, headers.as_ref(), partition),
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(to).key(key);
        // An empty value on the state topic is a purged instance's tombstone: a null value.
        if !(value.is_empty() && to == shared.config.state_topic()) {
            record = record.payload(value);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h.clone());
        }
        match shared.producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) if letter.is_none() && to != dead_topic && undeliverable(&e) => {
                letter = Some(undeliverable_letter(topic, payload, &e));
            }
            Err((e, _)) => return Err(produce_error(to, &e)),
        }
    }
}

/// Enqueue one record a partition core asked for (see [`enqueue`]); a dead letter is logged with
/// its reason, under the partition `label`.
pub async fn enqueue_outgoing(shared: &Shared, r: &Outgoing, label: &str) -> Result<DeliveryFuture, Error> {
    let topic = topic_name(shared, r.topic);
    let headers = if r.topic == Topic::Events {
        Some(sealed(shared, &r.key, &r.payload))
    } else if r.headers.is_empty() {
        None
    } else {
        if let Some(reason) = r.reason() {
            warn!(partition = label, %topic, reason, "dead letter");
        }
        Some(dead_letter::kafka_headers(&r.headers))
    };
    let partition = r.partition.map(|p| p as i32);
    enqueue(shared, &topic, &r.key, &r.payload, headers, partition).await
}

/// Wait for a record's acknowledgement. A record the broker refused as too large or malformed
/// is dead-lettered (and that acknowledged) instead of failing the group again and again.
pub async fn acknowledged(shared: &Shared, delivery: DeliveryFuture) -> Result<(), Error> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, message))) if undeliverable(&e) && message.topic() != shared.config.dead_topic() => {
            let key = message.key().unwrap_or_default();
            let (copy, headers) = undeliverable_letter(message.topic(), message.payload().unwrap_or_default(), &e);
            let dead_topic = shared.config.dead_topic();
            let letter = FutureRecord::to(&dead_topic).key(key).payload(&copy).headers(headers);
            match shared.producer.send(letter, Duration::from_secs(60)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(Error::transient(format!("cannot dead-letter an undeliverable record: {e}"))),
            }
        }
        Ok(Err((e, message))) => Err(produce_error(message.topic(), &e)),
        Err(_) => Err(Error::transient("produce cancelled")),
    }
}

/// A group's output on its way to Kafka: records enqueued in order, acknowledged in
/// [`Producer::settle`].
pub struct Producer<'a> {
    shared: &'a Shared,
    label: &'a str,
    started: Option<Instant>,
    pending: Vec<DeliveryFuture>,
}

impl<'a> Producer<'a> {
    /// A producer for the partition labelled `label` in metrics.
    pub fn new(shared: &'a Shared, label: &'a str) -> Self {
        Self { shared, label, started: None, pending: Vec::new() }
    }

    /// Enqueue `records` in order.
    pub async fn send(&mut self, records: Vec<Outgoing>) -> Result<(), Error> {
        for r in records {
            self.started.get_or_insert_with(Instant::now);
            self.pending.push(enqueue_outgoing(self.shared, &r, self.label).await?);
        }
        Ok(())
    }

    /// Wait until everything sent so far is acknowledged.
    pub async fn settle(&mut self) -> Result<(), Error> {
        for delivery in self.pending.drain(..) {
            acknowledged(self.shared, delivery).await?;
        }
        if let Some(started) = self.started.take() {
            METRICS.produce_latency.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
