use std::path::PathBuf;

use apache_avro::types::Value;
use proptest::prelude::*;

use super::*;

fn p(json: &str) -> Payload {
    Payload { content_type: JSON.into(), data: json.as_bytes().to_vec() }
}

/// Golden vectors: one envelope of every event type, checked in as hex under `golden/`.
/// Producers in other languages are tested against the same files.
fn golden_cases() -> Vec<(&'static str, Envelope)> {
    let t = 1_700_000_000_000;
    let env = |id: &str, target: &str, body: Event| Envelope::new(id, target, t, body);
    let mut with_origin = env(
        "orch:Hello:h1/0/2",
        "activity:SayHello:orch:Hello:h1%230.2",
        Event::ReplyTo {
            address: "orch:Hello:h1".into(),
            correlation: "0.2".into(),
            inner: Box::new(Event::ScheduleActivity { input: p("\"Tokyo\""), attempt: 1, timeout_ms: None }),
        },
    );
    with_origin.source = Some("orch:Hello:h1".into());
    with_origin.origin = Some(Origin { stream: "p3".into(), seq: 42 << 20 });
    vec![
        ("start_orchestration", env("c-1", "orch:HelloSequence:h1", Event::StartOrchestration { input: p("null") })),
        ("schedule_activity_reply_to", with_origin),
        (
            "activity_completed",
            env(
                "a-1",
                "orch:Hello:h1",
                Event::ActivityCompleted { correlation: "0.2".into(), result: p("\"Hello Tokyo\"") },
            ),
        ),
        (
            "activity_failed",
            env(
                "a-2",
                "orch:Hello:h1",
                Event::ActivityFailed {
                    correlation: "0.3".into(),
                    failure: Failure {
                        kind: "Timeout".into(),
                        message: "took too long".into(),
                        details: Some("after 30s".into()),
                    },
                },
            ),
        ),
        (
            "raise_event",
            env("c-2", "orch:Approval:a1", Event::RaiseEvent { name: "approved".into(), payload: p("true") }),
        ),
        (
            "entity_signal",
            env("c-3", "entity:Counter:c1", Event::EntityOperation { operation: "add".into(), input: p("5") }),
        ),
        (
            "operation_result_err",
            env(
                "e-1",
                "orch:Transfer:t1",
                Event::OperationResult {
                    correlation: "0.4".into(),
                    outcome: Err(Failure::new("Overdraft", "balance 3 < 5")),
                },
            ),
        ),
        (
            "operation_result_ok",
            env("e-2", "orch:Transfer:t1", Event::OperationResult { correlation: "0.5".into(), outcome: Ok(p("17")) }),
        ),
        (
            "orchestration_completed",
            env(
                "o-1",
                "orch:Parent:p1",
                Event::OrchestrationCompleted { correlation: "1.0".into(), output: p("[1,2]") },
            ),
        ),
        (
            "orchestration_failed",
            env(
                "o-2",
                "orch:Parent:p1",
                Event::OrchestrationFailed {
                    correlation: "1.1".into(),
                    failure: Failure::new("Terminated", "by admin"),
                },
            ),
        ),
        (
            "timer_fired_with_delay",
            env(
                "o-3",
                "orch:Parent:p1",
                Event::WithDelay {
                    fire_at: t + 60_000,
                    inner: Box::new(Event::TimerFired { correlation: "0.7".into() }),
                },
            ),
        ),
        ("terminate", env("c-4", "orch:Parent:p1", Event::Terminate { reason: "by admin".into() })),
        ("suspend", env("c-5", "orch:Parent:p1", Event::Suspend { reason: "waiting for the bank".into() })),
        ("resume", env("c-6", "orch:Parent:p1", Event::Resume { reason: String::new() })),
        ("purge", env("c-7", "entity:Cart:c9", Event::Purge { reason: "retention".into() })),
        ("rewind", env("c-8", "orch:Parent:p1", Event::Rewind { reason: "the bank is back".into() })),
        (
            "lock_request",
            env(
                "o-4",
                "entity:Account:a",
                Event::LockRequest {
                    owner: "orch:Transfer:t1".into(),
                    correlation: "0.1".into(),
                    participants: vec!["entity:Account:a".into(), "entity:Account:b".into()],
                    position: 0,
                },
            ),
        ),
        (
            "lock_granted",
            env(
                "o-5",
                "orch:Transfer:t1",
                Event::LockGranted {
                    correlation: "0.1".into(),
                    participants: vec!["entity:Account:a".into(), "entity:Account:b".into()],
                },
            ),
        ),
        (
            "lock_release",
            env(
                "o-6",
                "entity:Account:a",
                Event::LockRelease { owner: "orch:Transfer:t1".into(), correlation: "0.1".into() },
            ),
        ),
        (
            "with_lock_with_principal",
            env(
                "c-5",
                "entity:Account:a",
                Event::WithPrincipal {
                    user: "alice".into(),
                    roles: vec!["teller".into()],
                    inner: Box::new(Event::WithLock {
                        owner: "orch:Transfer:t1".into(),
                        participants: vec!["entity:Account:a".into()],
                        inner: Box::new(Event::EntityOperation { operation: "balance".into(), input: p("null") }),
                    }),
                },
            ),
        ),
        (
            "share_with_user",
            env(
                "s-1",
                "orch:Transfer:t1",
                Event::Access(AccessChange::ShareWithUser {
                    user: "bob".into(),
                    operations: vec!["read".into(), "signal".into()],
                }),
            ),
        ),
        (
            "share_with_role",
            env(
                "s-2",
                "entity:Account:a",
                Event::Access(AccessChange::ShareWithRole { role: "auditor".into(), operations: vec!["read".into()] }),
            ),
        ),
        ("revoke_user", env("s-3", "orch:Transfer:t1", Event::Access(AccessChange::RevokeUser { user: "bob".into() }))),
        (
            "revoke_role",
            env("s-4", "entity:Account:a", Event::Access(AccessChange::RevokeRole { role: "auditor".into() })),
        ),
        (
            "transfer_ownership",
            env("s-5", "entity:Account:a", Event::Access(AccessChange::TransferOwnership { user: "carol".into() })),
        ),
        ("add_owner", env("s-6", "entity:Account:a", Event::Access(AccessChange::AddOwner { user: "dave".into() }))),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Set DURABLE_BLESS=1 to rewrite the golden files after a deliberate schema change.
#[test]
fn golden_vectors_decode_and_reencode_byte_for_byte() {
    let bless = std::env::var_os("DURABLE_BLESS").is_some();
    let mut index = Vec::new();
    for (name, envelope) in golden_cases() {
        let path = golden_dir().join(format!("{name}.hex"));
        let bytes = envelope.encode();
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, hex::encode(&bytes) + "\n").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored = hex::decode(text.trim()).unwrap();
        assert_eq!(Envelope::decode(&stored).unwrap(), envelope, "{name} decodes to the expected envelope");
        assert_eq!(stored, bytes, "{name}: encoding changed; bless only for a deliberate schema change");
        index.push(name);
    }
    assert_eq!(index.len(), 26);
}

#[test]
fn header_is_the_same_as_apache_avros_single_object_writer() {
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let (_, envelope) = golden_cases().remove(5);
    let ours = envelope.encode();
    let value = value::envelope_to_value(&envelope, &value::event_branches(&schema));
    let mut writer = apache_avro::GenericSingleObjectWriter::new_with_capacity(&schema, 256).unwrap();
    let mut theirs = Vec::new();
    writer.write_value(value, &mut theirs).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn fingerprint_is_rabin_of_the_canonical_form_little_endian() {
    // Reference implementation from the Avro specification, written out to pin the byte order.
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        *slot = fp;
    }
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let mut fp = EMPTY;
    for b in schema.canonical_form().bytes() {
        fp = (fp >> 8) ^ table[((fp ^ b as u64) & 0xff) as usize];
    }
    assert_eq!(Codec::current().fingerprint(), fp.to_le_bytes());
}

fn schema_v2() -> String {
    let mut json: serde_json::Value = serde_json::from_str(ENVELOPE_SCHEMA).unwrap();
    json["fields"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "trace_parent", "type": ["null", "string"], "default": null
    }));
    json.to_string()
}

#[test]
fn old_reader_reads_data_from_a_newer_writer() {
    let v2 = Schema::parse_str(&schema_v2()).unwrap();
    let (_, envelope) = golden_cases().remove(1);
    // A v2 producer writes the new field.
    let mut value = value::envelope_to_value(&envelope, &value::event_branches(&v2));
    if let Value::Record(fields) = &mut value {
        fields.push(("trace_parent".into(), Value::Union(1, Box::new(Value::String("00-abc-01".into())))));
    }
    let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
    bytes.extend_from_slice(&fingerprint(&v2));
    bytes.extend(GenericDatumWriter::builder(&v2).build().unwrap().write_value_to_vec(value).unwrap());
    // The current (v1) reader without v2 registered says which schema it lacks.
    assert!(matches!(Envelope::decode(&bytes), Err(DecodeError::UnknownSchema { .. })));
    // Given the writer schema (as a registry lookup would), it resolves and ignores the new field.
    let old_reader = Codec::new(ENVELOPE_SCHEMA, &[&schema_v2()]).unwrap();
    assert_eq!(old_reader.decode(&bytes).unwrap(), envelope);
}

#[test]
fn new_reader_reads_data_from_an_older_writer() {
    let new_reader = Codec::new(&schema_v2(), &[ENVELOPE_SCHEMA]).unwrap();
    for (name, envelope) in golden_cases() {
        let old_bytes = envelope.encode();
        assert_eq!(new_reader.decode(&old_bytes).unwrap(), envelope, "{name}");
    }
    assert_ne!(new_reader.fingerprint(), Codec::current().fingerprint());
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    assert_eq!(Envelope::decode(b""), Err(DecodeError::NotSingleObject));
    assert_eq!(Envelope::decode(b"{\"json\": true}"), Err(DecodeError::NotSingleObject));
    let mut unknown = SINGLE_OBJECT_MAGIC.to_vec();
    unknown.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0]);
    assert!(
        matches!(Envelope::decode(&unknown), Err(DecodeError::UnknownSchema { fingerprint }) if fingerprint == "0102030405060708")
    );
    let good = golden_cases().remove(4).1.encode();
    for cut in 10..good.len() {
        assert!(Envelope::decode(&good[..cut]).is_err(), "truncated at {cut} must not decode");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(Envelope::decode(&trailing), Err(DecodeError::Malformed(_))));
    // An out-of-range union branch (a newer event type this reader does not know).
    let mut future_branch = good[..10].to_vec();
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let datum = GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(value::envelope_to_value(&golden_cases().remove(4).1, &Codec::current().branches))
        .unwrap();
    assert_eq!(datum, good[10..]);
    // Rewrite the union index (a zigzag varint right before the RaiseEvent body) to 40.
    let branch = Codec::current().branches.iter().position(|b| b == "RaiseEvent").unwrap() as u8;
    let at = datum.iter().rposition(|&b| b == branch * 2).unwrap();
    let mut datum = datum;
    datum[at] = 80;
    future_branch.extend(datum);
    assert!(Envelope::decode(&future_branch).is_err());
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    (prop_oneof![Just(JSON.to_string()), "[a-z]{1,8}/[a-z]{1,8}"], proptest::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(content_type, data)| Payload { content_type, data })
}

fn arb_failure() -> impl Strategy<Value = Failure> {
    (".{0,12}", ".{0,24}", proptest::option::of(".{0,24}")).prop_map(|(kind, message, details)| Failure {
        kind,
        message,
        details,
    })
}

fn arb_core() -> impl Strategy<Value = Event> {
    let s = || ".{0,16}";
    prop_oneof![
        arb_payload().prop_map(|input| Event::StartOrchestration { input }),
        (arb_payload(), any::<i32>(), any::<Option<i64>>())
            .prop_map(|(input, attempt, timeout_ms)| Event::ScheduleActivity { input, attempt, timeout_ms }),
        (s(), arb_payload()).prop_map(|(correlation, result)| Event::ActivityCompleted { correlation, result }),
        (s(), arb_failure()).prop_map(|(correlation, failure)| Event::ActivityFailed { correlation, failure }),
        (s(), arb_payload()).prop_map(|(name, payload)| Event::RaiseEvent { name, payload }),
        (s(), arb_payload()).prop_map(|(operation, input)| Event::EntityOperation { operation, input }),
        (s(), prop_oneof![arb_payload().prop_map(Ok), arb_failure().prop_map(Err)])
            .prop_map(|(correlation, outcome)| Event::OperationResult { correlation, outcome }),
        (s(), arb_payload()).prop_map(|(correlation, output)| Event::OrchestrationCompleted { correlation, output }),
        (s(), arb_failure()).prop_map(|(correlation, failure)| Event::OrchestrationFailed { correlation, failure }),
        s().prop_map(|correlation| Event::TimerFired { correlation }),
        s().prop_map(|reason| Event::Terminate { reason }),
        s().prop_map(|reason| Event::Suspend { reason }),
        s().prop_map(|reason| Event::Resume { reason }),
        s().prop_map(|reason| Event::Purge { reason }),
        s().prop_map(|reason| Event::Rewind { reason }),
        (s(), s(), proptest::collection::vec(s(), 0..4), any::<i32>()).prop_map(
            |(owner, correlation, participants, position)| {
                Event::LockRequest { owner, correlation, participants, position }
            }
        ),
        (s(), proptest::collection::vec(s(), 0..4))
            .prop_map(|(correlation, participants)| { Event::LockGranted { correlation, participants } }),
        (s(), s()).prop_map(|(owner, correlation)| Event::LockRelease { owner, correlation }),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    arb_core().prop_recursive(4, 16, 1, |inner| {
        let s = || ".{0,16}";
        prop_oneof![
            (any::<i64>(), inner.clone()).prop_map(|(fire_at, e)| Event::WithDelay { fire_at, inner: Box::new(e) }),
            (s(), s(), inner.clone()).prop_map(|(address, correlation, e)| Event::ReplyTo {
                address,
                correlation,
                inner: Box::new(e)
            }),
            (s(), proptest::collection::vec(s(), 0..3), inner.clone())
                .prop_map(|(owner, participants, e)| Event::WithLock { owner, participants, inner: Box::new(e) }),
            (s(), proptest::collection::vec(s(), 0..3), inner)
                .prop_map(|(user, roles, e)| { Event::WithPrincipal { user, roles, inner: Box::new(e) } }),
        ]
    })
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        ".{0,24}",
        ".{0,24}",
        proptest::option::of(".{0,24}"),
        proptest::option::of((".{0,6}", any::<i64>()).prop_map(|(stream, seq)| Origin { stream, seq })),
        any::<i64>(),
        arb_event(),
    )
        .prop_map(|(id, target, source, origin, timestamp, body)| Envelope {
            id,
            target,
            source,
            origin,
            timestamp,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_envelope_round_trips(envelope in arb_envelope()) {
        let bytes = envelope.encode();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn core_sees_through_any_stack_of_wrappers(event in arb_event()) {
        prop_assert!(!event.core().is_wrapper());
    }
}

/// Written by the Python snippet in schemas/README.md (fastavro 1.13) under the first schema,
/// checked in as produced.
#[test]
fn an_event_produced_by_python_fastavro_decodes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden-foreign/python_fastavro_entity_signal.hex");
    let bytes = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
    let envelope = Envelope::decode(&bytes).unwrap();
    assert_eq!(envelope.target, "entity:Counter:c1");
    assert_eq!(envelope.source.as_deref(), Some("client:py"));
    assert_eq!(
        envelope.body,
        Event::EntityOperation {
            operation: "add".into(),
            input: Payload { content_type: JSON.into(), data: b"5".to_vec() }
        }
    );
    // It was written under the first schema (before ScheduleActivity.timeout_ms): readers keep
    // reading that schema's data, and what they write back under the current one reads the same.
    assert_eq!(hex::encode(&bytes[2..10]), "8659713f73004692");
    assert_ne!(bytes[2..10], Codec::current().fingerprint());
    assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    assert_eq!(envelope.encode()[10..], bytes[10..], "an entity signal's datum is the same in both schemas");
}

/// Single-object bytes of the current schema around a hand-made datum.
fn framed(datum: &[u8]) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&Codec::current().fingerprint());
    out.extend_from_slice(datum);
    out
}

/// A long as Avro writes it: a zig-zag varint (apache-avro's encoder).
fn zigzag(v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let writer = GenericDatumWriter::builder(&Schema::Long).build().expect("a writer");
    writer.write_value(&mut out, Value::Long(v)).expect("a long encodes");
    out
}

/// An envelope (id "x", target "entity:C:1", no source, no origin, timestamp 0) whose body is
/// `wrappers` × `WithDelay { fire_at: 0, inner: … }` around `TimerFired { correlation: "" }`.
fn nested_datum(wrappers: usize) -> Vec<u8> {
    let mut d = vec![0x02, b'x', 0x14];
    d.extend_from_slice(b"entity:C:1");
    d.extend_from_slice(&[0x00, 0x00, 0x00]);
    for _ in 0..wrappers {
        d.extend_from_slice(&[0x1c, 0x00]); // branch 14 (WithDelay), fire_at 0, then its inner Event
    }
    d.extend_from_slice(&[0x12, 0x00]); // branch 9 (TimerFired), correlation ""
    d
}

#[test]
fn nesting_is_capped_at_the_documented_number_of_wrappers() {
    let ok = Envelope::decode(&framed(&nested_datum(crate::bounded::MAX_WRAPPERS))).expect("32 wrappers decode");
    assert!(matches!(ok.body.core(), Event::TimerFired { .. }));
    let err = Envelope::decode(&framed(&nested_datum(crate::bounded::MAX_WRAPPERS + 1))).expect_err("33 do not");
    assert!(err.to_string().contains("at most 32 wrappers"), "{err}");
}

/// Two hundred thousand wrappers (400 KB) used to overflow the decoder's stack and abort the
/// process; now it is an error, found without recursion.
#[test]
fn a_deeply_nested_record_is_an_error_not_a_stack_overflow() {
    let bytes = framed(&nested_datum(200_000));
    assert!(bytes.len() > 400_000);
    let err = Envelope::decode(&bytes).expect_err("far too deep");
    assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
}

#[test]
fn a_length_or_count_larger_than_the_record_is_refused_before_any_allocation() {
    // The id claims a terabyte.
    let mut d = zigzag(1 << 40);
    d.push(b'x');
    let err = Envelope::decode(&framed(&d)).expect_err("a lying length");
    assert!(err.to_string().contains("only 1 remain"), "{err}");
    // A WithLock whose participants array claims 2^50 items.
    let mut d = nested_datum(0);
    d.truncate(d.len() - 2);
    d.extend_from_slice(&[0x20, 0x00]); // branch 16 (WithLock), owner ""
    d.extend_from_slice(&zigzag(1 << 50));
    let err = Envelope::decode(&framed(&d)).expect_err("a lying count");
    assert!(err.to_string().contains("items but only"), "{err}");
    // A varint that never ends.
    let err = Envelope::decode(&framed(&[0xff; 12])).expect_err("an endless varint");
    assert!(err.to_string().contains("varint"), "{err}");
}

/// The fingerprint `README.md` gives for the shipped schema is the shipped schema's (it had gone
/// stale once), and every earlier schema file is named by its own fingerprint.
#[test]
fn the_documented_fingerprints_are_the_real_ones() {
    let readme = include_str!("../README.md");
    let current = hex::encode(Codec::current().fingerprint());
    assert!(readme.contains(&format!("`{current}` (hex, in wire order)")), "README.md should give {current}");
    let history = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("avro/history");
    for entry in std::fs::read_dir(history).unwrap() {
        let path = entry.unwrap().path();
        let schema = Schema::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("envelope-{}.avsc", hex::encode(fingerprint(&schema))));
    }
}

/// The classes, as the trust boundary and the dedup read them: only requests, operators'
/// actions and sharing events come from outside; replies and releases carry no principal.
#[test]
fn every_event_has_the_class_the_protocol_gives_it() {
    let p = Payload::null;
    let op = || Box::new(Event::EntityOperation { operation: "add".into(), input: p() });
    let cases = [
        (Event::StartOrchestration { input: p() }, Class::Request),
        (Event::RaiseEvent { name: "n".into(), payload: p() }, Class::Request),
        (*op(), Class::Request),
        (Event::Rewind { reason: "r".into() }, Class::Request),
        (Event::Terminate { reason: "r".into() }, Class::Operator),
        (Event::Suspend { reason: "r".into() }, Class::Operator),
        (Event::Resume { reason: "r".into() }, Class::Operator),
        (Event::Purge { reason: "r".into() }, Class::Operator),
        (Event::Access(AccessChange::RevokeUser { user: "u".into() }), Class::Access),
        (Event::ScheduleActivity { input: p(), attempt: 1, timeout_ms: None }, Class::Invocation),
        (Event::TimerFired { correlation: "c".into() }, Class::Reply),
        (Event::ActivityCompleted { correlation: "c".into(), result: p() }, Class::Reply),
        (Event::LockGranted { correlation: "c".into(), participants: vec![] }, Class::Reply),
        (Event::LockRelease { owner: "o".into(), correlation: "c".into() }, Class::LockRelease),
        (Event::WithDelay { fire_at: 1, inner: op() }, Class::Wrapper),
    ];
    for (event, class) in cases {
        assert_eq!(event.class(), class, "{}", event.name());
        let outside = matches!(class, Class::Request | Class::Operator | Class::Access);
        assert_eq!(class.from_outside(), outside, "{}", event.name());
        let acts = !matches!(class, Class::Reply | Class::LockRelease | Class::Wrapper);
        assert_eq!(class.acts_for_sender(), acts, "{}", event.name());
    }
}
