//! Any string as an instance id (a record key, an envelope target, an API path): parsing never
//! panics, a parsed id's canonical form parses to the same id, and its partition is in range.
#![no_main]

use durable_processor::InstanceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = InstanceId::parse(text) {
        let canonical = id.canonical();
        let again = InstanceId::parse(&canonical).expect("a canonical id parses");
        assert_eq!(again, id);
        assert_eq!(again.canonical(), canonical);
        assert!(id.partition(7) < 7);
    }
});
