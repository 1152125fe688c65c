//! Checks of the compose deployment that run without a Docker engine: `compose/compose.yaml`
//! parses; every image is pinned; every service has a healthcheck and waits for healthy
//! dependencies; every flag and `DURABLE_*` variable it passes to our binaries exists in their
//! `--help`; every `host:port` it references is a service exposing that port; `.env` variables
//! are documented in `env.example`; Prometheus and Grafana point at real services; and every
//! metric the dashboard uses is exposed by a real processor or projector (scraped here, running
//! on the real broker, Redis and Typesense).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::CommandFactory as _;
use serde_json::Value as Json;
use serde_yaml::Value;
use tests::e2e::{self, Client, InProcess};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose");

fn compose() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/compose.yaml")).expect("compose/compose.yaml");
    serde_yaml::from_str(&text).expect("compose.yaml is YAML")
}

fn services(c: &Value) -> BTreeMap<String, Value> {
    c["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// A compose list or string as strings.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().map(scalar).collect(),
        Value::Null => vec![],
        other => vec![scalar(other)],
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Environment of a service (merge keys resolved).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(m) = service["environment"].as_mapping() {
        for (k, v) in m {
            if k.as_str() == Some("<<") {
                for (k2, v2) in v.as_mapping().expect("merged mapping") {
                    env.insert(k2.as_str().unwrap().to_owned(), scalar(v2));
                }
            } else {
                env.insert(k.as_str().unwrap().to_owned(), scalar(v));
            }
        }
    }
    env
}

fn exposed(service: &Value) -> BTreeSet<u16> {
    strings(&service["expose"]).iter().map(|p| p.parse().expect("a port")).collect()
}

/// The help text of one of our binaries (and of a `durable` subcommand).
fn help(binary: &str, sub: Option<&str>) -> String {
    match binary {
        "processor" => durable_processor::runtime::Cli::command().render_long_help().to_string(),
        "projector" => {
            let mut c = durable_projector::cli::Cli::command();
            let mut text = c.render_long_help().to_string();
            for s in c.get_subcommands_mut() {
                text.push_str(&s.render_long_help().to_string());
            }
            text
        }
        "durable" => {
            let mut args = vec![];
            args.extend(sub);
            args.push("--help");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_durable")).args(&args).output().unwrap();
            assert!(out.status.success(), "durable {args:?} exists");
            String::from_utf8(out.stdout).unwrap()
        }
        other => panic!("{other} is not one of our binaries"),
    }
}

#[test]
fn every_image_is_pinned_and_every_service_is_healthchecked() {
    let c = compose();
    let all = services(&c);
    for (name, s) in &all {
        let image = s["image"].as_str().unwrap_or_else(|| panic!("{name} names its image"));
        let (_, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{name}: {image} has a tag"));
        assert!(!tag.is_empty() && tag != "latest", "{name}: {image} is pinned");
        assert!(s["healthcheck"]["test"].is_sequence(), "{name} has a healthcheck");
        if let Some(deps) = s["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = dep.as_str().unwrap();
                assert!(all.contains_key(dep), "{name} depends on {dep}, a service");
                assert_eq!(how["condition"].as_str(), Some("service_healthy"), "{name} waits for {dep} to be healthy");
            }
        }
    }
    for needed in ["kafka", "redis", "typesense", "processor", "projector", "prometheus", "grafana", "demo"] {
        assert!(all.contains_key(needed), "the stack has {needed}");
    }
    // Scalable: no fixed container name on the processor, and its published API is a port range
    // (one port per replica).
    let processor = &all["processor"];
    assert!(processor["container_name"].is_null(), "processor scales");
    for published in strings(&processor["ports"]) {
        assert!(
            published.contains("9464-") || published.contains("_PORTS"),
            "processor publishes a range: {published}"
        );
    }
    // Published ports are on the host's loopback only.
    for (name, s) in &all {
        for published in strings(&s["ports"]) {
            assert!(published.starts_with("127.0.0.1:"), "{name} publishes {published} beyond loopback");
        }
    }
    // Compose runs the Kafka version the tests run on.
    let tested = std::fs::read_to_string(format!("{DIR}/../scripts/kafka/broker")).unwrap();
    let version = tested
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\"${KAFKA_VERSION:-").and_then(|v| v.strip_suffix("}\"")))
        .expect("scripts/kafka/broker pins KAFKA_VERSION");
    assert_eq!(all["kafka"]["image"].as_str().unwrap(), format!("apache/kafka:{version}"));
    let kafka_env = environment(&all["kafka"]);
    assert!(kafka_env["KAFKA_PROCESS_ROLES"].contains("controller"), "KRaft mode");
    let redis = strings(&all["redis"]["command"]).join(" ");
    assert!(redis.contains("--appendonly yes"), "Redis with append-only persistence");
}

#[test]
fn our_binaries_get_only_flags_and_variables_they_have() {
    let c = compose();
    let all = services(&c);
    let mut checked = 0;
    for (name, s) in &all {
        if !s["image"].as_str().unwrap_or_default().starts_with("durable:") {
            continue;
        }
        let command = strings(&s["command"]);
        let binary = command.first().unwrap_or_else(|| panic!("{name} names its binary")).clone();
        let sub = command.get(1).filter(|a| !a.starts_with('-')).map(String::as_str);
        let text = help(&binary, if binary == "durable" { sub } else { None });
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(text.contains(flag), "{name}: `{binary}` has no {flag}");
        }
        for var in environment(s).keys().filter(|k| k.starts_with("DURABLE_")) {
            assert!(text.contains(&format!("env: {var}")), "{name}: `{binary}` reads no {var}");
        }
        let health = strings(&s["healthcheck"]["test"]);
        if health.get(1).map(String::as_str) == Some("durable") {
            let sub = health.iter().skip(2).find(|a| !a.starts_with('-') && !a.starts_with("http")).unwrap();
            help("durable", Some(sub));
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "processor, projector and demo run our image");
}

#[test]
fn every_referenced_host_and_port_is_a_service_that_exposes_it() {
    let c = compose();
    let all = services(&c);
    let reference = regex::Regex::new(r"(?:^|//|@|,)([a-z][a-z0-9-]*):(\d+)").unwrap();
    let check = |from: &str, text: &str| {
        for cap in reference.captures_iter(text) {
            let (host, port) = (&cap[1], cap[2].parse::<u16>().unwrap());
            if ["localhost"].contains(&host) {
                continue;
            }
            let service = all.get(host).unwrap_or_else(|| panic!("{from} refers to {host}:{port}, not a service"));
            assert!(exposed(service).contains(&port), "{from} refers to {host}:{port}, which {host} does not expose");
        }
    };
    for (name, s) in &all {
        for (k, v) in environment(s) {
            check(&format!("{name}.{k}"), &v);
        }
        for arg in strings(&s["command"]).iter().chain(strings(&s["healthcheck"]["test"]).iter()) {
            check(&format!("{name} command"), arg);
        }
    }
    let prometheus: Value = serde_yaml::from_str(&std::fs::read_to_string(format!("{DIR}/prometheus.yml")).unwrap())
        .expect("prometheus.yml");
    let mut jobs = 0;
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        for sd in job["dns_sd_configs"].as_sequence().unwrap() {
            let port = sd["port"].as_u64().unwrap() as u16;
            for host in strings(&sd["names"]) {
                check("prometheus.yml", &format!("{host}:{port}"));
                jobs += 1;
            }
        }
    }
    assert_eq!(jobs, 2, "Prometheus scrapes the processors and the projector");
    let datasource = std::fs::read_to_string(format!("{DIR}/grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let datasource: Value = serde_yaml::from_str(&datasource).unwrap();
    check("grafana datasource", datasource["datasources"][0]["url"].as_str().unwrap());
}

#[test]
fn env_variables_are_documented_and_no_secret_is_in_the_repository() {
    let text = std::fs::read_to_string(format!("{DIR}/compose.yaml")).unwrap();
    let example = std::fs::read_to_string(format!("{DIR}/env.example")).expect("compose/env.example");
    let var = regex::Regex::new(r"\$\{([A-Z_]+)(:-|:\?)?").unwrap();
    let mut seen = BTreeSet::new();
    for cap in var.captures_iter(&text) {
        let name = cap[1].to_owned();
        match cap.get(2).map(|m| m.as_str()) {
            Some(":?") => {
                assert!(example.contains(&format!("# {name}")), "required {name} is explained in env.example")
            }
            _ => assert!(example.contains(&format!("\n{name}=")), "{name} has its default in env.example"),
        }
        seen.insert(name);
    }
    assert!(seen.contains("TYPESENSE_API_KEY"));
    assert!(!example.lines().any(|l| l.starts_with("TYPESENSE_API_KEY=")), "no key in the repository");
    let ignored = std::fs::read_to_string(format!("{DIR}/../.gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "/compose/.env"), "compose/.env (generated secrets) is git-ignored");
    let docker_ignored = std::fs::read_to_string(format!("{DIR}/../.dockerignore")).expect(".dockerignore");
    for needed in ["target/", ".git/", "compose/.env"] {
        assert!(docker_ignored.lines().any(|l| l == needed), ".dockerignore keeps {needed} out of the build context");
    }
    let dockerfile = std::fs::read_to_string(format!("{DIR}/../Dockerfile")).expect("Dockerfile");
    for needed in
        ["--bin processor", "--bin projector", "--bin durable", "USER 10001", "AS build", "FROM debian:bookworm-slim"]
    {
        assert!(dockerfile.contains(needed), "Dockerfile has {needed}");
    }
}

fn metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every metric of the dashboard and of the docs exists on a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_uses_only_metrics_our_binaries_expose() {
    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/grafana/dashboards/durable.json")).unwrap())
            .expect("dashboard JSON");
    let metric = regex::Regex::new(r"durable_[a-z_]+").unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for m in metric.find_iter(target["expr"].as_str().unwrap()) {
                let name = m.as_str();
                let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                used.insert(base.to_owned());
            }
        }
    }
    assert!(used.len() >= 12, "{used:?}");

    let prefix = e2e::unique_prefix("scrape");
    let processor = InProcess::start(&prefix, 2).await;
    let typesense = std::env::var("DURABLE_TYPESENSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8108".into());
    let key = std::env::var("DURABLE_TYPESENSE_API_KEY").unwrap_or_else(|_| "durable-test-key".into());
    let config = durable_projector::ProjectorConfig::new(&e2e::brokers(), &prefix, &typesense, &key);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, projector_addr) = tokio::sync::oneshot::channel();
    let projector = tokio::spawn(durable_projector::run(
        config,
        async {
            let _ = stopped.await;
        },
        Some(ready),
    ));
    let projector_addr = projector_addr.await.expect("projector starts");
    let mut client = Client::new(&prefix);
    let events = vec![client.start("HelloSequence", "m1", vec!["Oslo"])];
    client.send(&events).await;
    let exposed = e2e::eventually(Duration::from_secs(60), "both scrapes show every dashboard metric", || async {
        let mut names = metric_names(&e2e::http_get(processor.metrics, "/metrics").await);
        names.extend(metric_names(&e2e::http_get(projector_addr, "/metrics").await));
        used.is_subset(&names).then_some(names)
    })
    .await;
    assert!(used.is_subset(&exposed), "missing: {:?}", used.difference(&exposed).collect::<Vec<_>>());
    let _ = stop.send(());
    projector.await.unwrap().unwrap();
    processor.stop().await;
}

/// `compose/init-env` writes `.env` once, readable by its owner only, with every default of
/// `env.example` and generated secrets; a second run keeps it.
#[test]
fn init_env_generates_the_secrets_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(e2e::unique_prefix("init-env"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["init-env", "env.example"] {
        std::fs::copy(format!("{DIR}/{file}"), dir.join(file)).unwrap();
    }
    // Its interpreter runs the copy: executing a file this process has just written races with the
    // other tests' spawns (a forked child may still hold the write descriptor: "Text file busy").
    let mode = std::fs::metadata(format!("{DIR}/init-env")).unwrap().permissions().mode();
    assert_eq!(mode & 0o100, 0o100, "compose/init-env is executable");
    let run = || {
        let out = std::process::Command::new("bash").arg(dir.join("init-env")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.join(".env")).unwrap()
    };
    let first = run();
    let key = first.lines().find_map(|l| l.strip_prefix("TYPESENSE_API_KEY=")).expect("a generated key");
    assert_eq!(key.len(), 48);
    assert!(first.lines().any(|l| l.starts_with("GRAFANA_ADMIN_PASSWORD=")));
    let secret = first.lines().find_map(|l| l.strip_prefix("DURABLE_SECRET=")).expect("a generated seal secret");
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    assert!(first.contains("\nDURABLE_PARTITIONS="), "the defaults come along");
    assert_eq!(std::fs::metadata(dir.join(".env")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(run(), first, "a second run keeps the secrets");
}
