//! Reading `<prefix>.dead` for operators: list the newest dead letters, show one decoded, send
//! one back ("redrive"). The API's dead-letter routes ([`super::api`]) and the console use it.
//!
//! A dead letter is named `<partition>-<offset>` in the dead-letter topic. Listing reads each
//! partition backwards from its end (or from the cursor's offsets) in pages; nothing is
//! committed, and reading never removes a letter (the topic's retention does,
//! `DURABLE_DEAD_RETENTION`).
//!
//! A redrive sends the record back to `<prefix>.events` **on behalf of whoever sent it first**,
//! never as the operator who asks for it (an operator's redrive of a refused event would
//! otherwise turn it into the operator's own write: a confused deputy). Who sent it is read
//! from the record the letter names as its source, in the events topic: its sealed principal if
//! a processor sealed it (the management API's caller, the principal an instance acts for), the
//! deployment's `DURABLE_KAFKA_PRINCIPAL` if not; a letter whose source is gone (the topic's
//! retention) or holds another event is not sent back. The event must still decode, it must be
//! a kind of event an outside producer may send (a protocol message — a reply, a lock request —
//! is refused: its conversation is over), and its sender must be allowed to send it now
//! ([`crate::access`]; a refused event stays refused until its sender is given the right). Its event id is the original's with `/redrive/<letter id>` in place of
//! any such suffix it had: the same letter redriven twice is dropped as a duplicate by its
//! instance, never applied twice, while the instance — which remembers the id of an event it
//! refused, so that a producer's retry of it is not refused again — still takes the redrive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::ProcessorConfig;
pub use crate::letter::*;

/// The most letters one page lists.
pub const MAX_LIST: usize = 200;

/// How long a read of the dead-letter topic may take before it answers with what it has.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the dead-letter topic.
pub struct Reader {
    consumer: BaseConsumer,
    topic: String,
}

impl Reader {
    /// A reader with the processor's connection settings (it joins no group and commits nothing).
    pub fn new(config: &ProcessorConfig) -> anyhow::Result<Self> {
        let group = format!("{}-dead-reader", config.group);
        let consumer: BaseConsumer = config
            .kafka
            .client_config(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ])?
            .create()
            .context("cannot create a Kafka consumer for the dead-letter topic")?;
        Ok(Self { consumer, topic: config.dead_topic() })
    }

    fn partitions(&self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), READ_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {}", self.topic))?;
        let topic = metadata.topics().iter().find(|t| t.name() == self.topic);
        let Some(topic) = topic.filter(|t| t.error().is_none()) else {
            anyhow::bail!("{} does not exist: no processor created it yet", self.topic)
        };
        topic
            .partitions()
            .iter()
            .map(|p| {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p.id(), READ_TIMEOUT)
                    .with_context(|| format!("cannot read the offsets of {}", self.topic))?;
                Ok((p.id(), low, high))
            })
            .collect()
    }

    /// Read `[from, to)` of each listed partition (fewer when the read times out).
    fn read(&self, ranges: &[(i32, i64, i64)]) -> anyhow::Result<Vec<Letter>> {
        self.read_from(&self.topic, ranges)
    }

    /// The record at `offset` of `partition` of `topic` (of the events topic: where a letter's
    /// event came from), if it is still there.
    pub fn record(&self, topic: &str, partition: i32, offset: i64) -> anyhow::Result<Option<Letter>> {
        let read = self.read_from(topic, &[(partition, offset, offset + 1)])?;
        Ok(read.into_iter().find(|r| r.offset == offset))
    }

    fn read_from(&self, topic: &str, ranges: &[(i32, i64, i64)]) -> anyhow::Result<Vec<Letter>> {
        let mut assignment = TopicPartitionList::new();
        let mut left: BTreeMap<i32, i64> = BTreeMap::new();
        for &(p, from, to) in ranges.iter().filter(|(_, from, to)| from < to) {
            assignment.add_partition_offset(topic, p, Offset::Offset(from))?;
            left.insert(p, to);
        }
        if left.is_empty() {
            return Ok(Vec::new());
        }
        self.consumer.assign(&assignment).context("cannot read the dead-letter topic")?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut letters = Vec::new();
        while !left.is_empty() && Instant::now() < deadline {
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            let m = message.context("cannot read the dead-letter topic")?;
            let (p, offset) = (m.partition(), m.offset());
            let Some(&to) = left.get(&p) else { continue };
            if offset >= to {
                left.remove(&p);
                continue;
            }
            if offset + 1 >= to {
                left.remove(&p);
            }
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            letters.push(Letter {
                partition: p,
                offset,
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        let _ = self.consumer.unassign();
        Ok(letters)
    }

    /// The newest `limit` letters before `cursor` (the end of each partition when it has none),
    /// newest first, and the cursor of the page after (none when this page reached the start).
    pub fn list(&self, limit: usize, cursor: &Cursor) -> anyhow::Result<(Vec<Letter>, Option<Cursor>)> {
        let partitions = self.partitions()?;
        let limit = limit.clamp(1, MAX_LIST) as i64;
        let ends: Vec<(i32, i64, i64)> = partitions
            .iter()
            .map(|&(p, low, high)| {
                let end = cursor.get(&p).copied().unwrap_or(high).clamp(low, high);
                (p, (end - limit).max(low), end)
            })
            .collect();
        let mut letters = self.read(&ends)?;
        letters.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.offset.cmp(&a.offset)));
        letters.truncate(limit as usize);
        let mut next: Cursor = ends.iter().map(|&(p, _, end)| (p, end)).collect();
        for l in &letters {
            let end = next.entry(l.partition).or_insert(l.offset);
            *end = (*end).min(l.offset);
        }
        let more = partitions.iter().any(|&(p, low, _)| next.get(&p).is_some_and(|&end| end > low));
        Ok((letters, more.then_some(next)))
    }

    /// The letter `<partition>-<offset>`, if the topic still holds it.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Letter>> {
        let Some((p, o)) = parse_id(id) else { return Ok(None) };
        let Some(&(_, low, high)) = self.partitions()?.iter().find(|(q, _, _)| *q == p) else { return Ok(None) };
        if o < low || o >= high {
            return Ok(None);
        }
        Ok(self.read(&[(p, o, o + 1)])?.into_iter().find(|l| l.offset == o))
    }
}
