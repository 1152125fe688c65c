//! `processor`: the runtime with the bundled examples registered (`processor --help`).

fn main() -> std::process::ExitCode {
    durable_processor::runtime::main(durable_processor::examples::register(durable_processor::Registry::new()))
}
