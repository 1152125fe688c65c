//! The README's token flow, as written: its first line's settings configure a processor (on the
//! real Kafka and Redis), then every line runs in order in one shell, each retried for a while
//! (the events it depends on are applied asynchronously), and must succeed.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::e2e::{self, InProcess};

/// The lines of the block after the README's token-flow marker.
fn flow_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let start = readme.find("<!-- token-flow:").expect("the README marks its token flow");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").expect("a sh block") + 6..];
    block[..block.find("```").expect("the block ends")].lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_token_flow_works_against_a_processor_that_requires_tokens() {
    let lines = flow_lines();
    assert!(lines.len() >= 5 && lines[0].starts_with("export DURABLE_JWT_SECRETS="), "{lines:?}");
    // The first line's settings, as a shell sets them.
    let out = Command::new("bash").arg("-c").arg(format!("{}\nenv", lines[0])).output().expect("bash");
    let env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("DURABLE_JWT_"))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let setting = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).expect(name);
    let prefix = e2e::unique_prefix("token-flow");
    let mut config = InProcess::config(&prefix, 4);
    config.auth.anonymous = false;
    config.auth.jwt_secrets = vec![durable_kafka::Secret::new(setting("DURABLE_JWT_SECRETS"))];
    config.auth.jwt_audience = Some(setting("DURABLE_JWT_AUDIENCE"));
    config.auth.jwt_issuer = Some(setting("DURABLE_JWT_ISSUER"));
    let processor = InProcess::start_with(config).await;
    let api = format!("http://{}", processor.metrics);

    // Anonymous requests are refused here: exit 4, one line.
    let refused = Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(["status", "orch:Transfer:t1"])
        .env("DURABLE_API", &api)
        .env_remove("DURABLE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs a bearer token"));

    let mut script = format!("set -e\ndurable() {{ \"$DURABLE_BIN\" \"$@\"; }}\n{}\n", env_exports(&env));
    for line in &lines[1..] {
        // Each line retried for up to 30 s: what it reads may not be applied yet.
        script.push_str(&format!(
            "for i in $(seq 150); do if {line}; then break; fi; if [ $i = 150 ]; then echo \"failed: {}\" >&2; exit 1; fi; sleep 0.2; done\n",
            line.replace('"', "\\\"")
        ));
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("DURABLE_BIN", env!("CARGO_BIN_EXE_durable"))
            .env("DURABLE_API", api)
            .output()
            .expect("bash")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the token flow failed after {:?}:\n{stdout}\n{stderr}", started.elapsed());
    // bob's status line shows the transfer he may now read.
    assert!(stdout.contains("orch:Transfer:t1"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(120));
    processor.stop().await;
}

fn env_exports(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect()
}

/// The management API on its own address over https (the test CA's certificate), `/metrics` and
/// `/status` on theirs over plain HTTP: the CLI talks to it with --api-ca, a plain HTTP request
/// to the API's port gets no answer, and the metrics address has no API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_serves_https_on_its_own_address() {
    let tls = e2e::test_ca().parent().expect("the CA's directory").to_path_buf();
    let prefix = e2e::unique_prefix("api-tls");
    let api_port = e2e::free_port();
    let mut config = InProcess::config(&prefix, 2);
    config.api_addr = Some(format!("127.0.0.1:{api_port}").parse().unwrap());
    config.api_tls_cert = Some(tls.join("server.pem"));
    config.api_tls_key = Some(tls.join("server.key"));
    let processor = InProcess::start_with(config).await;
    let api = format!("https://127.0.0.1:{api_port}");
    let out = durable_over_https(&api, &["start", "HelloSequence", "--key", "tls1", "--input", "[\"Oslo\"]"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "orch:HelloSequence:tls1");
    let waited = durable_over_https(&api, &["wait", "orch:HelloSequence:tls1", "--timeout", "60s"]).await;
    assert_eq!(waited.status.code(), Some(0), "{}", String::from_utf8_lossy(&waited.stdout));
    // Without the CA the certificate is not trusted: exit 2, saying it cannot reach the API.
    let untrusted = Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(["--api", &api, "status", "orch:HelloSequence:tls1"])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(2));
    // Plain HTTP to the API's port gets no HTTP answer; the metrics address serves no API.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{api_port}/v1/registry")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let metrics = format!("http://{}", processor.metrics);
    let http = reqwest::Client::new();
    assert!(http.get(format!("{metrics}/metrics")).send().await.unwrap().status().is_success());
    assert_eq!(http.get(format!("{metrics}/v1/registry")).send().await.unwrap().status(), 404);
    processor.stop().await;
}

/// `durable --api <api> --api-ca <test CA> <args>`, off the runtime's threads.
async fn durable_over_https(api: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_durable"));
    command.args(["--api", api, "--api-ca"]).arg(e2e::test_ca()).args(args).env_remove("DURABLE_TOKEN");
    tokio::task::spawn_blocking(move || command.output().expect("run durable")).await.expect("joined")
}
