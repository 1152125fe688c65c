//! `processor`: the runtime with the bundled examples registered (`processor --help`).

#[global_allocator]
static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;

fn main() -> std::process::ExitCode {
    durable_processor::runtime::main(durable_processor::examples::register(durable_processor::Registry::new()))
}
