//! Any bytes as a record value: decoding never panics, never overflows the stack and never
//! allocates past the record's size; what decodes re-encodes to something that decodes to the
//! same envelope, and the trust boundary's check of an outside record never panics either.
#![no_main]

use durable_schemas::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = Envelope::decode(&envelope.encode()).expect("what decoded re-encodes to a valid record");
        assert_eq!(again, envelope);
        let mut outside = envelope.clone();
        let _ = durable_processor::trust::admit_outside(&mut outside, None);
        // With an ingress principal the admitted event is wrapped in it (never panics either).
        let ingress = durable_processor::access::Principal::new("kafka-ingress", ["producer"]);
        let mut outside = envelope;
        if durable_processor::trust::admit_outside(&mut outside, Some(&ingress)).is_ok() {
            let _ = outside.encode();
        }
    }
});
