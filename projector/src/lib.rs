//! hookstream projector: Kafka in, Polar state in Postgres out, served in
//! Polar's own API shapes.
//!
//! - [`consumer`] reads the topic and applies batches exactly once, its
//!   positions ([`offsets`]) stored with the changes.
//! - [`projection`] decodes events and writes versioned rows into a generation.
//! - [`api`] serves reads from the live generation; [`changes`] tells every
//!   replica's read caches what a batch changed, [`feed`] keeps the change
//!   feed and [`push`] sends it to the app.
//! - [`rebuild`] replays, verifies and re-applies from the event log.
//! - [`console`] is the operator's web console; [`applied`] records what it
//!   shows of the consumer's work.
//! - [`app`] wires them into one service; [`config`] and [`metrics`] support it.

pub mod api;
pub mod app;
pub mod applied;
pub mod changes;
pub mod config;
pub mod console;
pub mod consumer;
pub mod feed;
pub mod metrics;
pub mod offsets;
pub mod projection;
pub mod push;
pub mod rebuild;

pub use app::Application;
pub use config::ProjectorConfig;
