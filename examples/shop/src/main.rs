//! The shop's processor: `cargo run -p shop -- --help`. Same flags and environment variables as
//! Durable's `processor` binary (brokers, prefix, Redis URL, metrics/API address …).

#[global_allocator]
static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;

fn main() -> std::process::ExitCode {
    durable_processor::runtime::main(shop::register(durable_processor::Registry::new()))
}
