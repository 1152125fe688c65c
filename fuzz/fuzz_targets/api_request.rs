//! Any body (and path parts) for each write of the management API: reading it never panics, and
//! an accepted one becomes an envelope that encodes and decodes to itself.
#![no_main]

use durable_processor::requests::{read, Write};
use durable_schemas::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: which write; then up to three NUL-separated path parts; the rest is the body.
    let Some((&which, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let mut part = || std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("x").to_owned();
    let (a, b, c) = (part(), part(), part());
    let body = parts.next().unwrap_or_default();
    let actions = durable_schemas::Action::ALL;
    let write = match which as usize % (4 + actions.len()) {
        0 => Write::Start { name: &a },
        1 => Write::Signal { name: &a, key: &b, operation: &c },
        2 => Write::Raise { id: &a, event: &b },
        3 => Write::Access { id: &a },
        // Every action, raise and signal too (refused: they are no operator actions).
        n => Write::Operator { action: actions[n - 4], id: &a },
    };
    if let Ok(request) = read(&write, body, || "fuzz-key".into()) {
        let target = request.target.canonical();
        let envelope = Envelope::new(request.event_id.unwrap_or_default(), target, 0, request.event);
        assert_eq!(Envelope::decode(&envelope.encode()).expect("an accepted request encodes"), envelope);
    }
});
