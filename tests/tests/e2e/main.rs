//! End to end: polarsim delivers a stream to ingest the way Polar does
//! (signed with Polar's key rule, duplicated, reordered, retried), the
//! pipeline runs for real (ingest, relay, Kafka protocol, projector), and
//! polarsim verifies every customer's state through Polar's own Python SDK.

mod chaos;
mod console;
mod pipeline;
mod reconcile;
mod replica;
