//! The web console (`/ui`) in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver) against a processor on Apache Kafka and Redis. It opens the instance list,
//! filters it, opens an instance, terminates it from its page and sees the change; then the dead
//! letters. The screenshots it takes (`target/console/*.png`) are the README's.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`, which
//! `scripts/services` installs): without them the test fails and says so.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tests::e2e::{self, InProcess};

/// chromedriver, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started: its own process group.
        let _ = Command::new("kill").args(["-9", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    // fantoccini's rustls takes the process's provider: ring, as the rest of Durable.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = e2e::free_port();
    let driver = Command::new("chromedriver")
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is not installed: run scripts/services (it installs Debian's chromium and chromium-driver)",
        );
    let driver = Driver(driver);
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
    ];
    let data_dir = std::env::temp_dir().join(format!("durable-console-{}-{port}", std::process::id()));
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", data_dir.display()));
    let capabilities = json!({ "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args } });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    let started = Instant::now();
    loop {
        match ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start headless Chromium through chromedriver: {e}"),
        }
    }
}

async fn api_post(base: &str, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.expect("API");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.expect("json")
}

async fn api_get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}")).await.expect("API").json().await.expect("json")
}

async fn text(c: &Client, css: &str) -> String {
    c.wait().for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.expect("text")
}

/// Wait until the element `css` shows `wanted`.
async fn shows(c: &Client, css: &str, wanted: &str) {
    let started = Instant::now();
    loop {
        let now = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if now.contains(wanted) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{css} shows {now:?}, not {wanted:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console");
    std::fs::create_dir_all(&dir).expect("target/console");
    std::fs::write(dir.join(name), png).expect("write the screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_filters_opens_and_terminates_an_instance() {
    let prefix = e2e::unique_prefix("console");
    let processor = InProcess::start(&prefix, 4).await;
    let base = format!("http://{}", processor.metrics);
    for key in ["h1", "h2"] {
        api_post(&base, "/v1/orchestrations/HelloSequence", json!({ "key": key, "input": ["Ada"] })).await;
    }
    api_post(&base, "/v1/orchestrations/Approval", json!({ "key": "a1", "input": { "counter": "c2", "amount": 120 } }))
        .await;
    api_post(&base, "/v1/entities/Counter/c1/add", json!({ "input": 5 })).await;
    api_post(&base, "/v1/entities/Counter/c1/nosuchop", json!({ "input": 1 })).await;
    e2e::eventually(Duration::from_secs(30), "the instances are committed", || async {
        let v = api_get(&base, "/v1/counts").await;
        // a1 also creates entity:Counter:c2 once its activity succeeds: 4 or 5.
        (v["total"].as_u64()? >= 4).then_some(())
    })
    .await;

    let (_driver, c) = browser().await;
    // The list: every instance, with counts per type and status.
    c.goto(&format!("{base}/ui")).await.expect("open /ui");
    for id in ["orch:HelloSequence:h1", "orch:HelloSequence:h2", "orch:Approval:a1", "entity:Counter:c1"] {
        c.wait().for_element(Locator::Css(&format!("tr[data-instance=\"{id}\"]"))).await.expect(id);
    }
    let counts = text(&c, "#counts").await;
    assert!(counts.contains(" in all") && counts.contains("2 orch:HelloSequence completed"), "{counts:?}");
    assert!(counts.contains("1 orch:Approval running"), "{counts:?}");
    screenshot(&c, "list.png").await;

    // Filter: running orchestrations only.
    c.find(Locator::Css("#f-status")).await.expect("status filter").select_by_value("running").await.expect("select");
    c.find(Locator::Css("#f-apply")).await.expect("filter button").click().await.expect("filter");
    e2e::eventually(Duration::from_secs(30), "the list shows only the running one", || async {
        let rows = c.find_all(Locator::Css("tr[data-instance]")).await.ok()?;
        let mut ids = Vec::new();
        for r in rows {
            ids.push(r.attr("data-instance").await.ok()??);
        }
        (ids == ["orch:Approval:a1"]).then_some(())
    })
    .await;
    assert!(c.current_url().await.expect("url").as_str().ends_with("#/?status=running"));

    // Open it: its status, input and history.
    c.find(Locator::LinkText("orch:Approval:a1")).await.expect("link").click().await.expect("open");
    shows(&c, "#i-status", "running").await;
    assert!(text(&c, "#i-input").await.contains("120"));
    text(&c, "#timeline").await;
    screenshot(&c, "instance.png").await;

    // Terminate it from its page: the page shows the change.
    c.find(Locator::Css("#a-terminate-reason"))
        .await
        .expect("reason")
        .send_keys("from the console")
        .await
        .expect("type");
    c.find(Locator::Css("#a-terminate")).await.expect("terminate").click().await.expect("terminate");
    shows(&c, "#i-status", "terminated").await;
    shows(&c, "#i-reason", "from the console").await;
    let view = api_get(&base, "/v1/instances/orch:Approval:a1").await;
    assert_eq!((view["status"].as_str(), view["reason"].as_str()), (Some("terminated"), Some("from the console")));
    // A finished orchestration offers restart and purge instead.
    c.wait().for_element(Locator::Css("#a-restart")).await.expect("restart offered");

    // The dead letters: the unknown operation, with why; its page decodes it.
    c.find(Locator::Css("#nav-dead")).await.expect("nav").click().await.expect("dead letters");
    let row = c.wait().for_element(Locator::Css("tr[data-letter]")).await.expect("a dead letter");
    assert!(row.text().await.expect("text").contains("has no operation \"nosuchop\""));
    screenshot(&c, "dead.png").await;
    row.find(Locator::Css("a")).await.expect("letter link").click().await.expect("open letter");
    shows(&c, "#l-reason", "nosuchop").await;
    c.wait().for_element(Locator::Css("#redrive")).await.expect("a redrive button");

    c.close().await.expect("close the browser");
    processor.stop().await;
}

/// A token from `durable token` (the CLI's own minting, as a user would).
fn token(user: &str, secret: &str) -> String {
    let out = Command::new(e2e::workspace_binary("durable"))
        .args(["token", "--user", user, "--jwt-audience", "durable", "--jwt-issuer", "console-test"])
        .env("DURABLE_JWT_SECRETS", secret)
        .output()
        .expect("durable token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Sign in through the console's dialog with `token`.
async fn sign_in(c: &Client, token: &str) {
    c.wait().for_element(Locator::Css("#login[open]")).await.expect("the console asks for a token");
    c.find(Locator::Css("#login-token")).await.expect("token field").send_keys(token).await.expect("type");
    c.find(Locator::Css("#login-ok")).await.expect("button").click().await.expect("sign in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_the_apis_authorization() {
    let secret = "console-test-secret-of-at-least-32-bytes";
    let prefix = e2e::unique_prefix("console-auth");
    let mut config = InProcess::config(&prefix, 2);
    config.auth.anonymous = false;
    config.auth.jwt_secrets = vec![durable_kafka::Secret::new(secret)];
    config.auth.jwt_audience = Some("durable".into());
    config.auth.jwt_issuer = Some("console-test".into());
    let processor = InProcess::start_with(config).await;
    let base = format!("http://{}", processor.metrics);
    let (alice, bob) = (token("alice", secret), token("bob", secret));
    let started = reqwest::Client::new()
        .post(format!("{base}/v1/orchestrations/Approval"))
        .bearer_auth(&alice)
        .json(&json!({ "key": "mine", "input": { "counter": "c", "amount": 1 } }))
        .send()
        .await
        .expect("API");
    assert_eq!(started.status(), 202);
    e2e::eventually(Duration::from_secs(30), "alice's orchestration is committed", || async {
        let r = reqwest::Client::new().get(format!("{base}/v1/counts")).bearer_auth(&alice).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        (v["total"] == 1).then_some(())
    })
    .await;

    let (_driver, c) = browser().await;
    c.goto(&format!("{base}/ui")).await.expect("open /ui");
    // No token: the API answers 401 and the console asks for one.
    sign_in(&c, &alice).await;
    c.wait().for_element(Locator::Css("tr[data-instance=\"orch:Approval:mine\"]")).await.expect("alice sees hers");
    shows(&c, "#who", "signed in").await;
    // bob may read nothing of alice's: the same page lists nothing for him.
    c.find(Locator::Css("#sign-out")).await.expect("sign out").click().await.expect("sign out");
    sign_in(&c, &bob).await;
    shows(&c, "#instances", "No instances match.").await;
    c.goto(&format!("{base}/ui#/i/orch%3AApproval%3Amine")).await.expect("open alice's");
    shows(&c, "main", "orch:Approval:mine").await;
    assert!(c.find(Locator::Css("#actions")).await.is_err(), "bob gets no actions on an instance he may not read");
    c.close().await.expect("close the browser");
    processor.stop().await;
}
