//! Durable's Kafka contract and connection, shared by the processor, the projector, the CLI and
//! the tests, so that each rule is written once.
//!
//! # Layout
//! - [`connection`]: how a client reaches the brokers — bootstrap servers, TLS, SASL (PLAIN,
//!   SCRAM), raw librdkafka options — with secrets kept out of `Debug`, logs and `--help`.
//! - [`topics`]: the topic names of a prefix, the settings topics are created with (replication,
//!   `min.insync.replicas`, retention; `.state` compacted), creating them, and reading a topic's
//!   real partition count.
//! - [`dead_letter`]: the headers every dead letter carries, and a record's bounded copy.

#![warn(missing_docs)]

pub mod connection;
pub mod dead_letter;
pub mod topics;

pub use connection::{KafkaConnection, SaslMechanism, Secret, SecurityProtocol};
pub use topics::{TopicSettings, Topics};
