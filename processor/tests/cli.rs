//! The `processor` binary's command line: help for every flag, and clear errors with exit code 2.

use std::process::Command;

/// The binary, with anonymous access on (what each test overrides when it is about
/// authentication).
fn processor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_processor"));
    command.env("DURABLE_ANONYMOUS", "true");
    command
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = processor().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--brokers", "DURABLE_BROKERS"),
        ("--prefix", "DURABLE_PREFIX"),
        ("--partitions", "DURABLE_PARTITIONS"),
        ("--group", "DURABLE_GROUP"),
        ("--redis-url", "DURABLE_REDIS_URL"),
        ("--metrics-addr", "DURABLE_METRICS_ADDR"),
        ("--batch", "DURABLE_BATCH"),
        ("--timer-interval", "DURABLE_TIMER_INTERVAL"),
        ("--kafka-option", "DURABLE_KAFKA_OPTIONS"),
        ("--kafka-security-protocol", "DURABLE_KAFKA_SECURITY_PROTOCOL"),
        ("--kafka-sasl-mechanism", "DURABLE_KAFKA_SASL_MECHANISM"),
        ("--kafka-sasl-username", "DURABLE_KAFKA_SASL_USERNAME"),
        ("--kafka-sasl-password", "DURABLE_KAFKA_SASL_PASSWORD"),
        ("--kafka-sasl-password-file", "DURABLE_KAFKA_SASL_PASSWORD_FILE"),
        ("--kafka-ssl-ca", "DURABLE_KAFKA_SSL_CA"),
        ("--replication-factor", "DURABLE_REPLICATION_FACTOR"),
        ("--min-insync-replicas", "DURABLE_MIN_INSYNC_REPLICAS"),
        ("--events-retention", "DURABLE_EVENTS_RETENTION"),
        ("--max-event-bytes", "DURABLE_MAX_EVENT_BYTES"),
        ("--activity-timeout", "DURABLE_ACTIVITY_TIMEOUT"),
        ("--secret", "DURABLE_SECRET"),
        ("--log", "DURABLE_LOG"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} missing from --help:\n{help}");
    }
}

#[test]
fn an_unreachable_redis_is_a_one_line_error_that_says_what_to_do() {
    let out = processor().args(["--redis-url", "redis://127.0.0.1:1", "--brokers", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        error.contains("cannot reach Redis at redis://127.0.0.1:1") && error.contains("DURABLE_REDIS_URL"),
        "{error}"
    );
}

#[test]
fn a_bad_flag_value_is_rejected_with_usage() {
    let out = processor().args(["--kafka-option", "no-equals-sign"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("is not KEY=VALUE"));
}

#[test]
fn secrets_in_the_environment_stay_out_of_help_and_errors() {
    let out = processor()
        .env("DURABLE_KAFKA_SASL_PASSWORD", "kafka-pw-6f1d")
        .env("DURABLE_KAFKA_OPTIONS", "ssl.key.password=key-pw-93ab")
        .env("DURABLE_REDIS_URL", "redis://app:redis-pw-77c2@127.0.0.1:1")
        .env("DURABLE_SECRET", "deployment-secret-5e0c")
        .env("DURABLE_JWT_SECRETS", "jwt-secret-2b7e-0123456789abcdef0123")
        .env("DURABLE_TYPESENSE_SEARCH_KEY", "search-key-8d1f")
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for secret in [
        "kafka-pw-6f1d",
        "key-pw-93ab",
        "redis-pw-77c2",
        "deployment-secret-5e0c",
        "jwt-secret-2b7e",
        "search-key-8d1f",
    ] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
    let out = processor().env("DURABLE_REDIS_URL", "redis://app:redis-pw-77c2@127.0.0.1:1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot reach Redis at redis://app:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("redis-pw-77c2"), "{stderr}");
}

#[test]
fn a_short_deployment_secret_is_refused_without_being_shown() {
    let out = processor()
        .env("DURABLE_SECRET", "long-enough-secret-0001,tiny-9c")
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("DURABLE_SECRET is not usable: secret number 2 has 7 bytes"), "{stderr}");
    assert!(!stderr.contains("tiny-9c") && !stderr.contains("long-enough-secret-0001"), "{stderr}");
}

#[test]
fn sasl_without_credentials_is_refused_with_what_to_set() {
    let out = processor()
        .args(["--kafka-security-protocol", "SASL_SSL", "--redis-url", "redis://127.0.0.1:1"])
        .env_remove("DURABLE_KAFKA_SASL_MECHANISM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("DURABLE_KAFKA_SASL_MECHANISM"), "{stderr}");
}

#[test]
fn every_setting_of_example_env_is_accepted() {
    // Load example.env as a shell would (values before the comments) and start: parsing must pass
    // and the start fail later, on the unreachable Redis.
    let mut cmd = processor();
    for line in include_str!("../../example.env").lines().filter(|l| l.starts_with("DURABLE_")) {
        let (key, value) = line.split_once('=').unwrap();
        cmd.env(key, value.split('#').next().unwrap_or("").trim());
    }
    let out = cmd.env("DURABLE_REDIS_URL", "redis://127.0.0.1:1").output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot reach Redis"), "example.env should parse: {stderr}");
}

#[test]
fn an_empty_kafka_options_variable_means_no_options() {
    // As in example.env: `DURABLE_KAFKA_OPTIONS=` must not stop the processor from starting.
    let out =
        processor().env("DURABLE_KAFKA_OPTIONS", "").args(["--redis-url", "redis://127.0.0.1:1"]).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot reach Redis"), "argument parsing should pass and fail later on Redis: {stderr}");
}

#[test]
fn a_processor_that_cannot_tell_who_calls_refuses_to_start_and_says_what_to_set() {
    let out =
        processor().env_remove("DURABLE_ANONYMOUS").args(["--redis-url", "redis://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("DURABLE_JWT_SECRETS") && stderr.contains("DURABLE_ANONYMOUS=true"), "{stderr}");
    // A short token secret is refused without being shown.
    let out = processor()
        .env("DURABLE_ANONYMOUS", "false")
        .env("DURABLE_JWT_SECRETS", "short-jwt-4c1a")
        .env("DURABLE_JWT_AUDIENCE", "a")
        .env("DURABLE_JWT_ISSUER", "i")
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("at least 32") && !stderr.contains("short-jwt-4c1a"), "{stderr}");
}
