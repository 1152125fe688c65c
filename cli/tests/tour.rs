//! The README's tour, as written: start `durable dev` (the README's first command), then run the
//! shell lines of the tour section in order from a second process and check every `# →` comment
//! against what the line prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tour's lines: every line of the ```sh blocks between the tour marker and the next `## `.
fn tour_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let start = readme.find("<!-- tour:").expect("the README marks its tour");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_block = true,
            "```" => in_block = false,
            l if in_block && !l.is_empty() => lines.push(l.to_owned()),
            _ => {}
        }
    }
    lines
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn the_readme_tour_works_against_durable_dev() {
    let lines = tour_lines();
    assert!(lines.len() >= 15, "the tour has its commands: {lines:?}");
    let binary = env!("CARGO_BIN_EXE_durable");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(binary)
        .args(["dev", "--addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start durable dev");
    let stdout = child.stdout.take().expect("stdout");
    let _dev = Dev(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut banner = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(180)).expect("durable dev prints that it is running");
        banner.push(line.clone());
        if line.starts_with("Durable dev is running") {
            break;
        }
    }
    // Let the banner finish, and check it says how to reach it.
    std::thread::sleep(Duration::from_millis(200));
    banner.extend(rx.try_iter());
    let banner = banner.join("\n");
    assert!(banner.contains(&format!("http://{addr}/v1")), "{banner}");
    assert!(banner.contains("durable status"), "{banner}");
    assert!(banner.contains(&format!("http://{addr}/ui")), "{banner}");
    eprintln!("durable dev ready after {:?}", started.elapsed());

    let api = format!("http://{addr}");
    for line in &lines {
        if line.starts_with("alias durable=") {
            continue;
        }
        let (command, expected) = match line.split_once("# →") {
            Some((c, e)) => (c.trim().replace("127.0.0.1:9464", &addr), Some(e.trim().to_owned())),
            None => (line.trim().replace("127.0.0.1:9464", &addr), None),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("durable() {{ \"$DURABLE_BIN\" \"$@\"; }}\n{command}"))
                .env("DURABLE_BIN", binary)
                .env("DURABLE_API", &api)
                .output()
                .expect("bash");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let code = out.status.code();
            let ended_on_purpose =
                command.starts_with("durable wait") && code == Some(1) && stdout.contains("terminated");
            let ok =
                (code == Some(0) || ended_on_purpose) && expected.as_ref().is_none_or(|e| stdout.contains(e.as_str()));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tour line `{line}` (exit {code:?}) printed:\n{stdout}\nstderr:\n{stderr}\nexpected it to contain {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Ctrl-C stops `durable dev` at once and quietly: exit 0, well within a few seconds, and no
/// error from the in-process Kafka's clients on the way out.
#[test]
fn ctrl_c_stops_durable_dev_quickly_and_quietly() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(["dev", "--addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durable dev");
    // Read all of its output (a closed pipe would fail its next print), and wait for the banner.
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (running_tx, running) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("Durable dev is running") {
                let _ = running_tx.send(());
            }
        }
    });
    running.recv_timeout(Duration::from_secs(180)).expect("durable dev prints that it is running");
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id().to_string();
    let interrupted = Instant::now();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let mut dev = Dev(child);
    let status = loop {
        if let Some(status) = dev.0.try_wait().expect("wait") {
            break status;
        }
        if interrupted.elapsed() > Duration::from_secs(10) {
            let _ = dev.0.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut dev.0.stderr.take().expect("stderr"), &mut stderr);
            panic!("durable dev still runs 10 s after Ctrl-C; its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = interrupted.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut dev.0.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(took < Duration::from_secs(3), "stopped after {took:?}: {stderr}");
    assert!(!stderr.contains("ERROR") && stderr.trim_end().ends_with("stopped"), "{stderr}");
}

/// The README's layout table matches the tree: every path it names exists (the first column, and
/// every path in the second that starts at the top), and every top-level folder is named.
#[test]
fn the_readme_layout_table_matches_the_tree() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = readme.find("| path | owns |").expect("the README has its layout table");
    let table: Vec<&str> = readme[start..].lines().take_while(|l| l.starts_with('|')).skip(2).collect();
    assert!(table.len() >= 10, "{table:?}");
    let top: Vec<String> = std::fs::read_dir(root)
        .expect("the root")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && name != "target")
        .collect();
    // Every `code` span of the table that is a path: it exists (a trailing `*` names a prefix).
    let exists = |path: &str| match path.strip_suffix('*') {
        Some(prefix) => {
            let (dir, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            std::fs::read_dir(root.join(dir))
                .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(start))))
        }
        None => root.join(path.trim_end_matches('/')).exists(),
    };
    let mut named = Vec::new();
    let mut missing = Vec::new();
    for row in &table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (path_cell, owns) = (cells.get(1).copied().unwrap_or(""), cells.get(2).copied().unwrap_or(""));
        for span in path_cell.split('`').skip(1).step_by(2) {
            for path in span.split(", ") {
                named.push(path.trim_end_matches('/').split('/').next().unwrap_or("").to_owned());
                if !exists(path) {
                    missing.push(path.to_owned());
                }
            }
        }
        for span in owns.split('`').skip(1).step_by(2) {
            let first = span.split('/').next().unwrap_or("");
            if span.contains('/') && top.iter().any(|t| t == first) && !exists(span) {
                missing.push(span.to_owned());
            }
        }
    }
    assert!(missing.is_empty(), "the layout table names paths that do not exist: {missing:?}");
    let unnamed: Vec<&String> = top.iter().filter(|t| !named.contains(t)).collect();
    assert!(unnamed.is_empty(), "top-level folders the layout table does not name: {unnamed:?}");
}
