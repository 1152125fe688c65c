//! The `durable` command line: `--help` everywhere, wrong arguments and unreachable servers give
//! one line that says what to do and a non-zero exit code; then every command against a real
//! processor (Apache Kafka and Redis, as CI starts them) through its management API.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tests::e2e::{self, InProcess};

const COMMANDS: [&str; 26] = [
    "list",
    "start",
    "signal",
    "raise",
    "status",
    "wait",
    "state",
    "history",
    "terminate",
    "suspend",
    "resume",
    "restart",
    "rewind",
    "purge",
    "batch",
    "accept-loss",
    "dead",
    "share",
    "revoke",
    "transfer-ownership",
    "add-owner",
    "token",
    "search",
    "dev",
    "demo",
    "health",
];

fn durable(api: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(args)
        .env("DURABLE_API", api)
        .env_remove("DURABLE_DEV_ADDR")
        .output()
        .expect("run durable")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run, expect exit `code`, return stdout.
fn expect(api: &str, args: &[&str], code: i32) -> String {
    let o = durable(api, args);
    assert_eq!(o.status.code(), Some(code), "durable {args:?}: stdout {} stderr {}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn every_command_has_help() {
    let top = expect("http://127.0.0.1:1", &["--help"], 0);
    for c in COMMANDS {
        assert!(top.contains(c), "`durable --help` lists {c}");
        let help = expect("http://127.0.0.1:1", &[c, "--help"], 0);
        assert!(help.contains(&format!("Usage: durable {c}")), "{help}");
        let env = if c == "search" { "DURABLE_TYPESENSE_URL" } else { "DURABLE_API" };
        assert!(help.contains(env) || c == "dev" || c == "demo" || c == "health", "{c} --help names {env}: {help}");
    }
    assert!(top.contains("Exit codes"), "{top}");
}

#[test]
fn wrong_arguments_give_one_line_and_exit_2() {
    let cases: [&[&str]; 5] = [
        &["start"],
        &["frobnicate"],
        &["signal", "Counter", "c1", "add", "--input", "not json"],
        &["wait", "orch:A:b", "--timeout", "soon"],
        &["status"],
    ];
    for args in cases {
        let o = durable("http://127.0.0.1:1", args);
        assert_eq!(o.status.code(), Some(2), "durable {args:?}");
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "one line for {args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("--help"), "says where to look: {err}");
    }
}

#[test]
fn an_unreachable_api_says_what_to_do() {
    for args in
        [&["status", "orch:HelloSequence:x"][..], &["start", "HelloSequence"], &["signal", "Counter", "c", "add"]]
    {
        let o = durable("http://127.0.0.1:1", args);
        assert_eq!(o.status.code(), Some(2), "durable {args:?}");
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("cannot reach the Durable API at http://127.0.0.1:1"), "{err}");
        assert!(err.contains("DURABLE_API"), "{err}");
    }
    let o = durable("localhost:9464", &["status", "orch:A:b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("e.g. http://127.0.0.1:9464"), "{}", stderr(&o));
}

/// Every command against a processor on the real broker and Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_works_against_a_real_processor() {
    let prefix = e2e::unique_prefix("cli");
    let processor = InProcess::start(&prefix, 4).await;
    let api = format!("http://{}", processor.metrics);
    let api = api.as_str();
    let run = |args: Vec<String>, code: i32| {
        let api = api.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                expect(&api, &args, code)
            })
            .await
            .expect("cli task")
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // start + wait + status + state + history.
    let id = run(args(&["start", "HelloSequence", "--key", "h1", "--input", r#"["Oslo","Lima"]"#]), 0).await;
    assert_eq!(id.trim(), "orch:HelloSequence:h1");
    let waited = run(args(&["wait", "orch:HelloSequence:h1", "--timeout", "60s"]), 0).await;
    assert!(waited.contains("status        completed"), "{waited}");
    let status = run(args(&["status", "orch:HelloSequence:h1", "--json"]), 0).await;
    let status: Value = serde_json::from_str(&status).expect("status --json is JSON");
    assert_eq!(status["output"], serde_json::json!(["Hello Oslo!", "Hello Lima!"]));
    let state: Value = serde_json::from_str(&run(args(&["state", "orch:HelloSequence:h1"]), 0).await).unwrap();
    assert_eq!(state, serde_json::json!(["Hello Oslo!", "Hello Lima!"]));
    let history: Value =
        serde_json::from_str(&run(args(&["history", "orch:HelloSequence:h1", "--json"]), 0).await).unwrap();
    let timeline = run(args(&["history", "orch:HelloSequence:h1"]), 0).await;
    assert!(timeline.contains("#1 CallActivity SayHello") && timeline.contains("→ \"Hello Lima!\""), "{timeline}");
    let commands = history["commands"].as_array().expect("commands");
    assert_eq!(commands.len(), 2, "{history}");
    assert_eq!(commands[0]["kind"], "CallActivity");
    assert_eq!(commands[0]["name"], "SayHello");
    assert_eq!(history["deliveries"][1]["completion"]["value"], "Hello Lima!");

    // signal + state of an entity (signals through the API are applied once each).
    for _ in 0..3 {
        let out = run(args(&["signal", "Counter", "c1", "add", "--input", "2"]), 0).await;
        assert_eq!(out.trim(), "entity:Counter:c1");
    }
    let counted = e2e::eventually(Duration::from_secs(30), "the counter reaches 6", || async {
        let out = durable_async(api, &["state", "entity:Counter:c1"]).await;
        let v: Value = serde_json::from_str(&stdout(&out)).ok()?;
        (v["value"] == 6).then_some(v)
    })
    .await;
    assert_eq!(counted, serde_json::json!({ "value": 6 }));

    // raise: a Ticker finishes after two tick events.
    run(args(&["start", "Ticker", "--key", "t1", "--input", "[0, 2]"]), 0).await;
    for _ in 0..2 {
        run(args(&["raise", "orch:Ticker:t1", "tick", "--payload", "1"]), 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let done = run(args(&["wait", "orch:Ticker:t1", "--timeout", "60s"]), 0).await;
    assert!(done.contains("output        2"), "{done}");

    // signal-with-start: ticks raised before the start wait for it (pending), and it takes them.
    for _ in 0..2 {
        run(args(&["raise", "orch:Ticker:t2", "tick", "--payload", "1"]), 0).await;
    }
    let pending = e2e::eventually(Duration::from_secs(60), "t2 is pending with two events", || async {
        let out = durable_async(api, &["status", "orch:Ticker:t2", "--json"]).await;
        let v = serde_json::from_str::<Value>(&stdout(&out)).ok()?;
        (v["status"] == "pending" && v["raised"] == 2).then_some(v)
    })
    .await;
    assert_eq!(pending["generation"], 0, "{pending}");
    let listed = run(args(&["list", "--kind", "orch", "--status", "pending"]), 0).await;
    assert!(listed.contains("orch:Ticker:t2"), "{listed}");
    let early = durable_async(api, &["suspend", "orch:Ticker:t2"]).await;
    assert_eq!(early.status.code(), Some(4), "a pending orchestration is not suspended: {}", stderr(&early));
    run(args(&["start", "Ticker", "--key", "t2", "--input", "[0, 2]"]), 0).await;
    let done = run(args(&["wait", "orch:Ticker:t2", "--timeout", "60s"]), 0).await;
    assert!(done.contains("output        2"), "{done}");

    // terminate: an Approval waits an hour for `approve`; wait then exits 1.
    run(args(&["start", "Approval", "--key", "a1", "--input", r#"{"counter":"ac","amount":1}"#]), 0).await;
    let timed_out = durable_async(api, &["wait", "orch:Approval:a1", "--timeout", "1s"]).await;
    assert_eq!(timed_out.status.code(), Some(3), "a running instance times out: {}", stderr(&timed_out));
    assert!(stderr(&timed_out).contains("--timeout"), "{}", stderr(&timed_out));
    run(args(&["terminate", "orch:Approval:a1", "--reason", "changed my mind"]), 0).await;
    let ended = run(args(&["wait", "orch:Approval:a1", "--timeout", "60s"]), 1).await;
    assert!(ended.contains("status        terminated") && ended.contains("changed my mind"), "{ended}");

    // list: from the index, filtered, paged, counted.
    let hello: Value =
        serde_json::from_str(&run(args(&["list", "--kind", "orch", "--name", "HelloSequence", "--json"]), 0).await)
            .expect("list --json is JSON");
    assert_eq!(hello.as_array().map(Vec::len), Some(1), "{hello}");
    assert_eq!(
        (hello[0]["instance"].as_str(), hello[0]["status"].as_str()),
        (Some("orch:HelloSequence:h1"), Some("completed"))
    );
    let table = run(args(&["list", "--kind", "orch", "--status", "terminated"]), 0).await;
    assert!(
        table.starts_with("INSTANCE") && table.contains("orch:Approval:a1") && table.contains("terminated"),
        "{table}"
    );
    assert!(!table.contains("HelloSequence"), "{table}");
    let all: Value = serde_json::from_str(&run(args(&["list", "--json"]), 0).await).unwrap();
    let two: Value = serde_json::from_str(&run(args(&["list", "--json", "--limit", "2"]), 0).await).unwrap();
    assert!(all.as_array().unwrap().len() >= 4, "{all}");
    assert_eq!(two.as_array().unwrap().len(), 2, "--limit pages to exactly that many");
    let ids = |v: &Value| {
        v.as_array().unwrap().iter().map(|i| i["instance"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let mut unique = ids(&all);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids(&all).len(), "each instance once: {all}");
    // Most recently changed first by default; by id the same instances, in partition order.
    let changed: Vec<i64> = all.as_array().unwrap().iter().map(|i| i["updated_at"].as_i64().unwrap()).collect();
    assert!(changed.windows(2).all(|w| w[0] >= w[1]), "newest first: {changed:?}");
    let by_id: Value = serde_json::from_str(&run(args(&["list", "--json", "--order", "id"]), 0).await).unwrap();
    let mut by_id = ids(&by_id);
    by_id.sort();
    assert_eq!(by_id, unique, "both orders list every instance once");
    let recent = run(args(&["list", "--changed-within", "10m", "--kind", "entity"]), 0).await;
    assert!(recent.contains("entity:Counter:c1") && !recent.contains("orch:"), "{recent}");
    let counts: Value = serde_json::from_str(&run(args(&["list", "--counts", "--json"]), 0).await).unwrap();
    let count = |name: &str, status: &str| {
        counts["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name && c["status"] == status)
            .map(|c| c["count"].clone())
    };
    assert_eq!(count("HelloSequence", "completed"), Some(serde_json::json!(1)), "{counts}");
    assert_eq!(count("Approval", "terminated"), Some(serde_json::json!(1)), "{counts}");
    assert_eq!(counts["total"].as_u64(), Some(all.as_array().unwrap().len() as u64), "{counts}");
    let table = run(args(&["list", "--counts"]), 0).await;
    assert!(table.contains("orch:Ticker") && table.contains("total"), "{table}");
    let bad = durable_async(api, &["list", "--name", "Approval"]).await;
    assert_eq!(bad.status.code(), Some(2), "--name needs --kind");

    // suspend / resume: what reaches a suspended orchestration waits for the resume.
    run(args(&["start", "Approval", "--key", "s1", "--input", r#"{"counter":"sc","amount":4}"#]), 0).await;
    let status_of = |id: &'static str| async move {
        let out = durable_async(api, &["status", id, "--json"]).await;
        serde_json::from_str::<Value>(&stdout(&out)).unwrap_or(Value::Null)
    };
    e2e::eventually(Duration::from_secs(60), "s1 waits for approval", || async {
        (status_of("orch:Approval:s1").await["custom_status"] == "waiting for approval").then_some(())
    })
    .await;
    run(args(&["suspend", "orch:Approval:s1", "--reason", "audit"]), 0).await;
    e2e::eventually(Duration::from_secs(30), "s1 is suspended", || async {
        (status_of("orch:Approval:s1").await["status"] == "suspended").then_some(())
    })
    .await;
    let again = durable_async(api, &["suspend", "orch:Approval:s1"]).await;
    assert_eq!(again.status.code(), Some(4), "a suspended orchestration is not suspended again");
    assert!(stderr(&again).contains("only a running orchestration"), "{}", stderr(&again));
    run(args(&["raise", "orch:Approval:s1", "approve", "--payload", "true"]), 0).await;
    let kept = e2e::eventually(Duration::from_secs(30), "s1 keeps the event", || async {
        let s = status_of("orch:Approval:s1").await;
        (s["held"] == 1).then_some(s)
    })
    .await;
    assert_eq!((kept["status"].as_str(), kept["reason"].as_str()), (Some("suspended"), Some("audit")), "{kept}");
    let suspended = run(args(&["list", "--kind", "orch", "--status", "suspended", "--json"]), 0).await;
    assert!(suspended.contains("orch:Approval:s1"), "{suspended}");
    run(args(&["resume", "orch:Approval:s1"]), 0).await;
    let resumed = run(args(&["wait", "orch:Approval:s1", "--timeout", "60s"]), 0).await;
    assert!(resumed.contains("approved=true|value=4"), "the kept approve event applied on resume: {resumed}");
    let not_suspended = durable_async(api, &["resume", "orch:Approval:s1"]).await;
    assert_eq!(not_suspended.status.code(), Some(4), "{}", stderr(&not_suspended));

    // restart: a terminated orchestration runs again from its input, as generation 1.
    let running = durable_async(api, &["restart", "orch:Approval:s1x"]).await;
    assert_eq!(running.status.code(), Some(4), "no such instance");
    run(args(&["restart", "orch:Approval:a1"]), 0).await;
    let restarted = e2e::eventually(Duration::from_secs(30), "a1 runs again", || async {
        let s = status_of("orch:Approval:a1").await;
        (s["generation"] == 1 && s["status"] == "running").then_some(s)
    })
    .await;
    assert_eq!(restarted["input"], serde_json::json!({ "counter": "ac", "amount": 1 }), "{restarted}");
    let busy = durable_async(api, &["purge", "orch:Approval:a1"]).await;
    assert_eq!(busy.status.code(), Some(4), "a running orchestration is not purged");
    assert!(stderr(&busy).contains("terminate it first"), "{}", stderr(&busy));
    run(args(&["terminate", "orch:Approval:a1", "--reason", "changed my mind"]), 0).await;
    run(args(&["wait", "orch:Approval:a1", "--timeout", "60s"]), 1).await;

    // rewind: a run that failed in an activity runs on from there once the cause is fixed,
    // keeping what succeeded; a rewind before the fix fails the same way again.
    run(args(&["start", "CallsFixable", "--key", "rw"]), 0).await;
    let failed = durable_async(api, &["wait", "orch:CallsFixable:rw", "--timeout", "60s"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", stdout(&failed));
    let not_yet = run(args(&["rewind", "orch:CallsFixable:rw", "--reason", "retry"]), 0).await;
    assert_eq!(not_yet.trim(), "orch:CallsFixable:rw");
    e2e::eventually(Duration::from_secs(30), "the rewound run fails again", || async {
        let v: Value =
            serde_json::from_str(&stdout(&durable_async(api, &["status", "orch:CallsFixable:rw", "--json"]).await))
                .ok()?;
        (v["status"] == "failed" && v["version"].as_u64()? >= 5).then_some(())
    })
    .await;
    e2e::FIXED.store(true, std::sync::atomic::Ordering::SeqCst);
    run(args(&["rewind", "orch:CallsFixable:rw"]), 0).await;
    let done = run(args(&["wait", "orch:CallsFixable:rw", "--timeout", "60s"]), 0).await;
    assert!(done.contains("Hello Rome! and fixed"), "{done}");
    let generation: Value =
        serde_json::from_str(&run(args(&["status", "orch:CallsFixable:rw", "--json"]), 0).await).unwrap();
    assert_eq!(generation["generation"], 0, "a rewind runs on in the same generation");
    let completed = durable_async(api, &["rewind", "orch:CallsFixable:rw"]).await;
    assert_eq!(completed.status.code(), Some(4));
    assert!(stderr(&completed).contains("only a failed orchestration can be rewound"), "{}", stderr(&completed));
    let code_failed = durable_async(api, &["rewind", "orch:HelloSequence:gone"]).await;
    assert_eq!(code_failed.status.code(), Some(4), "not failed");

    // purge one, then a batch: gone from status, the list and the counts.
    run(args(&["start", "HelloSequence", "--key", "gone", "--input", r#"["X"]"#]), 0).await;
    run(args(&["wait", "orch:HelloSequence:gone", "--timeout", "60s"]), 0).await;
    run(args(&["purge", "orch:HelloSequence:gone"]), 0).await;
    e2e::eventually(Duration::from_secs(30), "the purged instance is gone", || async {
        (durable_async(api, &["status", "orch:HelloSequence:gone"]).await.status.code() == Some(4)).then_some(())
    })
    .await;
    let dry =
        run(args(&["batch", "purge", "--kind", "orch", "--name", "Approval", "--status", "completed", "--dry-run"]), 0)
            .await;
    assert!(dry.contains("purge would go to 1 instances"), "{dry}");
    let purged =
        run(args(&["batch", "purge", "--kind", "orch", "--name", "Approval", "--status", "completed"]), 0).await;
    assert!(purged.contains("sent to 1 of 1"), "{purged}");
    e2e::eventually(Duration::from_secs(30), "the batch purged s1", || async {
        (durable_async(api, &["status", "orch:Approval:s1"]).await.status.code() == Some(4)).then_some(())
    })
    .await;
    let refused = durable_async(api, &["batch", "suspend", "--kind", "orch", "--name", "Approval"]).await;
    assert_eq!(refused.status.code(), Some(4), "a1 is terminated: suspending it is refused");
    assert!(stdout(&refused).contains("refused orch:Approval:a1"), "{}", stdout(&refused));

    // dead letters: list, show, redrive. Three records no processor sealed: a signal claiming to
    // come from an instance (refused; sent back as the operator's own write it applies, and a
    // second redrive is a duplicate), a reply (a protocol message: cannot be sent back), and a
    // signal of an operation the entity lacks (sent back, refused again).
    let mut client = e2e::Client::new(&prefix);
    let counter = durable_processor::InstanceId::entity("Counter", "dl");
    let mut forged = client.signal(&counter, "add", 5);
    forged.source = Some("orch:Approval:a1".into());
    let reply = client.event("orch:Approval:a1", durable_processor::Event::TimerFired { correlation: "t".into() });
    let unknown = client.signal(&counter, "nosuchop", 1);
    client.send(&[forged.clone(), reply.clone(), unknown.clone()]).await;
    let listed = e2e::eventually(Duration::from_secs(30), "three dead letters", || async {
        let out = durable_async(api, &["dead", "list", "--json"]).await;
        let letters: Vec<Value> = serde_json::from_str(&stdout(&out)).ok()?;
        (letters.len() >= 3).then_some(letters)
    })
    .await;
    let id_of = |event_id: &str| {
        let letter =
            listed.iter().find(|l| l["event_id"] == event_id).unwrap_or_else(|| panic!("{event_id} in {listed:?}"));
        letter["id"].as_str().unwrap().to_owned()
    };
    let (forged_id, reply_id, unknown_id) = (id_of(&forged.id), id_of(&reply.id), id_of(&unknown.id));
    let table = run(args(&["dead", "list"]), 0).await;
    assert!(table.contains("EntityOperation → entity:Counter:dl") && table.contains("claims to come from"), "{table}");
    let shown: Value = serde_json::from_str(&run(args(&["dead", "show", &forged_id]), 0).await).unwrap();
    assert_eq!(shown["envelope"]["body"]["EntityOperation"]["input"], 5, "{shown}");
    assert_eq!(shown["redrive"]["possible"], true, "{shown}");
    let sent = run(args(&["dead", "redrive", &forged_id]), 0).await;
    assert!(sent.contains("sent back to entity:Counter:dl"), "{sent}");
    e2e::eventually(Duration::from_secs(30), "the redriven signal applied", || async {
        let v: Value =
            serde_json::from_str(&stdout(&durable_async(api, &["state", "entity:Counter:dl"]).await)).ok()?;
        (v["value"] == 5).then_some(())
    })
    .await;
    run(args(&["dead", "redrive", &forged_id]), 0).await;
    let protocol = durable_async(api, &["dead", "redrive", &reply_id]).await;
    assert_eq!(protocol.status.code(), Some(4), "a reply cannot be sent back");
    assert!(stdout(&protocol).contains("part of Durable's protocol"), "{}", stdout(&protocol));
    run(args(&["dead", "redrive", &unknown_id]), 0).await;
    e2e::eventually(Duration::from_secs(30), "the redriven unknown operation is refused again", || async {
        let out = durable_async(api, &["dead", "list", "--json"]).await;
        let letters: Vec<Value> = serde_json::from_str(&stdout(&out)).ok()?;
        let again = format!("{}/redrive/{unknown_id}", unknown.id);
        letters.iter().any(|l| l["event_id"] == again.as_str()).then_some(())
    })
    .await;
    // The second redrive of the forged signal was a duplicate: still 5 once the unknown
    // operation (sent after it, to the same entity) came back refused.
    let v: Value = serde_json::from_str(&run(args(&["state", "entity:Counter:dl"]), 0).await).unwrap();
    assert_eq!(v["value"], 5, "a letter redriven twice is applied once");
    let gone = durable_async(api, &["dead", "show", "0-999999"]).await;
    assert_eq!(gone.status.code(), Some(4));

    // Refusals: exit 4 with the API's message.
    let unknown = durable_async(api, &["start", "NoSuchThing"]).await;
    assert_eq!(unknown.status.code(), Some(4));
    assert!(
        stderr(&unknown)
            .contains("registered: Approval, CallsBeats, CallsBoom, CallsFixable, CallsHang, CallsHangBriefly, CallsPatient, CallsSized, FanOut"),
        "{}",
        stderr(&unknown)
    );
    let missing = durable_async(api, &["status", "orch:HelloSequence:never"]).await;
    assert_eq!(missing.status.code(), Some(4));
    assert!(stderr(&missing).contains("start it first"), "{}", stderr(&missing));
    let bad = durable_async(api, &["status", "not-an-id"]).await;
    assert_eq!(bad.status.code(), Some(4));
    assert!(stderr(&bad).contains("ids look like orch:<name>:<key>"), "{}", stderr(&bad));
    let entity_event = durable_async(api, &["raise", "entity:Counter:c1", "tick"]).await;
    assert_eq!(entity_event.status.code(), Some(4));
    let nothing_lost = durable_async(api, &["accept-loss", "0"]).await;
    assert_eq!(nothing_lost.status.code(), Some(4));
    assert!(stderr(&nothing_lost).contains("no recorded loss"), "{}", stderr(&nothing_lost));
    let no_partition = durable_async(api, &["accept-loss", "9999"]).await;
    assert_eq!(no_partition.status.code(), Some(4));

    // health (the compose healthcheck) and the bank demo workload.
    assert_eq!(run(args(&["health"]), 0).await.trim(), "ok");
    let demo = run(args(&["demo", "--accounts", "4", "--transfers", "6", "--run", "d1"]), 0).await;
    assert!(demo.contains("demo: 4 accounts, 6 transfers done"), "{demo}");
    let mut total = 0;
    for i in 0..4 {
        let out = run(args(&["state", &format!("entity:Account:d1-acc{i}")]), 0).await;
        total += serde_json::from_str::<Value>(&out).unwrap()["balance"].as_i64().unwrap();
    }
    assert_eq!(total, 4000, "transfers conserve money");

    processor.stop().await;
}

async fn durable_async(api: &str, args: &[&str]) -> Output {
    let api = api.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        durable(&api, &args)
    })
    .await
    .expect("cli task")
}

/// The management API directly: JSON errors with a code and a message; writes answer 202 with
/// where the event landed; a repeated event id is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_management_api_speaks_json() {
    let prefix = e2e::unique_prefix("api");
    let processor = InProcess::start(&prefix, 4).await;
    let base = format!("http://{}", processor.metrics);
    let http = reqwest_client();

    let registry: Value = http.get(format!("{base}/v1/registry")).send().await.unwrap().json().await.unwrap();
    assert!(registry["entities"].as_array().unwrap().iter().any(|e| e == "Counter"), "{registry}");

    let accepted = http
        .post(format!("{base}/v1/entities/Counter/k%2F1/add"))
        .json(&serde_json::json!({ "input": 5, "event_id": "same-id" }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["instance"], "entity:Counter:k/1", "{accepted}");
    assert!(accepted["offset"].as_i64().is_some(), "{accepted}");
    // The same event id again: a retry, dropped by the entity's dedup.
    let again = http
        .post(format!("{base}/v1/entities/Counter/k%2F1/add"))
        .json(&serde_json::json!({ "input": 5, "event_id": "same-id" }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 202);
    // A body larger than any event the processor accepts: 413 with the limit, in the same JSON
    // error body as every refusal (it used to reach the producer and come back as a 503 that
    // blamed the broker). So is a body under the limit whose event would be over it.
    for input in ["x".repeat(2_000_000), "x".repeat(999_950)] {
        let refused = http
            .post(format!("{base}/v1/entities/Counter/k%2F1/add"))
            .json(&serde_json::json!({ "input": input }))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 413);
        let refused: Value = refused.json().await.unwrap();
        assert_eq!(refused["code"], "too_large", "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("1000000 bytes (DURABLE_MAX_EVENT_BYTES)"), "{refused}");
    }
    let id = "entity:Counter:k%2F1"; // the id as a path segment
    e2e::eventually(Duration::from_secs(30), "the counter is applied", || async {
        let v: Value = http.get(format!("{base}/v1/instances/{id}")).send().await.ok()?.json().await.ok()?;
        (v["state"]["value"] == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v: Value = http.get(format!("{base}/v1/instances/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"]["value"], 5, "a repeated event id is applied once: {v}");
    assert_eq!(v["kind"], "entity");
    assert_eq!(v["key"], "k/1");

    for (method, path, body, status, code) in [
        ("GET", "/v1/instances/orch:X:nothing", "", 404, "not_found"),
        ("GET", "/v1/instances/garbage", "", 400, "bad_instance_id"),
        ("POST", "/v1/orchestrations/Nope", "{}", 404, "not_registered"),
        ("POST", "/v1/orchestrations/HelloSequence", "{not json", 400, "bad_body"),
        ("POST", "/v1/orchestrations/HelloSequence", r#"{"kee":"typo"}"#, 400, "bad_body"),
        ("POST", "/v1/instances/entity:Counter:c/terminate", "", 400, "not_an_orchestration"),
        ("GET", "/v1/instances/orch:FanOut:paged/history?limit=0", "", 400, "bad_query"),
        ("GET", "/v1/instances/orch:FanOut:paged/history?limit=1001", "", 400, "bad_query"),
        ("GET", "/v1/instances/orch:FanOut:paged/history?offset=-1", "", 400, "bad_query"),
        ("GET", "/v1/instances/orch:FanOut:paged/history?page=2", "", 400, "bad_query"),
    ] {
        let request = match method {
            "GET" => http.get(format!("{base}{path}")),
            _ => http.post(format!("{base}{path}")).header("content-type", "application/json").body(body),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], code, "{method} {path}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| m.len() > 10), "{error}");
    }

    // Anonymous writes (this processor takes them) only as JSON and, from a browser, only from
    // the API's own origin: a web page elsewhere cannot drive it.
    let plain = http.post(format!("{base}/v1/orchestrations/HelloSequence")).body(r#"{"key":"csrf"}"#);
    let refused = plain.header("content-type", "text/plain").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 415);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "not_json");
    let form = http.post(format!("{base}/v1/instances/orch:FanOut:x/terminate")).send().await.unwrap();
    assert_eq!(form.status().as_u16(), 415, "no body, no type: refused too");
    let elsewhere = http
        .post(format!("{base}/v1/orchestrations/HelloSequence"))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({ "key": "csrf" }))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status().as_u16(), 403);
    assert_eq!(elsewhere.json::<Value>().await.unwrap()["code"], "cross_origin");
    let same = http
        .post(format!("{base}/v1/orchestrations/HelloSequence"))
        .header("origin", base.clone())
        .json(&serde_json::json!({ "key": "same-origin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status().as_u16(), 202, "the console's own origin is welcome");

    // History pages: each list cut to the page, with the totals.
    let started = http
        .post(format!("{base}/v1/orchestrations/FanOut"))
        .json(&serde_json::json!({ "key": "paged", "input": 12 }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let history = |query: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let url = format!("{base}/v1/instances/orch:FanOut:paged/history{query}");
            http.get(url).send().await.ok()?.json::<Value>().await.ok()
        }
    };
    let full = e2e::eventually(Duration::from_secs(30), "the fan-out completes", || async {
        history("").await.filter(|h| h["status"] == "completed")
    })
    .await;
    assert_eq!(full["commands"].as_array().unwrap().len(), 12, "{full}");
    assert_eq!(full["page"]["totals"]["commands"], 12, "{full}");
    let page = history("?offset=10&limit=5").await.unwrap();
    let slots: Vec<&Value> = page["commands"].as_array().unwrap().iter().map(|c| &c["slot"]).collect();
    assert_eq!(slots, [10, 11], "{page}");
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!((page["page"]["offset"].clone(), page["page"]["limit"].clone()), (10.into(), 5.into()));
    assert_eq!(full["commands"][0]["answered"], true, "an activity call is answered: {full}");
    // A signal is sent and done: the history says so (the console shows it `sent`, not `waiting`).
    for (path, body) in [
        ("/v1/entities/Account/hist-a/deposit", serde_json::json!({ "input": 10 })),
        (
            "/v1/orchestrations/Transfer",
            serde_json::json!({ "key": "hist", "input": { "from": "hist-a", "to": "hist-b", "amount": 5 } }),
        ),
    ] {
        let r = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202, "{path}");
    }
    let url = format!("{base}/v1/instances/orch:Transfer:hist/history");
    let transfer = e2e::eventually(Duration::from_secs(30), "the transfer completes", || async {
        let h = http.get(&url).send().await.ok()?.json::<Value>().await.ok()?;
        (h["status"] == "completed").then_some(h)
    })
    .await;
    let signals: Vec<&Value> =
        transfer["commands"].as_array().unwrap().iter().filter(|c| c["kind"] == "SignalEntity").collect();
    assert_eq!(signals.len(), 2, "the withdrawal and the deposit: {transfer}");
    assert!(signals.iter().all(|c| c["answered"] == false), "{transfer}");
    processor.stop().await;
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}

fn durable_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_durable"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run durable")
}

/// `durable search` over what the projector wrote, and its errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_prints_the_matching_documents() {
    let typesense = std::env::var("DURABLE_TYPESENSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8108".into());
    let key = std::env::var("DURABLE_TYPESENSE_API_KEY").unwrap_or_else(|_| "durable-test-key".into());
    let prefix = e2e::unique_prefix("search");
    let processor = InProcess::start(&prefix, 4).await;
    let mut config = durable_projector::ProjectorConfig::new(&e2e::brokers(), &prefix, &typesense, &key);
    config.linger = Duration::from_millis(50);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = tokio::spawn(durable_projector::run(
        config,
        async {
            let _ = stopped.await;
        },
        None,
    ));
    let api = format!("http://{}", processor.metrics);
    for (key_, owner, amount) in [("a1", "alice", "150"), ("a2", "alice", "20"), ("b1", "bob", "500")] {
        let owner = format!("\"{owner}\"");
        durable_async(&api, &["signal", "Account", key_, "open", "--input", &owner]).await;
        durable_async(&api, &["signal", "Account", key_, "deposit", "--input", amount]).await;
    }
    let env = [
        ("DURABLE_TYPESENSE_URL", typesense.as_str()),
        ("DURABLE_TYPESENSE_API_KEY", key.as_str()),
        ("DURABLE_PREFIX", prefix.as_str()),
    ];
    let lines = e2e::eventually(Duration::from_secs(60), "alice's rich account is found", || async {
        let out = tokio::task::spawn_blocking({
            let env = env.map(|(k, v)| (k, v.to_owned()));
            move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                durable_env(&["search", "Account", "*", "--filter", "owner:=alice && balance:>100"], &env)
            }
        })
        .await
        .unwrap();
        let lines: Vec<Value> = stdout(&out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (out.status.success() && lines.len() == 1).then_some(lines)
    })
    .await;
    assert_eq!(lines[0]["id"], "entity:Account:a1");
    assert_eq!(lines[0]["balance"], 150);

    let wrong_key = durable_env(
        &["search", "Account", "*"],
        &[
            ("DURABLE_TYPESENSE_URL", typesense.as_str()),
            ("DURABLE_TYPESENSE_API_KEY", "wrong"),
            ("DURABLE_PREFIX", prefix.as_str()),
        ],
    );
    assert_eq!(wrong_key.status.code(), Some(4), "{}", stderr(&wrong_key));
    assert!(stderr(&wrong_key).contains("DURABLE_TYPESENSE_API_KEY"), "{}", stderr(&wrong_key));
    let down = durable_env(
        &["search", "Account", "*"],
        &[("DURABLE_TYPESENSE_URL", "http://127.0.0.1:1"), ("DURABLE_TYPESENSE_API_KEY", "k")],
    );
    assert_eq!(down.status.code(), Some(2));
    assert_eq!(stderr(&down).trim_end().lines().count(), 1, "{}", stderr(&down));
    assert!(stderr(&down).contains("set DURABLE_TYPESENSE_URL"), "{}", stderr(&down));
    let unknown = durable_env(&["search", "NoSuchType", "*"], &env);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
    let _ = stop.send(());
    projector.await.unwrap().unwrap();
    processor.stop().await;
}
