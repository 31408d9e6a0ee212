//! What both hookstream services share.
//!
//! - [`config`]: typed settings from the environment (and an optional file),
//!   failing with the name of the bad setting.
//! - [`telemetry`]: tracing set up once, text or JSON.
//! - [`db`]: the Postgres pool and the one migration set.
//! - [`envelope`]: the webhook envelope `{type, timestamp, data}` and the rule
//!   that picks each event's Kafka key.
//! - [`event_log`]: the append-only log that is the source of truth.
//! - [`kafka`]: client settings, topic creation, message headers, and the
//!   embedded broker used locally and in tests.
//! - [`http`]: the JSON error body and the health/metrics routes both services serve.
//! - [`shutdown`]: one cancellation token, tripped by SIGTERM or SIGINT.
//! - [`progress`]: a bar or plain lines for long commands (replay, reconcile).
//! - [`tls`]: the rustls provider outgoing HTTPS clients need.

pub mod config;
pub mod db;
pub mod envelope;
pub mod event_log;
pub mod http;
pub mod kafka;
pub mod progress;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod tls;
