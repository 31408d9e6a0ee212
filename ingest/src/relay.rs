//! The relay: gets every committed event to Kafka and dequeues it from the
//! outbox once Kafka has acknowledged it.
//!
//! Two paths, one guarantee:
//!
//! - **Fresh events.** The appender hands each committed batch to its own
//!   replica's relay, in memory. The relay publishes it at once and dequeues
//!   what Kafka acknowledged. No body is read back from Postgres.
//! - **The sweep.** The outbox is the durable record of what is still to be
//!   published. One replica leads (a Postgres advisory lock held on its own
//!   connection; a crashed leader's lock dies with the connection) and
//!   publishes every queued row older than `RELAY_SWEEP_AFTER_MS`: events whose
//!   replica crashed between commit and publish, events Kafka refused, events
//!   the in-memory hand-over dropped because it was full.
//!
//! The sweep asks for everything queued, in `seq` order, rather than for rows
//! after a "highest published" cursor: concurrent batches commit out of `seq`
//! order, and a cursor would skip a low seq that commits late. An event can
//! reach Kafka twice (published, then the replica dies before dequeuing it);
//! consumers tell copies apart by the `seq` header.
//!
//! Kafka being down stalls only the relay; webhooks are still accepted.
//!
//! A message Kafka refuses for itself (too large for the topic, a record the
//! broker rejects) can never be published as it is: ingest's body limit and
//! the producer's and topic's message limits are derived from one setting so
//! that this cannot happen, but a topic reconfigured under a running service
//! or a row a replica with a larger limit accepted can still bring one. Such
//! an event is parked ([`event_log::park`]) instead of retried forever: out
//! of the outbox, counted, shown in the console, and applied by the
//! projector from the log.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::Utc;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use hookstream_shared::db;
use hookstream_shared::event_log::{self, LoggedEvent};
use hookstream_shared::kafka::{self, KafkaSettings, message};
use hookstream_shared::retry::Retry;

use crate::config::RelaySettings;
use crate::metrics::IngestMetrics;

/// Advisory lock key of the sweeping leader ("hookrela" in ASCII).
const LEADER_LOCK_KEY: i64 = 0x686f_6f6b_7265_6c61;
/// How often the leader measures the backlog for the metrics.
const BACKLOG_MEASURE_INTERVAL: Duration = Duration::from_secs(5);
/// Committed batches waiting for the fresh path; beyond this they are left to
/// the sweep rather than held in memory.
const FRESH_QUEUE_BATCHES: usize = 256;

/// An event on its way to Kafka.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: i64,
    pub source: String,
    pub webhook_id: String,
    pub event_type: String,
    pub partition_key: String,
    pub body: Bytes,
}

impl From<LoggedEvent> for Outgoing {
    fn from(e: LoggedEvent) -> Self {
        Self {
            seq: e.seq,
            source: e.source,
            webhook_id: e.webhook_id,
            event_type: e.event_type,
            partition_key: e.partition_key,
            body: Bytes::from(e.body),
        }
    }
}

/// The appender's side of the in-memory hand-over.
#[derive(Debug, Clone)]
pub struct FreshEvents(mpsc::Sender<Vec<Outgoing>>);

impl FreshEvents {
    /// Offers committed events for publishing. Never waits: when the relay is
    /// behind, the events stay queued in the outbox for the sweep.
    pub fn offer(&self, events: Vec<Outgoing>) {
        if !events.is_empty() {
            let _ = self.0.try_send(events);
        }
    }
}

/// Publishes the event log to Kafka.
pub struct Relay {
    pool: PgPool,
    connect: PgConnectOptions,
    /// Taken by `run`.
    fresh: Option<mpsc::Receiver<Vec<Outgoing>>>,
    producer: FutureProducer,
    kafka: KafkaSettings,
    settings: RelaySettings,
    metrics: IngestMetrics,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topic", &self.kafka.topic)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay and the hand-over its replica's appender feeds. `connect`
    /// opens the leader's own connection (the lock lives and dies with it).
    pub fn new(
        pool: PgPool,
        connect: PgConnectOptions,
        kafka: KafkaSettings,
        settings: RelaySettings,
        metrics: IngestMetrics,
    ) -> anyhow::Result<(Self, FreshEvents)> {
        let mut config = kafka.client_config()?;
        // How long a message waits for others to share its produce request: a
        // default only, so KAFKA_PROPERTY_LINGER_MS can trade latency for
        // fewer requests.
        if config.get("linger.ms").is_none() {
            config.set("linger.ms", "5");
        }
        let producer: FutureProducer = config
            // Idempotence implies acks=all and keeps per-partition order across
            // librdkafka's own retries.
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            // Both derived from INGEST_MAX_BODY_BYTES (see
            // `config::kafka_message_limit`): every body ingest accepts fits
            // one message, and no batch outgrows what the topic takes.
            .set("message.max.bytes", settings.message_limit.to_string())
            .set("batch.size", settings.message_limit.to_string())
            .create()
            .context("cannot create the Kafka producer")?;
        let (sender, fresh) = mpsc::channel(FRESH_QUEUE_BATCHES);
        let relay = Self {
            pool,
            connect,
            fresh: Some(fresh),
            producer,
            kafka,
            settings,
            metrics,
        };
        Ok((relay, FreshEvents(sender)))
    }

    /// Runs until `stop` is cancelled and the appender is gone. Then the fresh
    /// path publishes what it was handed, the leader sweeps everything still
    /// queued (no age limit), both within `drain_for`, and the producer is
    /// flushed.
    pub async fn run(mut self, stop: CancellationToken, drain_for: Duration) {
        let Some(fresh) = self.fresh.take() else {
            return;
        };
        let drain_deadline = async {
            stop.cancelled().await;
            tokio::time::sleep(drain_for).await;
        };
        tokio::select! {
            () = async { tokio::join!(self.publish_fresh(fresh), self.sweep(&stop)); } => {}
            () = drain_deadline => {
                tracing::warn!(?drain_for, "stopping with events still queued; they are published on the next start");
            }
        }
        // flush blocks its thread until librdkafka's queue is empty.
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            producer.flush(Timeout::After(Duration::from_secs(5)))
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "Kafka producer did not flush");
        }
    }

    /// Publishes batches the appender hands over, until the appender is gone.
    async fn publish_fresh(&self, mut fresh: mpsc::Receiver<Vec<Outgoing>>) {
        while let Some(mut events) = fresh.recv().await {
            while events.len() < self.settings.batch_size {
                match fresh.try_recv() {
                    Ok(more) => events.extend(more),
                    Err(_) => break,
                }
            }
            let outcome = self.publish(&events).await;
            let settled = match self.pool.acquire().await {
                Ok(mut connection) => self.settle(&mut connection, &outcome).await,
                Err(e) => Err(e),
            };
            if let Err(e) = settled {
                // Left queued: the sweep publishes (or parks) them again, once.
                tracing::warn!(error = %e, "cannot dequeue published events");
            }
        }
    }

    /// Campaigns for the lead and, while leading, sweeps the outbox.
    async fn sweep(&self, stop: &CancellationToken) {
        let mut retry = relay_retry();
        loop {
            match db::try_lead(&self.connect, LEADER_LOCK_KEY).await {
                Ok(Some(mut lock_connection)) => {
                    tracing::info!("relay leads: sweeping the outbox");
                    self.metrics.relay_leader.set(1);
                    retry.reset();
                    let outcome = self.lead(&mut lock_connection, stop).await;
                    self.metrics.relay_leader.set(0);
                    let _ = lock_connection.close().await;
                    match outcome {
                        Ok(()) => return, // stopped and drained
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "relay lost its database connection; campaigning again"
                        ),
                    }
                }
                Ok(None) => {
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.settings.standby_retry) => {}
                        () = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "relay cannot reach the database");
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(retry.after_failure()) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Sweeps until stopped and drained, or until the database fails.
    async fn lead(
        &self,
        connection: &mut PgConnection,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        if let Err(e) = kafka::ensure_topic(&self.kafka, Some(self.settings.message_limit)).await {
            // Not fatal: a broker that is down now may be back by the first publish.
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot ensure the Kafka topic exists"
            );
        }
        let batch_size = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        let sweep_after = chrono::Duration::from_std(self.settings.sweep_after).unwrap_or_default();
        let mut retry = relay_retry();
        let mut last_measured: Option<Instant> = None;
        loop {
            if last_measured.is_none_or(|t| t.elapsed() >= BACKLOG_MEASURE_INTERVAL) {
                self.measure_backlog(&mut *connection).await?;
                last_measured = Some(Instant::now());
            }
            let draining = stop.is_cancelled();
            // While running, only rows their own replica had time to publish;
            // when stopping, everything.
            let received_before = if draining {
                Utc::now()
            } else {
                Utc::now() - sweep_after
            };
            let rows =
                event_log::next_unpublished(&mut *connection, batch_size, received_before).await?;
            if rows.is_empty() {
                if draining {
                    self.measure_backlog(&mut *connection).await?;
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let events: Vec<Outgoing> = rows.into_iter().map(Outgoing::from).collect();
            let outcome = self.publish(&events).await;
            self.settle(&mut *connection, &outcome).await?;
            self.metrics
                .relay_swept
                .inc_by(outcome.published.len() as u64);
            if outcome.failed > 0 {
                if draining {
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep(retry.after_failure()) => {}
                    () = stop.cancelled() => {}
                }
            } else {
                retry.reset();
            }
        }
    }

    /// Sends every event and waits for Kafka's answers.
    async fn publish(&self, events: &[Outgoing]) -> Published {
        // join_all polls in order, so messages are enqueued in the order given
        // and the idempotent producer keeps it within each partition.
        let deliveries = join_all(events.iter().map(|event| {
            let headers = message::headers(
                &event.webhook_id,
                &event.event_type,
                &event.source,
                event.seq,
            );
            let record = FutureRecord::to(&self.kafka.topic)
                .key(event.partition_key.as_str())
                .payload(event.body.as_ref())
                .headers(headers);
            self.producer
                .send(record, Timeout::After(self.settings.message_timeout))
        }))
        .await;
        let mut outcome = Published {
            published: Vec::with_capacity(events.len()),
            refused: Vec::new(),
            failed: 0,
        };
        for (event, delivery) in events.iter().zip(deliveries) {
            match delivery {
                Ok(_) => outcome.published.push(event.seq),
                Err((e, _)) if never_publishable(&e) => {
                    tracing::error!(
                        error = %e,
                        seq = event.seq,
                        webhook_id = %event.webhook_id,
                        body_bytes = event.body.len(),
                        "Kafka refuses this event's message itself; parked (the projector applies it from the log)"
                    );
                    outcome.refused.push((event.seq, e.to_string()));
                }
                Err((e, _)) => {
                    if outcome.failed == 0 {
                        tracing::warn!(error = %e, seq = event.seq, webhook_id = %event.webhook_id, "Kafka did not acknowledge; left queued");
                    }
                    outcome.failed += 1;
                }
            }
        }
        self.metrics
            .relay_published
            .inc_by(outcome.published.len() as u64);
        self.metrics
            .relay_publish_errors
            .inc_by(outcome.failed as u64);
        outcome
    }

    /// Dequeues what Kafka acknowledged and parks what it refused.
    async fn settle(&self, connection: &mut PgConnection, outcome: &Published) -> sqlx::Result<()> {
        if !outcome.published.is_empty() {
            event_log::mark_published(&mut *connection, &outcome.published).await?;
        }
        if !outcome.refused.is_empty() {
            let parked = event_log::park(&mut *connection, &outcome.refused).await?;
            self.metrics.relay_parked.inc_by(parked);
        }
        Ok(())
    }

    async fn measure_backlog(&self, connection: &mut PgConnection) -> anyhow::Result<()> {
        let backlog = event_log::backlog(connection).await?;
        self.metrics.relay_backlog.set(backlog.unpublished);
        let lag = backlog
            .oldest_received_at
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.metrics.relay_lag_seconds.set(lag);
        Ok(())
    }
}

/// Fails if the topic takes smaller messages than `message_limit` (the
/// limit `INGEST_MAX_BODY_BYTES` implies): events ingest acknowledged would
/// be refused by Kafka, so the service stops with this error. A broker that
/// cannot be reached or cannot say is no reason to stop; a topic changed
/// later is what parking is for.
pub async fn check_topic_takes(kafka: &KafkaSettings, message_limit: usize) -> anyhow::Result<()> {
    match kafka::topic_message_limit(kafka).await {
        Ok(Some(limit)) if limit < message_limit => anyhow::bail!(
            "Kafka topic {} takes messages of at most {limit} bytes (its max.message.bytes), \
             but INGEST_MAX_BODY_BYTES={} needs {message_limit}: raise the topic's \
             max.message.bytes to at least {message_limit}, or lower INGEST_MAX_BODY_BYTES",
            kafka.topic,
            message_limit - kafka::MESSAGE_OVERHEAD_BYTES,
        ),
        Ok(Some(limit)) => {
            tracing::debug!(topic = %kafka.topic, limit, message_limit, "the topic takes every message ingest can accept");
            Ok(())
        }
        Ok(None) => {
            tracing::debug!(topic = %kafka.topic, "the broker does not report the topic's message limit");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), topic = %kafka.topic, "cannot read the topic's message limit yet");
            Ok(())
        }
    }
}

/// What Kafka made of a round of events.
#[derive(Debug)]
struct Published {
    /// Acknowledged: dequeue.
    published: Vec<i64>,
    /// Refused for good, with Kafka's reason: park.
    refused: Vec<(i64, String)>,
    /// Not acknowledged this time: left queued, retried.
    failed: usize,
}

/// Whether Kafka refuses the message itself, so no retry can succeed: it is
/// larger than the producer or the topic takes, or the broker rejects the
/// record. Everything else (a broker away, a timeout, a leader moving, an
/// authorization to be fixed) may pass later.
fn never_publishable(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// About 200 ms, doubling to at most 10 s.
fn relay_retry() -> Retry {
    Retry::new(Duration::from_millis(200), Duration::from_secs(10))
}
