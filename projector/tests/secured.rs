//! Connections as users have them: a processor, its management API's producer and the projector
//! reach Apache Kafka over its SASL_SSL listener (certificates and the SCRAM/PLAIN user made by
//! `scripts/kafka/broker`), with no plaintext path in between.

use std::time::Duration;

use durable_kafka::SaslMechanism;
use durable_projector::typesense::Typesense;
use durable_projector::{mapping, ProjectorConfig};
use tests::e2e::{self, InProcess, State};

fn typesense_url() -> String {
    std::env::var("DURABLE_TYPESENSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8108".into())
}

fn api_key() -> String {
    std::env::var("DURABLE_TYPESENSE_API_KEY").unwrap_or_else(|_| "durable-test-key".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processor_api_and_projector_work_over_sasl_ssl() {
    let prefix = e2e::unique_prefix("sasl");
    let mut config = InProcess::config(&prefix, 4);
    config.kafka = e2e::secured(SaslMechanism::ScramSha512);
    let processor = InProcess::start_with(config).await;

    let mut projector_config = ProjectorConfig::new("unused:0", &prefix, &typesense_url(), &api_key());
    projector_config.kafka = e2e::secured(SaslMechanism::Plain);
    projector_config.linger = Duration::from_millis(50);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, ready_rx) = tokio::sync::oneshot::channel();
    let projector = tokio::spawn(durable_projector::run(
        projector_config,
        async {
            let _ = stopped.await;
        },
        Some(ready),
    ));
    if ready_rx.await.is_err() {
        panic!("projector did not start over SASL_SSL: {:?}", projector.await);
    }

    // The management API produces the start over the processor's SASL_SSL connection.
    let response = e2e::http_post(
        processor.metrics,
        "/v1/orchestrations/HelloSequence",
        &serde_json::json!({"key": "secured", "input": ["Oslo"]}),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let state = State::connect(&prefix, 4).await;
    let id = "orch:HelloSequence:secured";
    let greetings: Vec<String> = state.output(id, Duration::from_secs(60)).await.decode().unwrap();
    assert_eq!(greetings, ["Hello Oslo!"]);

    // The projector read the state record over SASL_SSL (PLAIN) and indexed it.
    let ts = Typesense::new(&typesense_url(), &api_key(), Duration::from_secs(10)).expect("client");
    let alias = mapping::orchestrations_alias(&prefix);
    let doc = e2e::eventually(Duration::from_secs(60), "the orchestration is indexed as completed", || async {
        ts.document(&alias, id).await.ok().flatten().filter(|d| d["status"] == "completed")
    })
    .await;
    assert_eq!(doc["name"], "HelloSequence");

    let _ = stop.send(());
    projector.await.expect("projector task").expect("clean stop");
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_is_an_error_that_names_what_to_check_and_not_the_password() {
    let prefix = e2e::unique_prefix("sasl-wrong");
    let mut config = InProcess::config(&prefix, 1);
    config.kafka = e2e::secured(SaslMechanism::ScramSha256);
    config.kafka.sasl_password = Some(durable_kafka::Secret::new("not-the-password-4e1f"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        durable_processor::runtime::run(config, e2e::registry(), std::future::pending(), None),
    )
    .await
    .expect("the processor gives up instead of hanging");
    let error = format!("{:#}", outcome.expect_err("authentication fails"));
    assert!(error.contains("DURABLE_KAFKA_SASL"), "{error}");
    assert!(!error.contains("not-the-password-4e1f"), "{error}");
}
