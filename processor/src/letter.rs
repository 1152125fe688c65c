//! A record of `<prefix>.dead` as operators see it, and what a redrive of it may send. Pure:
//! the runtime reads the topic ([`crate::runtime::dead`]) and the API sends; the judgement —
//! what a letter says, whether its event can go back, for whom — is here, where the fuzz target
//! `redrive` reaches it without Kafka.
//!
//! A redrive sends the event back **on behalf of whoever sent it first**
//! ([`first_sender`]), never as the operator who asks for it.

use std::collections::BTreeMap;

use durable_schemas::contract::dead_letter;
use durable_schemas::{Envelope, Event};
use serde_json::{json, Value};

use crate::access::Principal;
use crate::partition::payload_json;

/// One record of the dead-letter topic, as stored.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// When it was dead-lettered (ms since the Unix epoch), if the broker says.
    pub timestamp: Option<i64>,
    /// Its key: the original record's key.
    pub key: Option<Vec<u8>>,
    /// Its value: the original record, or its first bytes when `truncated_from` is set.
    pub value: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
}

impl Letter {
    /// `<partition>-<offset>`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.partition, self.offset)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        self.header(dead_letter::REASON).unwrap_or("(no reason header: not written by Durable)")
    }

    /// Where its event came from: (topic, partition, offset), when a processor read it there.
    pub fn source(&self) -> Option<(&str, i32, i64)> {
        let topic = self.header(dead_letter::SOURCE_TOPIC)?;
        let partition = self.header(dead_letter::SOURCE_PARTITION)?.parse().ok()?;
        let offset = self.header(dead_letter::SOURCE_OFFSET)?.parse().ok().filter(|o: &i64| *o >= 0)?;
        Some((topic, partition, offset))
    }

    /// A header's value.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.header(name)
    }

    /// The original size, when the value is only its first bytes.
    pub fn truncated_from(&self) -> Option<u64> {
        self.header(dead_letter::TRUNCATED).and_then(|v| v.parse().ok())
    }

    /// The envelope it holds, or why it holds none.
    pub fn envelope(&self) -> Result<Envelope, String> {
        if let Some(size) = self.truncated_from() {
            return Err(format!("only the first {} of its {size} bytes were kept", dead_letter::MAX_COPY));
        }
        match &self.value {
            None => Err("it has no value".into()),
            Some(v) => Envelope::decode(v).map_err(|e| format!("it is not an envelope: {e}")),
        }
    }

    /// The summary a list shows.
    pub fn summary(&self) -> Value {
        let envelope = self.envelope().ok();
        json!({
            "id": self.id(),
            "at": self.timestamp,
            "reason": self.reason(),
            "component": self.header(dead_letter::COMPONENT),
            "source_topic": self.header(dead_letter::SOURCE_TOPIC),
            "key": self.key.as_deref().map(String::from_utf8_lossy),
            "event": envelope.as_ref().map(|e| e.body.core().name()),
            "event_id": envelope.as_ref().map(|e| e.id.clone()),
            "target": envelope.as_ref().map(|e| e.target.clone()),
        })
    }

    /// Everything about it, its envelope decoded when it holds one.
    pub fn view(&self, events_topic: &str) -> Value {
        let mut v = self.summary();
        let headers: serde_json::Map<String, Value> =
            self.headers.iter().map(|(k, val)| (k.clone(), Value::String(val.clone()))).collect();
        v["headers"] = Value::Object(headers);
        v["size"] = json!(self.value.as_ref().map_or(0, Vec::len));
        v["truncated_from"] = json!(self.truncated_from());
        match self.envelope() {
            Ok(e) => v["envelope"] = envelope_json(&e),
            Err(why) => {
                v["undecodable"] = json!(why);
                let head = self.value.as_deref().unwrap_or_default();
                v["head_hex"] = json!(head.iter().take(64).map(|b| format!("{b:02x}")).collect::<String>());
            }
        }
        v["redrive"] = match self.redrivable(events_topic) {
            Ok(_) => json!({ "possible": true }),
            Err(why) => json!({ "possible": false, "why": why }),
        };
        v
    }

    /// The event a redrive sends (its target kept, its id [`redrive_id`], any principal it
    /// claimed dropped), or why it cannot be sent back.
    pub fn redrivable(&self, events_topic: &str) -> Result<Envelope, String> {
        match self.header(dead_letter::SOURCE_TOPIC) {
            Some(t) if t == events_topic => {}
            Some(t) => {
                return Err(format!(
                    "it came from {t}, not {events_topic}: only refused events can be sent back (a state record is re-published when its instance next changes)"
                ))
            }
            None => return Err("it names no source topic: Durable did not write it".into()),
        }
        let mut envelope = self.envelope().map_err(|why| format!("{why}: it could never be applied"))?;
        envelope.body = without_principal(envelope.body);
        envelope.id = redrive_id(&envelope.id, &self.id());
        envelope.source = None;
        crate::trust::admit_outside(&mut envelope, None)
            .map_err(|why| format!("a redrive is a new write by you, and {why}"))?;
        Ok(envelope)
    }
}

/// The event id of a redrive of letter `letter` whose event had id `original`.
pub fn redrive_id(original: &str, letter: &str) -> String {
    let base = original.split("/redrive/").next().unwrap_or(original);
    format!("{base}/redrive/{letter}")
}

/// `body` without the principal wrappers a processor added (a redrive acts for whoever sends it).
fn without_principal(body: Event) -> Event {
    match body {
        Event::WithPrincipal { inner, .. } => without_principal(*inner),
        Event::WithDelay { fire_at, inner } => Event::WithDelay { fire_at, inner: Box::new(without_principal(*inner)) },
        other => other,
    }
}

/// An envelope as JSON, its payloads decoded as [`payload_json`] shows them.
pub fn envelope_json(e: &Envelope) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    readable(&mut v);
    v
}

fn readable(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(content_type)), Some(Value::Array(data)), 2) =
                (map.get("content_type"), map.get("data"), map.len())
            {
                let data: Vec<u8> = data.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
                *v = payload_json(&durable_schemas::Payload { content_type: content_type.clone(), data });
                return;
            }
            map.values_mut().for_each(readable);
        }
        Value::Array(items) => items.iter_mut().for_each(readable),
        _ => {}
    }
}

/// Where a list page ends in each partition (exclusive): `<partition>:<offset>,…`.
pub type Cursor = BTreeMap<i32, i64>;

/// Parse a cursor a list answered with.
pub fn parse_cursor(s: &str) -> Result<Cursor, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (p, o) = pair.split_once(':').ok_or(())?;
            Ok((p.parse::<i32>().map_err(|_| ())?, o.parse::<i64>().map_err(|_| ())?))
        })
        .collect::<Result<Cursor, ()>>()
        .map_err(|()| format!("{s:?} is not a cursor: pass the next value a list answered with"))
}

/// Write a cursor.
pub fn cursor_string(c: &Cursor) -> String {
    c.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",")
}

/// `<partition>-<offset>`.
pub fn parse_id(id: &str) -> Option<(i32, i64)> {
    let (p, o) = id.split_once('-')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// Who sent the event of a letter first — `Ok(None)`: anonymous — from the record the letter
/// names as its source (`original`: its value, and whether a processor's seal on it verified):
/// the principal a processor sealed into it, or `ingress` (the deployment's principal for outside
/// producers) if no processor sealed it. `Err` (why) if the record holds another event than
/// the letter's, or none.
pub fn first_sender(
    letter: &Letter,
    original: &[u8],
    sealed: bool,
    ingress: Option<&Principal>,
) -> Result<Option<Principal>, String> {
    let event_id = letter.envelope().map_err(|_| "it holds no event".to_owned())?.id;
    let original = Envelope::decode(original).map_err(|_| "the record it came from holds no event".to_owned())?;
    if original.id != event_id {
        return Err("the record it names holds another event".into());
    }
    if sealed {
        Ok(crate::engine::unwrap_principal(&original.body))
    } else {
        Ok(ingress.cloned())
    }
}

#[cfg(test)]
mod tests {
    use durable_schemas::Payload;

    use super::*;

    fn letter(value: &[u8], topic: &str, extra: Option<(&'static str, String)>) -> Letter {
        let source = dead_letter::Source { topic, partition: 0, offset: 7 };
        let mut headers: Vec<(String, String)> = dead_letter::headers("processor", "refused", source, None)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        headers.extend(extra.map(|(k, v)| (k.to_owned(), v)));
        Letter { partition: 0, offset: 3, timestamp: Some(5), key: None, value: Some(value.to_vec()), headers }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any bytes and headers as a dead letter (anyone who can write to the dead-letter topic
        /// can put one there): showing it, summing it up, finding its source and deciding whether
        /// it can be sent back never panic, and what can be sent back is never a protocol
        /// message and never carries a principal.
        #[test]
        fn hostile_letters_are_shown_and_judged_without_panicking(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            headers in proptest::collection::vec((".{0,24}", ".{0,40}"), 0..6),
            golden in proptest::prelude::any::<bool>(),
        ) {
            let value = if golden {
                let e = Envelope::new("g", "entity:Counter:c", 0, Event::EntityOperation {
                    operation: "add".into(),
                    input: Payload::json(&1).unwrap(),
                });
                let mut bytes = e.encode();
                let n = value.len().min(bytes.len());
                bytes[..n].copy_from_slice(&value[..n]);
                bytes
            } else {
                value
            };
            let mut l = letter(&value, "t.events", None);
            l.headers.extend(headers);
            let _ = l.summary();
            let _ = l.view("t.events");
            let _ = l.source();
            if let Ok(e) = l.redrivable("t.events") {
                proptest::prop_assert!(!crate::history::is_reply(&e.body));
                proptest::prop_assert!(crate::engine::unwrap_principal(&e.body).is_none());
            }
        }
    }

    #[test]
    fn a_redrive_drops_the_claimed_principal_and_names_its_event_after_the_letter() {
        let raise = Event::RaiseEvent { name: "go".into(), payload: Payload::json(&1).unwrap() };
        let claimed = Event::WithPrincipal {
            user: "mallory".into(),
            roles: vec!["admin".into()],
            inner: Box::new(raise.clone()),
        };
        let e = Envelope::new("e-1", "orch:Approval:a", 0, claimed);
        let redriven = letter(&e.encode(), "t.events", None).redrivable("t.events").unwrap();
        assert_eq!((redriven.id.as_str(), redriven.body), ("e-1/redrive/0-3", raise));
        assert_eq!(redrive_id("e-1/redrive/0-3", "0-9"), "e-1/redrive/0-9");
    }

    #[test]
    fn what_cannot_be_redriven_says_why() {
        let reply = Envelope::new("r", "orch:A:a", 0, Event::TimerFired { correlation: "t".into() });
        let cases = [
            (letter(&reply.encode(), "t.events", None), "part of Durable's protocol"),
            (letter(b"junk", "t.events", None), "not an envelope"),
            (letter(&reply.encode(), "t.state", None), "came from t.state"),
            (letter(b"head", "t.events", Some((dead_letter::TRUNCATED, "70000".into()))), "first"),
        ];
        for (l, says) in cases {
            let why = l.redrivable("t.events").unwrap_err();
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn cursors_and_ids_round_trip() {
        let c: Cursor = [(0, 5), (2, 9)].into_iter().collect();
        assert_eq!(parse_cursor(&cursor_string(&c)).unwrap(), c);
        assert!(parse_cursor("x").is_err());
        assert_eq!(parse_id("3-17"), Some((3, 17)));
        assert_eq!(parse_id("3"), None);
    }

    #[test]
    fn an_envelope_shows_its_payloads_as_json() {
        let e = Envelope::new(
            "i",
            "orch:A:a",
            0,
            Event::RaiseEvent { name: "n".into(), payload: Payload::json(&json!({"x": 1})).unwrap() },
        );
        let v = envelope_json(&e);
        assert!(v.to_string().contains(r#""x":1"#), "{v}");
    }
}
