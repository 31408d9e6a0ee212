//! Ingest's integration tests: the real service on port 0, a throwaway
//! Postgres database per test, and librdkafka's mock broker with a fresh topic
//! per test. One binary for all of them (faster to build and link).

mod helpers;
mod hostile;
mod overload;
mod relay;
mod webhooks;
