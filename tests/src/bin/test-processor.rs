//! The processor the end-to-end tests run as a separate process (to stop and SIGKILL it): the
//! bundled examples plus the test handlers of `tests::e2e::registry`.

#[global_allocator]
static ALLOCATOR: durable_processor::runtime::Allocator = durable_processor::runtime::Allocator;

fn main() -> std::process::ExitCode {
    durable_processor::runtime::main(tests::e2e::registry())
}
