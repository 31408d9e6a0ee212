//! The Kafka consumer: applies the topic to the live generation, exactly once.
//!
//! Offsets live in Postgres (`projector_offsets`) and are written in the same
//! transaction as the projection changes of the messages before them, so a
//! crash at any moment either keeps both or neither. On assignment the
//! consumer starts each partition at its stored offset; Kafka's committed
//! offsets are written afterwards only as a hint for monitoring tools.
//!
//! The consumer runs on a thread of its own. librdkafka calls the rebalance
//! callback from inside `poll`, on that thread, so the callback can block on a
//! Postgres query (through the runtime handle) without stalling the runtime,
//! and no batch is ever half-applied when a rebalance happens.
//!
//! Each batch transaction also checks that the stored offsets are the ones
//! this consumer started from. If another consumer moved them (this one lost
//! the partition and does not know yet), the batch is rolled back.
//!
//! No message is ever passed over. A failed batch leaves the consumer's fetch
//! position past messages that were read but not applied, so every partition
//! of that batch is marked [`Fetch::Lost`]: none of its messages is applied
//! until a seek back to the stored offset has succeeded, however many tries
//! that takes. Independently, a batch's first message of each partition must
//! be the stored next offset; if it is not, that partition's messages are
//! refused and it is sought back too.
//!
//! Kafka can lose messages the projector never applied: retention deletes them
//! while it is down, or a broker with a small log drops them. A partition
//! whose next offset to apply lies below its low watermark has such a gap;
//! the consumer then re-applies the event log (the source of truth) into the
//! live generation before going on, so no acknowledged event is missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use hookstream_shared::kafka::{KafkaSettings, message as kafka_message};

use crate::applied::{self, Placement};
use crate::config::ConsumerSettings;
use crate::metrics::ProjectorMetrics;
use crate::offsets;
use crate::projection::from_log::{self, Target};
use crate::projection::{self, IncomingEvent, generation};
use crate::{changes, feed};
use hookstream_shared::retry::Retry;

/// Where each assigned partition stands.
type Positions = HashMap<i32, Position>;

/// One assigned partition: what Postgres says comes next, and whether the
/// consumer's fetch position is known to agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// The next offset to apply, as stored in Postgres, or `None` when nothing
    /// was ever applied (start from the beginning).
    next: Option<i64>,
    fetch: Fetch,
}

/// How the consumer's fetch position relates to a partition's `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Just placed at `next` (by assignment or seek): the first message that
    /// arrives is the first the partition holds at or after `next`.
    AtNext,
    /// Reading on after the last applied batch: the next message must be
    /// exactly `next`.
    Following,
    /// A batch read past `next` and was not applied. Nothing of the partition
    /// is applied until a seek back to `next` succeeds.
    Lost,
}

impl Position {
    fn placed_at(next: Option<i64>) -> Self {
        Self {
            next,
            fetch: Fetch::AtNext,
        }
    }
}

/// Whether a partition's messages in a batch may be applied, given where the
/// partition stands and the offset of its first message in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// They continue exactly where the last applied message left off.
    Contiguous,
    /// Kafka no longer holds offsets `next..low`: lost to retention, to be
    /// recovered from the event log. What Kafka still has is applied.
    Gap { next: i64, low: i64 },
    /// Messages Kafka still holds were passed over (or that cannot be ruled
    /// out): refuse, and seek back.
    Skipped { next: i64, first: i64 },
    /// The partition awaits a seek back; its messages are stale reads.
    AwaitingRewind,
}

/// Decides [`Start`] for one partition. `low_watermark` is only asked for
/// (a broker round trip) when the first offset is past `next`.
fn check_start(
    position: Position,
    first: i64,
    low_watermark: impl FnOnce() -> Option<i64>,
) -> Start {
    match (position.fetch, position.next) {
        (Fetch::Lost, _) => Start::AwaitingRewind,
        (Fetch::AtNext, _) | (Fetch::Following, None) => Start::Contiguous,
        (Fetch::Following, Some(next)) if first <= next => Start::Contiguous,
        (Fetch::Following, Some(next)) => match low_watermark() {
            Some(low) if low > next => Start::Gap { next, low },
            _ => Start::Skipped { next, first },
        },
    }
}

/// Shared between the poll loop and the callbacks librdkafka makes from `poll`.
struct ProjectorContext {
    runtime: Handle,
    pool: PgPool,
    group: String,
    topic: String,
    positions: Arc<Mutex<Positions>>,
    /// Set when a partition is found to have lost messages from Kafka.
    backfill_needed: AtomicBool,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
    /// Whether batches write the change feed (`PROJECTOR_CHANGES_RETENTION`).
    feed: bool,
}

impl ClientContext for ProjectorContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let positions = self.positions.lock().expect("positions lock");
        for (partition, position) in positions.iter() {
            if let Some(stats) = topic.partitions.get(partition)
                && stats.hi_offset >= 0
            {
                let lag = stats.hi_offset - position.next.unwrap_or(0);
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(lag.max(0));
            }
        }
    }
}

impl ConsumerContext for ProjectorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                let Some(mut stored) = self.load_offsets_retrying(&partitions) else {
                    return; // stopping
                };
                // One watermark request per partition, before the start
                // offsets are set: a partition recreated under its stored
                // offset starts over at its beginning; one whose beginning is
                // past its stored offset lost messages, to be backfilled.
                for &partition in &partitions {
                    let Some((low, high)) = self.watermarks(consumer, partition) else {
                        continue;
                    };
                    let next = stored.get(&partition).copied();
                    if let Some(next) = next
                        && high < next
                    {
                        if let Some(restart) = self.restart_recreated(partition, next, low, high) {
                            stored.insert(partition, restart);
                        }
                    } else if next.unwrap_or(0) < low {
                        self.record_gap(partition, next.unwrap_or(0), low);
                    }
                }
                for &partition in &partitions {
                    let offset = stored
                        .get(&partition)
                        .map_or(Offset::Beginning, |&o| Offset::Offset(o));
                    if let Err(e) = tpl.set_partition_offset(&self.topic, partition, offset) {
                        tracing::error!(error = %e, partition, "cannot set the start offset");
                    }
                }
                {
                    let mut positions = self.positions.lock().expect("positions lock");
                    for &partition in &partitions {
                        positions.insert(
                            partition,
                            Position::placed_at(stored.get(&partition).copied()),
                        );
                    }
                }
                tracing::info!(
                    ?partitions,
                    ?stored,
                    "partitions assigned; starting at the offsets stored in Postgres"
                );
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "cannot assign partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(?partitions, "partitions revoked");
                self.positions.lock().expect("positions lock").clear();
                self.metrics.consumer_lag.reset();
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "cannot unassign partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                self.positions.lock().expect("positions lock").clear();
            }
        }
    }
}

impl ProjectorContext {
    /// The earliest offset the broker still holds, `None` if it cannot say.
    fn low_watermark(&self, consumer: &BaseConsumer<Self>, partition: i32) -> Option<i64> {
        self.watermarks(consumer, partition).map(|(low, _)| low)
    }

    /// The partition's earliest offset and the offset after its last message.
    /// Blocks for one request to the broker; runs on the consumer thread.
    fn watermarks(&self, consumer: &BaseConsumer<Self>, partition: i32) -> Option<(i64, i64)> {
        match consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(5)) {
            Ok(marks) => Some(marks),
            Err(e) => {
                tracing::warn!(error = %e, partition, "cannot read the partition's watermarks");
                None
            }
        }
    }

    /// A partition that ends before the stored next offset was recreated (a
    /// broker that lost its data, a topic deleted and made again): its
    /// offsets start over and no longer match the stored ones, so messages
    /// below the stored offset would be taken as already applied. The
    /// position restarts at the partition's beginning, in Postgres (fenced
    /// on the offset this consumer read, with a fresh audit) and here, and
    /// the event log is re-applied, which holds everything the old topic
    /// held. Returns the new next offset, or `None` if it could not be
    /// stored (another consumer moved it, or the database failed; the next
    /// assignment or batch checks again).
    fn restart_recreated(&self, partition: i32, next: i64, low: i64, high: i64) -> Option<i64> {
        tracing::error!(
            partition,
            stored_next_offset = next,
            partition_end = high,
            "the partition ends before the stored offset: the topic was recreated or the broker lost its data; \
             starting the partition over and re-applying the event log"
        );
        let restarted = self.runtime.block_on(offsets::restart(
            &self.pool,
            &self.group,
            &self.topic,
            partition,
            next,
            low,
        ));
        match restarted {
            Ok(true) => {
                self.metrics.topic_restarts.inc();
                self.backfill_needed.store(true, Ordering::Release);
                Some(low)
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, partition, "cannot restart the partition's stored offset");
                None
            }
        }
    }

    fn record_gap(&self, partition: i32, next: i64, low: i64) {
        tracing::error!(
            partition,
            lost_from = next,
            lost_to = low,
            "Kafka no longer holds messages this projector never applied; re-applying the event log"
        );
        self.metrics.offset_gaps.inc();
        self.backfill_needed.store(true, Ordering::Release);
    }

    /// Reads stored offsets, retrying while the database is unreachable; an
    /// assignment cannot proceed without them. `None` when asked to stop.
    fn load_offsets_retrying(&self, partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        let mut attempt = 0u32;
        let mut retry = Retry::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let loaded = self.runtime.block_on(offsets::load(
                &self.pool,
                &self.group,
                &self.topic,
                partitions,
            ));
            match loaded {
                Ok(offsets) => return Some(offsets),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot read stored offsets; retrying");
                    if self.stop.is_cancelled() {
                        return None;
                    }
                    std::thread::sleep(retry.after_failure());
                }
            }
        }
    }
}

/// A message taken off the topic, waiting for its batch.
struct Pending {
    partition: i32,
    offset: i64,
    /// `None` for a message without hookstream's headers; skipped, but its
    /// offset still advances.
    event: Option<IncomingEvent>,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(
        "partition {partition} was moved on by another consumer (stored {stored:?}, expected {expected:?})"
    )]
    Fenced {
        partition: i32,
        stored: Option<i64>,
        expected: Option<i64>,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Starts the consumer thread. It runs until `stop` is cancelled, then
/// finishes the batch in hand, leaves the group and returns.
pub fn spawn(
    settings: ConsumerSettings,
    kafka: &KafkaSettings,
    pool: PgPool,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let context = ProjectorContext {
        runtime: Handle::current(),
        pool,
        group: settings.group_id.clone(),
        topic: kafka.topic.clone(),
        positions: Arc::new(Mutex::new(HashMap::new())),
        backfill_needed: AtomicBool::new(false),
        metrics,
        stop: stop.clone(),
        feed: settings.changes_retention.is_some(),
    };
    let mut config = kafka.client_config()?;
    // How long the broker may hold a fetch that finds nothing new. A broker
    // answers as soon as data arrives, but librdkafka's mock broker (the
    // local run, the tests) waits the whole time: its default of 500 ms was
    // most of the end-to-end latency there. KAFKA_PROPERTY_FETCH_WAIT_MAX_MS
    // overrides it.
    if config.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", "10");
    }
    let consumer: BaseConsumer<ProjectorContext> = config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&kafka.topic])
        .with_context(|| format!("cannot subscribe to {}", kafka.topic))?;
    std::thread::Builder::new()
        .name("projector-consumer".to_owned())
        .spawn(move || {
            ConsumeLoop {
                consumer,
                settings,
                stop,
            }
            .run()
        })
        .context("cannot start the consumer thread")
}

struct ConsumeLoop {
    consumer: BaseConsumer<ProjectorContext>,
    settings: ConsumerSettings,
    stop: CancellationToken,
}

impl ConsumeLoop {
    fn run(self) {
        let mut failures = 0u32;
        // One policy for both kinds of failure: they share a cause (the
        // database or the broker is away), and a success of either resets it.
        let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
        while !self.stop.is_cancelled() {
            if self.context().backfill_needed.swap(false, Ordering::AcqRel)
                && let Err(e) = self.backfill()
            {
                tracing::error!(
                    error = format!("{e:#}"),
                    "backfill from the event log failed; will retry"
                );
                self.context()
                    .backfill_needed
                    .store(true, Ordering::Release);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if let Err(e) = self.rewind() {
                // Nothing of a lost partition is applied until this succeeds;
                // gathering goes on meanwhile, so other partitions keep moving
                // and rebalances are still served.
                failures += 1;
                self.context().metrics.rewind_errors.inc();
                tracing::warn!(
                    error = format!("{e:#}"),
                    failures,
                    "cannot seek back to the stored offsets; will retry before applying those partitions"
                );
                self.pause(retry.after_failure());
            }
            let batch = self.gather();
            if batch.is_empty() {
                continue;
            }
            let partitions: Vec<i32> = batch.iter().map(|m| m.partition).collect();
            match self.apply(batch) {
                Ok(()) => {
                    failures = 0;
                    retry.reset();
                }
                Err(e) => {
                    failures += 1;
                    self.context().metrics.batch_errors.inc();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        failures,
                        "batch not applied; will re-read it"
                    );
                    self.mark_lost(&partitions);
                    self.pause(retry.after_failure());
                }
            }
        }
        // Leaving the group now lets the other replicas take the partitions
        // without waiting for a session timeout.
        self.consumer.unsubscribe();
        tracing::info!("consumer stopped");
    }

    /// Waits `pause`, or until asked to stop. librdkafka heartbeats from its
    /// own thread, so a pause without polling does not cost the assignment.
    fn pause(&self, pause: Duration) {
        let deadline = Instant::now() + pause;
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks partitions whose messages were read but not applied.
    fn mark_lost(&self, partitions: &[i32]) {
        let mut positions = self.context().positions.lock().expect("positions lock");
        for partition in partitions {
            if let Some(position) = positions.get_mut(partition) {
                position.fetch = Fetch::Lost;
            }
        }
    }

    fn context(&self) -> &ProjectorContext {
        self.consumer.context()
    }

    /// Polls until the batch is full, or until the wait since its first
    /// message is over and nothing more is already fetched. With a wait of
    /// zero, a batch is whatever arrived while the previous one was applied:
    /// small when traffic is light, full under a backlog.
    fn gather(&self) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.settings.batch_size {
            let timeout = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    deadline.get_or_insert_with(|| Instant::now() + self.settings.batch_wait);
                    batch.push(self.to_pending(&message));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
                None if deadline.is_none() => return batch,
                None => break,
            }
        }
        batch
    }

    fn to_pending(&self, message: &BorrowedMessage<'_>) -> Pending {
        let event = event_from_message(message);
        if event.is_none() {
            self.context().metrics.foreign_messages.inc();
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                "skipping a message without a seq header"
            );
        }
        Pending {
            partition: message.partition(),
            offset: message.offset(),
            event,
        }
    }

    /// Applies a batch and stores the offsets after it, in one transaction.
    /// A partition whose messages do not start where its stored offsets say
    /// is left out of the batch and marked for a seek back.
    fn apply(&self, mut batch: Vec<Pending>) -> Result<(), BatchError> {
        let expected: Positions = self
            .context()
            .positions
            .lock()
            .expect("positions lock")
            .clone();
        // A message below the stored offset is a stale read after a rewind,
        // unless the partition now ends below that offset: then the topic
        // was recreated while this consumer ran (librdkafka reset the fetch
        // to its beginning). That partition starts over.
        let mut below: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &batch {
            if let Some(next) = expected.get(&m.partition).and_then(|p| p.next)
                && m.offset < next
            {
                below.insert(m.partition, next);
            }
        }
        let mut restarted = Vec::new();
        for (partition, next) in below {
            if let Some((low, high)) = self.context().watermarks(&self.consumer, partition)
                && high < next
                && self
                    .context()
                    .restart_recreated(partition, next, low, high)
                    .is_some()
            {
                restarted.push(partition);
            }
        }
        if !restarted.is_empty() {
            // Read again from the new start (a seek to the stored offset),
            // after the log is re-applied; the other partitions go on.
            batch.retain(|m| !restarted.contains(&m.partition));
            self.mark_lost(&restarted);
        }
        // Messages of partitions revoked while gathering, or already applied
        // (re-delivered after a rewind), are dropped.
        batch.retain(|m| {
            expected
                .get(&m.partition)
                .is_some_and(|position| position.next.is_none_or(|n| m.offset >= n))
        });
        // A rebalance while gathering can hand the same messages over again;
        // each is applied, and counted in the audit, once.
        let mut seen = HashSet::with_capacity(batch.len());
        batch.retain(|m| seen.insert((m.partition, m.offset)));
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut first_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &batch {
            let next = next_offsets.entry(m.partition).or_insert(m.offset + 1);
            *next = (*next).max(m.offset + 1);
            let first = first_offsets.entry(m.partition).or_insert(m.offset);
            *first = (*first).min(m.offset);
        }
        let mut refused = Vec::new();
        for (&partition, &first) in &first_offsets {
            let start = check_start(expected[&partition], first, || {
                self.context().low_watermark(&self.consumer, partition)
            });
            match start {
                Start::Contiguous => {}
                Start::Gap { next, low } => self.context().record_gap(partition, next, low),
                Start::AwaitingRewind => refused.push(partition),
                Start::Skipped { next, first } => {
                    tracing::error!(
                        partition,
                        next,
                        first,
                        "a batch did not start at the stored offset; refusing it and seeking back"
                    );
                    self.context().metrics.batches_refused.inc();
                    refused.push(partition);
                }
            }
        }
        if !refused.is_empty() {
            batch.retain(|m| !refused.contains(&m.partition));
            for partition in &refused {
                next_offsets.remove(partition);
            }
            self.mark_lost(&refused);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut applied_counts: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &batch {
            *applied_counts.entry(m.partition).or_default() += 1;
        }
        let placements: Vec<Placement> = batch
            .iter()
            .filter_map(|m| {
                m.event.as_ref().map(|event| Placement {
                    partition: m.partition,
                    offset: m.offset,
                    seq: event.seq,
                })
            })
            .collect();
        let events: Vec<IncomingEvent> = batch.into_iter().filter_map(|m| m.event).collect();
        let started = Instant::now();
        let context = self.context();
        let span = tracing::debug_span!("apply_batch", events = events.len(), partitions = ?next_offsets.keys().collect::<Vec<_>>());
        let _entered = span.enter();
        let outcome = context.runtime.block_on(async {
            let mut tx = context.pool.begin().await?;
            let generation = generation::lock_live(&mut tx).await?;
            let partitions: Vec<i32> = next_offsets.keys().copied().collect();
            let stored =
                offsets::lock(&mut tx, &context.group, &context.topic, &partitions).await?;
            for &partition in &partitions {
                let expected_next = expected.get(&partition).and_then(|position| position.next);
                if stored.get(&partition).copied() != expected_next {
                    return Err(BatchError::Fenced {
                        partition,
                        stored: stored.get(&partition).copied(),
                        expected: expected_next,
                    });
                }
            }
            let outcome = projection::apply(&mut tx, &generation, &events).await?;
            applied::record_placements(&mut tx, &context.topic, &placements).await?;
            applied::record_unknown_types(&mut tx, outcome.ignored.keys(), &events).await?;
            // Last before the offsets: the feed's lock is held to commit.
            changes::announce(&mut tx, &generation, &outcome, context.feed).await?;
            let mut feed_lag = None;
            if context.feed
                && let Some(oldest) = events.iter().map(|e| e.seq).min()
            {
                feed_lag = feed::lag_seconds(&mut tx, oldest).await?;
            }
            let advances: Vec<offsets::Advance> = partitions
                .iter()
                .map(|p| offsets::Advance {
                    partition: *p,
                    next_offset: next_offsets[p],
                    first_offset: first_offsets[p],
                    applied: applied_counts[p],
                })
                .collect();
            offsets::advance(&mut tx, &context.group, &context.topic, &advances).await?;
            tx.commit().await?;
            Ok::<_, BatchError>((outcome, feed_lag))
        })?;
        let (outcome, feed_lag) = outcome;
        if let Some(lag) = feed_lag {
            context.metrics.feed_lag_seconds.set(lag);
        }
        context
            .metrics
            .record_batch(&outcome, started.elapsed().as_secs_f64());
        {
            let mut positions = context.positions.lock().expect("positions lock");
            for (partition, next) in &next_offsets {
                // Only if still assigned: a rebalance during the batch cleared it.
                if let Some(position) = positions.get_mut(partition) {
                    *position = Position {
                        next: Some(*next),
                        fetch: Fetch::Following,
                    };
                }
            }
        }
        self.commit_hint(&next_offsets);
        Ok(())
    }

    /// Re-applies the whole event log into the live generation. Everything
    /// Kafka ever held is in the log, so this covers whatever it lost.
    fn backfill(&self) -> anyhow::Result<()> {
        let context = self.context();
        context.metrics.backfills.inc();
        let started = Instant::now();
        let last = context.runtime.block_on(async {
            let head = from_log::log_head(&mut *context.pool.acquire().await?).await?;
            let last = from_log::apply_log(
                &context.pool,
                &Target::Live,
                0,
                head,
                5000,
                &self.stop,
                |p, _| {
                    tracing::info!(
                        seq = p.seq,
                        events = p.events,
                        "backfilling from the event log"
                    );
                },
            )
            .await?;
            // Many customers may have changed: read caches start over, and
            // feed readers re-read what they care about.
            let mut tx = context.pool.begin().await?;
            changes::notify(&mut tx, &[changes::CLEAR_ALL.to_owned()]).await?;
            if context.feed {
                feed::record_resync(&mut tx, "backfill").await?;
            }
            tx.commit().await?;
            Ok::<i64, anyhow::Error>(last)
        })?;
        tracing::info!(
            up_to_seq = last,
            seconds = started.elapsed().as_secs_f64(),
            "backfill from the event log done"
        );
        Ok(())
    }

    /// Tells Kafka where we are, for tools like kafka-consumer-groups. Never
    /// read back: Postgres is the record.
    fn commit_hint(&self, next_offsets: &BTreeMap<i32, i64>) {
        let mut list = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            let _ =
                list.add_partition_offset(&self.context().topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(error = %e, "offset hint not committed to Kafka");
        }
    }

    /// Seeks every lost partition back to its stored offset. Fails if the
    /// offsets cannot be read or a seek fails; the partitions not sought stay
    /// lost, and the caller tries again before their messages can be applied.
    fn rewind(&self) -> anyhow::Result<()> {
        let context = self.context();
        let lost: Vec<i32> = context
            .positions
            .lock()
            .expect("positions lock")
            .iter()
            .filter(|(_, position)| position.fetch == Fetch::Lost)
            .map(|(&partition, _)| partition)
            .collect();
        if lost.is_empty() {
            return Ok(());
        }
        let stored = context
            .runtime
            .block_on(offsets::load(
                &context.pool,
                &context.group,
                &context.topic,
                &lost,
            ))
            .context("cannot reload the stored offsets")?;
        let mut unsought = Vec::new();
        for partition in lost {
            let next = stored.get(&partition).copied();
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            match self
                .consumer
                .seek(&context.topic, partition, offset, Duration::from_secs(5))
            {
                Ok(()) => {
                    let mut positions = context.positions.lock().expect("positions lock");
                    // A rebalance cannot happen between the read and here (it
                    // runs inside poll), but the partition may be gone already.
                    if let Some(position) = positions.get_mut(&partition) {
                        *position = Position::placed_at(next);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition, "cannot seek");
                    unsought.push(partition);
                }
            }
        }
        anyhow::ensure!(
            unsought.is_empty(),
            "cannot seek partitions {unsought:?} back"
        );
        Ok(())
    }
}

/// The event a message carries, or `None` for a message ingest did not
/// publish (no `seq` header).
pub(crate) fn event_from_message(message: &impl Message) -> Option<IncomingEvent> {
    Some(IncomingEvent {
        seq: kafka_message::seq(message)?,
        webhook_id: kafka_message::header_text(message, kafka_message::WEBHOOK_ID)
            .unwrap_or_default(),
        body: message.payload().unwrap_or_default().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::{Fetch, Position, Start, check_start};

    fn at(next: Option<i64>, fetch: Fetch) -> Position {
        Position { next, fetch }
    }

    fn no_watermark() -> Option<i64> {
        panic!("the watermark is only read when the first offset is past next")
    }

    #[test]
    fn a_lost_partition_is_never_applied_whatever_its_offsets() {
        for first in [0, 10, 11, 500] {
            assert_eq!(
                check_start(at(Some(10), Fetch::Lost), first, || Some(0)),
                Start::AwaitingRewind
            );
        }
        assert_eq!(
            check_start(at(None, Fetch::Lost), 0, no_watermark),
            Start::AwaitingRewind
        );
    }

    #[test]
    fn following_on_must_start_exactly_at_next() {
        let following = at(Some(10), Fetch::Following);
        assert_eq!(check_start(following, 10, no_watermark), Start::Contiguous);
        assert_eq!(
            check_start(following, 14, || Some(3)),
            Start::Skipped {
                next: 10,
                first: 14
            }
        );
        // A low watermark at next still holds message 10: it was passed over.
        assert_eq!(
            check_start(following, 14, || Some(10)),
            Start::Skipped {
                next: 10,
                first: 14
            }
        );
        // A broker that cannot say is no proof of a gap.
        assert_eq!(
            check_start(following, 14, || None),
            Start::Skipped {
                next: 10,
                first: 14
            }
        );
        assert_eq!(
            check_start(following, 14, || Some(12)),
            Start::Gap { next: 10, low: 12 }
        );
    }

    #[test]
    fn a_partition_just_placed_takes_the_first_message_the_broker_has() {
        assert_eq!(
            check_start(at(Some(10), Fetch::AtNext), 12, no_watermark),
            Start::Contiguous
        );
        assert_eq!(
            check_start(at(None, Fetch::AtNext), 7, no_watermark),
            Start::Contiguous
        );
    }
}
