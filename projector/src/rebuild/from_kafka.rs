//! Replay from the topic (`projector replay --from kafka`): every partition is
//! read from its low watermark, the earliest offset the broker still holds,
//! with a consumer that is assigned partitions directly and never joins a
//! group or commits, so the live consumer group is not disturbed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use hookstream_shared::kafka::KafkaSettings;

use super::GenerationFill;
use super::apply_counted;
use super::progress::ProgressReport;
use crate::consumer::event_from_message;
use crate::offsets;
use crate::projection::IncomingEvent;
use crate::projection::generation::Generation;

/// How long to wait for the broker's next message before giving up on it.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of the broker's metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A read of the whole topic, partition by partition, up to targets that can
/// be raised while it runs.
pub struct KafkaReplay {
    consumer: Arc<StreamConsumer>,
    topic: String,
    chunk: usize,
    /// Next offset to read, per partition.
    positions: BTreeMap<i32, i64>,
    /// Read at least up to (exclusive), per partition.
    targets: BTreeMap<i32, i64>,
    /// Messages without a `seq` header (not published by ingest), skipped.
    pub foreign_messages: u64,
}

impl std::fmt::Debug for KafkaReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReplay")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl KafkaReplay {
    /// Finds the topic's partitions and their watermarks, and assigns them all
    /// from the low watermark up to the current high watermark.
    pub async fn start(kafka: &KafkaSettings, chunk: usize) -> anyhow::Result<Self> {
        let mut config = kafka.client_config()?;
        config
            .set("group.id", "hookstream-replay")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: Arc<StreamConsumer> = Arc::new(
            config
                .create()
                .context("cannot create the Kafka consumer for replay")?,
        );
        let topic = kafka.topic.clone();
        // librdkafka's metadata and watermark calls block; keep them off the runtime.
        let watermarks = {
            let consumer = Arc::clone(&consumer);
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
                let metadata = consumer
                    .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                    .with_context(|| format!("cannot read the metadata of topic {topic}"))?;
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
                partitions
                    .into_iter()
                    .map(|p| {
                        let marks = consumer
                            .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                            .with_context(|| format!("cannot read the offsets of partition {p}"))?;
                        Ok((p, marks))
                    })
                    .collect()
            })
            .await??
        };
        let mut assignment = TopicPartitionList::new();
        for (&partition, &(low, _)) in &watermarks {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            topic,
            chunk,
            positions: watermarks.iter().map(|(&p, &(low, _))| (p, low)).collect(),
            targets: watermarks
                .iter()
                .map(|(&p, &(_, high))| (p, high))
                .collect(),
            foreign_messages: 0,
        })
    }

    /// Messages left before every partition reaches its target.
    pub fn remaining(&self) -> u64 {
        self.positions
            .iter()
            .map(|(p, &at)| (self.targets[p] - at).max(0) as u64)
            .sum()
    }

    fn done(&self) -> bool {
        self.positions.iter().all(|(p, &at)| at >= self.targets[p])
    }

    /// Raises the targets to the partitions' current high watermarks.
    pub async fn extend_to_high_watermarks(&mut self) -> anyhow::Result<()> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let partitions: Vec<i32> = self.targets.keys().copied().collect();
        let highs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            partitions
                .into_iter()
                .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)?.1)))
                .collect()
        })
        .await??;
        for (partition, high) in highs {
            self.raise_target(partition, high);
        }
        Ok(())
    }

    fn raise_target(&mut self, partition: i32, target: i64) {
        let current = self.targets.entry(partition).or_insert(target);
        *current = (*current).max(target);
    }

    /// Up to a chunk of events; empty once every partition reached its target.
    /// Messages past a target are kept too: applying more is harmless.
    async fn next_chunk(&mut self) -> anyhow::Result<Vec<IncomingEvent>> {
        let mut events = Vec::new();
        while events.len() < self.chunk && !self.done() {
            let message = tokio::time::timeout(RECEIVE_TIMEOUT, self.consumer.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "Kafka delivered nothing for {RECEIVE_TIMEOUT:?} before the replay reached offsets {:?} (now at {:?})",
                        self.targets,
                        self.positions
                    )
                })??;
            let next = message.offset() + 1;
            let position = self.positions.entry(message.partition()).or_insert(next);
            *position = (*position).max(next);
            match event_from_message(&message) {
                Some(event) => events.push(event),
                None => self.foreign_messages += 1,
            }
        }
        Ok(events)
    }

    /// Applies chunks, each in its own transaction, until the targets are
    /// reached or `stop` fires. Returns the events applied.
    pub async fn fill(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        stop: &CancellationToken,
        fill: &mut GenerationFill,
        progress: &mut ProgressReport,
    ) -> anyhow::Result<u64> {
        let mut applied = 0;
        while !stop.is_cancelled() {
            let events = self.next_chunk().await?;
            if events.is_empty() {
                break;
            }
            fill.apply(pool, generation, &events).await?;
            applied += events.len() as u64;
            progress.advance(events.len() as u64);
        }
        Ok(applied)
    }

    /// Inside the switch transaction (the live consumer held back): reads on
    /// until every partition is at least where the live consumer group is, so
    /// the new generation holds everything the live one does.
    pub async fn reach_live_offsets(
        &mut self,
        tx: &mut PgConnection,
        group: &str,
        generation: &Generation,
        progress: &mut ProgressReport,
    ) -> anyhow::Result<()> {
        let stored = offsets::all(&mut *tx, group, &self.topic).await?;
        for offsets::StoredPosition {
            partition,
            next_offset,
            ..
        } in stored
        {
            anyhow::ensure!(
                self.targets.contains_key(&partition),
                "the live consumer has applied partition {partition}, which the topic no longer has"
            );
            self.raise_target(partition, next_offset);
        }
        loop {
            let events = self.next_chunk().await?;
            if events.is_empty() {
                return Ok(());
            }
            apply_counted(tx, generation, &events, progress).await?;
        }
    }
}
