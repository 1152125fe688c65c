//! Any text as what the store's index hands back — an instance's entry, a count group, a list
//! cursor from a client: reading never panics, and what reads writes back to the same thing.
#![no_main]

use durable_processor::index::{group, parse_group, Cursor, Summary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (instance, entry) = text.split_once('\n').unwrap_or(("entity:Counter:c", &text));
    if let Some(summary) = Summary::from_entry(instance, entry) {
        let again = Summary::from_entry(instance, &summary.entry()).expect("what was read writes back");
        assert_eq!(again, summary);
        let _ = summary.group();
    }
    if let Some((kind, name, status)) = parse_group(&text) {
        let written = group(&format!("{kind}:{name}"), status);
        assert_eq!(parse_group(&written), Some((kind, name, status)));
    }
    if let Some(cursor) = Cursor::decode(&text) {
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }
});
