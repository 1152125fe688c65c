//! Durable's simulation and end-to-end tests.
//!
//! # Layout
//! - [`sim`]: the deterministic simulator of the commit protocol with fault injection; run it
//!   with `cargo run --release -p tests --bin simulate -- --seeds N`.

pub mod sim;
