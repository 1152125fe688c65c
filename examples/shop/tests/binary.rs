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
