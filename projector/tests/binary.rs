//! The README's `projector --help`: every flag with its environment variable; a missing API key
//! is a one-line error with a non-zero exit code.

use std::process::Command;

#[test]
fn the_projector_binary_documents_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_projector")).arg("--help").output().expect("run projector");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DURABLE_BROKERS",
        "DURABLE_PREFIX",
        "DURABLE_TYPESENSE_URL",
        "DURABLE_TYPESENSE_API_KEY",
        "DURABLE_PROJECTOR_BATCH",
        "DURABLE_PROJECTOR_LINGER",
        "DURABLE_PROJECTOR_METRICS_ADDR",
        "DURABLE_PROJECTOR_SCHEMAS",
    ] {
        assert!(help.contains(var), "--help names {var}: {help}");
    }
    assert!(help.contains("rebuild"), "{help}");
}

#[test]
fn a_missing_api_key_says_what_to_set() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_projector")).env_remove("DURABLE_TYPESENSE_API_KEY").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DURABLE_TYPESENSE_API_KEY") || err.contains("--typesense-api-key"), "{err}");
}
