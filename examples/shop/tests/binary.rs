//! The README's `cargo run --release -p shop -- --help`: the app's binary is the runtime's
//! command line with every flag and its environment variable.

#[test]
fn the_shop_binary_lists_the_runtime_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shop")).arg("--help").output().expect("run shop");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["DURABLE_BROKERS", "DURABLE_PREFIX", "DURABLE_REDIS_URL", "DURABLE_METRICS_ADDR"] {
        assert!(help.contains(var), "--help names {var}: {help}");
    }
}

/// The README shows the shop's whole binary: it is `src/main.rs`, doc comment aside.
#[test]
fn the_readme_shows_the_binary_as_it_is() {
    let readme = include_str!("../../../README.md");
    let shown =
        readme.split("```rs\n").nth(1).and_then(|rest| rest.split("```").next()).expect("README shows the binary");
    let main = include_str!("../src/main.rs");
    let code: String = main.lines().filter(|l| !l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    assert_eq!(shown.trim(), code.trim());
}

/// A tiny HTTP/1.1 client (the test needs no more): `method path` with a JSON body, the status
/// line and body of the answer.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the embedded API");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// `cargo run -p shop -- dev`: the shop's own handlers in the embedded mode (in-process Kafka,
/// in-memory state, API, console), no servers; an order goes through; Ctrl-C stops it cleanly.
#[test]
fn the_shop_runs_its_own_handlers_in_dev_mode_with_no_servers() {
    use std::io::BufRead as _;
    use std::time::{Duration, Instant};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["dev", "--addr", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shop dev");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.starts_with("  registered")) {
        banner.push(rx.recv_timeout(Duration::from_secs(120)).expect("shop dev prints its banner"));
    }
    let banner = banner.join("\n");
    assert!(banner.contains("Durable dev is running") && banner.contains(&format!("http://{addr}/ui")), "{banner}");
    assert!(banner.contains("PlaceOrder, Stock, Charge"), "{banner}");

    let (status, _) = http(&addr, "POST", "/v1/entities/Stock/widget/restock", r#"{"input": 5}"#);
    assert!(status.contains("202"), "{status}");
    let order = r#"{"key": "o1", "input": {"product": "widget", "quantity": 2, "card": "visa-1"}}"#;
    let (status, _) = http(&addr, "POST", "/v1/orchestrations/PlaceOrder", order);
    assert!(status.contains("202"), "{status}");
    let started = Instant::now();
    loop {
        let (_, body) = http(&addr, "GET", "/v1/instances/orch:PlaceOrder:o1", "");
        if body.contains(r#""status":"completed""#) {
            assert!(body.contains("receipt-for-visa-1"), "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the order did not complete: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, page) = http(&addr, "GET", "/ui", "");
    assert!(status.contains("200") && page.contains("<title>Durable console</title>"), "{status}");

    let interrupted = Instant::now();
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let exit = child.wait().expect("wait");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(interrupted.elapsed() < Duration::from_secs(5), "{stderr}");
    assert!(!stderr.contains("ERROR") && stderr.trim_end().ends_with("stopped"), "{stderr}");
}
