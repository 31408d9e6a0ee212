//! The relay: publishes committed log rows to Kafka and marks them published
//! once Kafka has acknowledged them.
//!
//! It always asks the log for every unpublished row in `seq` order rather than
//! for rows after a "highest published" cursor: concurrent batches commit out of
//! `seq` order, and a cursor would skip a low seq that commits late.
//!
//! With several ingest replicas, one relay leads: the one holding a Postgres
//! advisory lock on its own connection. The lock dies with that connection, so
//! a crashed leader is replaced within `RELAY_STANDBY_RETRY_MS`. Kafka being
//! down stalls only the relay; webhooks are still accepted into the log.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use hookstream_shared::event_log::{self, LoggedEvent};
use hookstream_shared::kafka::{self, KafkaSettings, header};

use crate::config::RelaySettings;
use crate::metrics::IngestMetrics;

/// Advisory lock key of the relay leader ("hookrela" in ASCII).
const LEADER_LOCK_KEY: i64 = 0x686f_6f6b_7265_6c61;
/// The channel the event log's insert trigger notifies.
const APPENDED_CHANNEL: &str = "event_log_appended";
/// How often the leader measures the backlog for the metrics.
const BACKLOG_MEASURE_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes the event log to Kafka.
pub struct Relay {
    pool: PgPool,
    connect: PgConnectOptions,
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
    pub fn new(
        pool: PgPool,
        connect: PgConnectOptions,
        kafka: KafkaSettings,
        settings: RelaySettings,
        metrics: IngestMetrics,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka
            .client_config()?
            // Idempotence implies acks=all and keeps per-partition order across
            // librdkafka's own retries.
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Self {
            pool,
            connect,
            producer,
            kafka,
            settings,
            metrics,
        })
    }

    /// Runs until `stop` is cancelled. Once it is, a leader keeps publishing
    /// until the log has nothing unpublished or `drain_for` has passed, then the
    /// producer is flushed.
    pub async fn run(self, stop: CancellationToken, drain_for: Duration) {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match self.campaign().await {
                Ok(Some(mut lock_connection)) => {
                    tracing::info!("relay leads: publishing the event log to Kafka");
                    self.metrics.relay_leader.set(1);
                    failures = 0;
                    let drain_deadline = async {
                        stop.cancelled().await;
                        tokio::time::sleep(drain_for).await;
                    };
                    let outcome = tokio::select! {
                        outcome = self.lead(&mut lock_connection, &stop) => outcome,
                        () = drain_deadline => {
                            tracing::warn!(?drain_for, "stopping with events still unpublished; they are published on the next start");
                            Ok(())
                        }
                    };
                    self.metrics.relay_leader.set(0);
                    if let Err(e) = outcome {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "relay lost its database connection; campaigning again"
                        );
                    }
                    let _ = lock_connection.close().await;
                }
                Ok(None) => {
                    tokio::select! {
                        () = tokio::time::sleep(self.settings.standby_retry) => {}
                        () = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = format!("{e:#}"), "relay cannot reach the database");
                    tokio::select! {
                        () = tokio::time::sleep(retry_delay(failures)) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
        if let Err(e) = self.producer.flush(Timeout::After(Duration::from_secs(5))) {
            tracing::warn!(error = %e, "Kafka producer did not flush");
        }
    }

    /// Tries to take the leader lock; `Some(connection)` holds it.
    async fn campaign(&self) -> anyhow::Result<Option<PgConnection>> {
        let mut connection = PgConnection::connect_with(&self.connect).await?;
        let locked = sqlx::query_scalar!(
            r#"select pg_try_advisory_lock($1) as "locked!""#,
            LEADER_LOCK_KEY
        )
        .fetch_one(&mut connection)
        .await?;
        if locked {
            Ok(Some(connection))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    /// Publishes until stopped and drained, or until the database fails.
    async fn lead(
        &self,
        connection: &mut PgConnection,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        if let Err(e) = kafka::ensure_topic(&self.kafka).await {
            // Not fatal: a broker that is down now may be back by the first publish.
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot ensure the Kafka topic exists"
            );
        }
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(APPENDED_CHANNEL).await?;
        let batch_size = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        let mut failures = 0u32;
        let mut last_measured: Option<Instant> = None;
        loop {
            if last_measured.is_none_or(|t| t.elapsed() >= BACKLOG_MEASURE_INTERVAL) {
                self.measure_backlog(&mut *connection).await?;
                last_measured = Some(Instant::now());
            }
            let rows = event_log::next_unpublished(&mut *connection, batch_size).await?;
            if rows.is_empty() {
                if stop.is_cancelled() {
                    self.measure_backlog(&mut *connection).await?;
                    return Ok(());
                }
                tokio::select! {
                    notified = listener.recv() => {
                        if let Err(e) = notified {
                            // The listener reconnects on the next recv; don't spin meanwhile.
                            tracing::debug!(error = %e, "event log listener interrupted");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let (published, failed) = self.publish(&rows).await;
            if !published.is_empty() {
                event_log::mark_published(&mut *connection, &published).await?;
                self.metrics.relay_published.inc_by(published.len() as u64);
            }
            if failed > 0 {
                self.metrics.relay_publish_errors.inc_by(failed as u64);
                failures += 1;
                if stop.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep(retry_delay(failures)) => {}
                    () = stop.cancelled() => {}
                }
            } else {
                failures = 0;
            }
        }
    }

    /// Sends every row and waits for Kafka's answers. Returns the seqs Kafka
    /// acknowledged and the number it did not.
    async fn publish(&self, rows: &[LoggedEvent]) -> (Vec<i64>, usize) {
        // join_all polls in order, so messages are enqueued in seq order and the
        // idempotent producer keeps that order within each partition.
        let deliveries = join_all(rows.iter().map(|row| {
            let seq = row.seq.to_string();
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: header::WEBHOOK_ID,
                    value: Some(row.webhook_id.as_str()),
                })
                .insert(Header {
                    key: header::EVENT_TYPE,
                    value: Some(row.event_type.as_str()),
                })
                .insert(Header {
                    key: header::SOURCE,
                    value: Some(row.source.as_str()),
                })
                .insert(Header {
                    key: header::SEQ,
                    value: Some(seq.as_str()),
                });
            let record = FutureRecord::to(&self.kafka.topic)
                .key(row.partition_key.as_str())
                .payload(row.body.as_slice())
                .headers(headers);
            self.producer
                .send(record, Timeout::After(self.settings.message_timeout))
        }))
        .await;
        let mut published = Vec::with_capacity(rows.len());
        let mut failed = 0;
        for (row, delivery) in rows.iter().zip(deliveries) {
            match delivery {
                Ok(_) => published.push(row.seq),
                Err((e, _)) => {
                    if failed == 0 {
                        tracing::warn!(error = %e, seq = row.seq, webhook_id = %row.webhook_id, "Kafka did not acknowledge; will retry");
                    }
                    failed += 1;
                }
            }
        }
        (published, failed)
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

/// 200 ms doubling to at most 10 s.
fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_millis(200 * (1 << exponent)).min(Duration::from_secs(10))
}
