//! hookstream ingest: Polar webhooks in, durable event log out, relayed to Kafka.
//!
//! A request flows through the modules in this order:
//! [`http`] (routing, limits) → [`signature`] (Standard Webhooks, raw bytes) →
//! [`hookstream_shared::envelope`] (type, time, key) → [`appender`] (group
//! commit into the event log) → answer. Independently, [`relay`] publishes
//! committed rows to Kafka. [`app`] wires them into one service.
//!
//! [`reconcile`] reads Polar's REST API into the same event log, for what
//! webhooks never brought: `ingest reconcile`, or periodically in the service.

pub mod app;
pub mod appender;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod reconcile;
pub mod relay;
pub mod signature;

pub use app::Application;
pub use config::IngestConfig;
