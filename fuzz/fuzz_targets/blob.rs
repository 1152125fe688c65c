//! Any bytes as a stored instance record (what Redis hands back): reading never panics, and what
//! reads writes back to the same record.
#![no_main]

use durable_processor::InstanceRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = InstanceRecord::from_blob(data) {
        let again = InstanceRecord::from_blob(&record.to_blob()).expect("what was read writes back");
        assert_eq!(again, record);
    }
});
