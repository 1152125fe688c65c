//! Durable's simulation and end-to-end tests.
//!
//! # Layout
//! - [`sim`]: the deterministic simulator of the commit protocol with fault injection; run it
//!   with `cargo run --release -p tests --bin simulate -- --seeds N`.
//! - [`e2e`]: helpers for the end-to-end tests against the real broker and Redis
//!   (`tests/runtime.rs`), and the `test-processor` binary they spawn.

pub mod e2e;
pub mod gen;
pub mod sim;
