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
