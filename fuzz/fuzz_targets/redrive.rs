//! Any dead letter (anyone who can write to the dead-letter topic can put one there) and any
//! record it names as its source: showing it and judging a redrive never panic; what a redrive
//! would send is never a protocol message and never carries a principal; and it acts for the
//! first sender only — the principal sealed into the source record, or the ingress principal
//! when no seal verified, never anything the letter itself claims.
#![no_main]

use durable_processor::access::Principal;
use durable_processor::engine::unwrap_principal;
use durable_processor::history::is_reply;
use durable_processor::letter::{first_sender, Letter};
use durable_schemas::contract::dead_letter;
use durable_schemas::{Envelope, Event, Payload};
use libfuzzer_sys::fuzz_target;

/// `bytes` laid over a valid envelope's encoding (so that many inputs decode), or as they are.
fn value(overlay: bool, bytes: &[u8]) -> Vec<u8> {
    if !overlay {
        return bytes.to_vec();
    }
    let claimed = Event::WithPrincipal {
        user: "root".into(),
        roles: vec!["admin".into()],
        inner: Box::new(Event::EntityOperation { operation: "add".into(), input: Payload::null() }),
    };
    let mut encoded = Envelope::new("e-1", "entity:Counter:c", 0, claimed).encode();
    let n = bytes.len().min(encoded.len());
    encoded[..n].copy_from_slice(&bytes[..n]);
    encoded
}

fuzz_target!(|data: &[u8]| {
    // Flags, then NUL-separated: extra headers (`key=value` lines), the letter's value, the
    // source record's value.
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(3, |&b| b == 0);
    let headers = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let letter_value = value(flags & 1 != 0, parts.next().unwrap_or_default());
    let original = value(flags & 2 != 0, parts.next().unwrap_or_default());
    let mut all: Vec<(String, String)> = vec![
        (dead_letter::SOURCE_TOPIC.into(), "t.events".into()),
        (dead_letter::SOURCE_PARTITION.into(), "0".into()),
        (dead_letter::SOURCE_OFFSET.into(), "7".into()),
    ];
    all.extend(headers.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())));
    let letter = Letter { partition: 0, offset: 3, timestamp: None, key: None, value: Some(letter_value), headers: all };
    let _ = letter.summary();
    let _ = letter.view("t.events");
    let _ = letter.source();
    if let Ok(e) = letter.redrivable("t.events") {
        assert!(!is_reply(&e.body), "a reply can be redriven: {e:?}");
        assert!(unwrap_principal(&e.body).is_none(), "a redrive carries a principal: {e:?}");
        assert!(e.id.ends_with("/redrive/0-3"), "{}", e.id);
    }
    let ingress = Principal::new("kafka-ingress", ["producer"]);
    let sealed_principal = Envelope::decode(&original).ok().and_then(|e| unwrap_principal(&e.body));
    if let Ok(sender) = first_sender(&letter, &original, false, Some(&ingress)) {
        assert_eq!(sender, Some(ingress.clone()), "an unsealed record acts for the ingress principal");
    }
    if let Ok(sender) = first_sender(&letter, &original, true, Some(&ingress)) {
        assert_eq!(sender, sealed_principal, "a sealed record acts for the principal sealed into it");
    }
});
