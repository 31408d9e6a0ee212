//! `projector replay`: rebuild every projection into a new generation while
//! the live one keeps serving, then switch to it atomically.
//!
//! 1. Fill: apply the source (the log, or the topic) into a new generation,
//!    chunk by chunk, until a round finds less than a chunk of new events.
//! 2. Switch, in one transaction: lock the live row FOR UPDATE (waiting for
//!    the consumer's batch in flight, holding back the next), apply what
//!    arrived since, re-point the reader views and the live row, notify every
//!    replica's cache, commit. The consumer's next batch lands in the new
//!    generation, which already holds everything the old one held, so reads
//!    never go back in time.
//! 3. Drop the old generation, unless asked to keep it.
//!
//! Killed before the switch commits, a replay leaves the live generation
//! untouched; the next rebuild drops what it had built.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_shared::event_log;
use hookstream_shared::kafka::KafkaSettings;

use super::from_kafka::KafkaReplay;
use super::progress::{ProgressReport, StepTime};
use super::{GenerationFill, RebuildLock, apply_counted, drop_abandoned, fill_from_log, log_size};
use crate::projection::from_log::{self, LogCursor, log_head};
use crate::projection::generation::{self, Generation, Persistence};
use crate::{changes, feed};

/// Logs of fewer events are replayed into logged tables, unless told
/// otherwise ([`ReplayOptions::unlogged_from`]). An unlogged build saves
/// writing every version of a row to the write-ahead log, but ends by
/// rewriting every table to log it (`set logged`): worth it when the log
/// holds many versions of each object, a fixed cost otherwise.
pub const DEFAULT_UNLOGGED_FROM: u64 = 100_000;

/// Where a replay reads events from.
#[derive(Debug, Clone)]
pub enum ReplaySource {
    /// The event log in Postgres: everything ever acknowledged.
    Log,
    /// The earliest offsets the topic still holds. `group` is the live
    /// consumer group, whose stored offsets say how far the live generation is.
    Kafka { kafka: KafkaSettings, group: String },
}

impl ReplaySource {
    fn name(&self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Kafka { .. } => "kafka",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: ReplaySource,
    /// Keep the previous generation (retired) instead of dropping it.
    pub keep_old: bool,
    /// Events read from the source at a time.
    pub chunk: usize,
    /// Snapshot bytes held in memory before they are written (see
    /// [`GenerationFill`]).
    pub memory_budget: usize,
    /// A log of at least this many events is built unlogged (see
    /// [`DEFAULT_UNLOGGED_FROM`]); a replay from Kafka always is.
    pub unlogged_from: u64,
}

/// What a finished replay did.
#[derive(Debug, Clone)]
pub struct ReplaySummary {
    pub generation: Generation,
    /// The generation that was live before, if any.
    pub previous: Option<Generation>,
    /// Whether `previous` was kept.
    pub kept_previous: bool,
    pub events: u64,
    pub elapsed: Duration,
    /// Where the time went, step by step.
    pub steps: Vec<StepTime>,
}

impl ReplaySummary {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs a replay. On error or `stop`, the new generation is dropped and the
/// live one is as it was.
pub async fn replay(
    pool: &PgPool,
    options: &ReplayOptions,
    stop: &CancellationToken,
    progress: &mut ProgressReport,
) -> anyhow::Result<ReplaySummary> {
    progress.step("creating the new generation");
    let lock = RebuildLock::acquire(pool).await?;
    drop_abandoned(pool, &lock).await?;
    let log_events = match options.source {
        ReplaySource::Log => Some(log_size(pool).await?),
        ReplaySource::Kafka { .. } => None,
    };
    if let Some(events) = log_events {
        progress.set_total(events);
    }
    let persistence = if log_events.is_some_and(|events| events < options.unlogged_from) {
        Persistence::Logged
    } else {
        Persistence::Unlogged
    };
    let generation = generation::create_with(pool, options.source.name(), persistence).await?;
    progress.step(&format!(
        "replaying from the {} into {generation}",
        options.source.name()
    ));
    let result = build_and_switch(pool, options, &generation, stop, progress).await;
    let previous = match result {
        Ok(previous) => previous,
        Err(e) => {
            if let Err(drop_error) = generation::drop_generation(pool, &generation).await {
                tracing::warn!(error = format!("{drop_error:#}"), %generation, "cannot drop the unfinished generation; the next rebuild will");
            }
            lock.release().await.ok();
            return Err(e);
        }
    };
    let mut kept_previous = options.keep_old && previous.is_some();
    if let (Some(old), false) = (&previous, options.keep_old) {
        progress.step(&format!("dropping the previous generation {old}"));
        // The switch has committed; a failed drop leaves a retired
        // generation behind, not a failed replay.
        if let Err(e) = generation::drop_generation(pool, old).await {
            tracing::warn!(error = format!("{e:#}"), generation = %old, "cannot drop the previous generation; drop it by hand");
            kept_previous = true;
        }
    }
    lock.release().await?;
    progress.finish();
    Ok(ReplaySummary {
        generation,
        previous,
        kept_previous,
        events: progress.events(),
        elapsed: progress.elapsed(),
        steps: progress.step_times(),
    })
}

/// Fills `generation`, then makes it live. Returns the generation it replaced.
async fn build_and_switch(
    pool: &PgPool,
    options: &ReplayOptions,
    generation: &Generation,
    stop: &CancellationToken,
    progress: &mut ProgressReport,
) -> anyhow::Result<Option<Generation>> {
    match &options.source {
        ReplaySource::Log => {
            let mut cursor = LogCursor::after(0);
            let mut fill = GenerationFill::new(options.memory_budget);
            catch_up_from_log(
                pool,
                generation,
                &mut cursor,
                options.chunk,
                stop,
                &mut fill,
                progress,
            )
            .await?;
            anyhow::ensure!(!stop.is_cancelled(), "replay interrupted");
            fill.finish(pool, generation, progress).await?;
            progress.step("writing the new generation to the write-ahead log");
            generation::make_durable(pool, generation).await?;
            progress.step("switching to the new generation");
            let mut tx = pool.begin().await?;
            lock_live_for_switch(&mut tx).await?;
            let head = log_head(&mut tx).await?;
            loop {
                let events = cursor.next_chunk(&mut tx, head, options.chunk).await?;
                if events.is_empty() {
                    break;
                }
                apply_counted(&mut tx, generation, &events, progress).await?;
            }
            let late = cursor.late_arrivals(&mut tx).await?;
            apply_counted(&mut tx, generation, &late, progress).await?;
            let previous = switch(&mut tx, generation).await?;
            tx.commit().await?;
            Ok(previous)
        }
        ReplaySource::Kafka { kafka, group } => {
            let mut source = KafkaReplay::start(kafka, options.chunk).await?;
            let mut fill = GenerationFill::new(options.memory_budget);
            progress.set_total(source.remaining());
            loop {
                let applied = source
                    .fill(pool, generation, stop, &mut fill, progress)
                    .await?;
                anyhow::ensure!(!stop.is_cancelled(), "replay interrupted");
                if applied < options.chunk as u64 {
                    break;
                }
                source.extend_to_high_watermarks().await?;
                progress.set_total(progress.events() + source.remaining());
            }
            fill.finish(pool, generation, progress).await?;
            progress.step("writing the new generation to the write-ahead log");
            generation::make_durable(pool, generation).await?;
            progress.step("switching to the new generation");
            let mut tx = pool.begin().await?;
            lock_live_for_switch(&mut tx).await?;
            source
                .reach_live_offsets(&mut tx, group, generation, progress)
                .await?;
            // What the relay parked never reached Kafka: the live generation
            // has it from the log, and so must this one.
            let parked = event_log::parked_seqs(&mut *tx).await?;
            let parked = from_log::events_at(&mut tx, &parked).await?;
            apply_counted(&mut tx, generation, &parked, progress).await?;
            let previous = switch(&mut tx, generation).await?;
            tx.commit().await?;
            if source.foreign_messages > 0 {
                // Not ingest's (no `seq` header): nothing to project, but
                // someone else writes to this topic.
                tracing::warn!(
                    skipped = source.foreign_messages,
                    "the topic holds messages not published by ingest; they were skipped"
                );
            }
            Ok(previous)
        }
    }
}

/// Applies the log in rounds until a round finds less than a chunk of new
/// events: the rest is applied inside the switch transaction, short enough
/// not to hold the consumer back for long.
async fn catch_up_from_log(
    pool: &PgPool,
    generation: &Generation,
    cursor: &mut LogCursor,
    chunk: usize,
    stop: &CancellationToken,
    fill: &mut GenerationFill,
    progress: &mut ProgressReport,
) -> anyhow::Result<()> {
    loop {
        let head = log_head(&mut *pool.acquire().await?).await?;
        let applied =
            fill_from_log(pool, generation, cursor, head, chunk, stop, fill, progress).await?;
        if stop.is_cancelled() || applied < chunk as u64 {
            return Ok(());
        }
        progress.set_total(
            progress.events() + (log_head(&mut *pool.acquire().await?).await? - head).max(0) as u64,
        );
    }
}

/// Locks the live row FOR UPDATE: consumer batches hold it FOR SHARE, so this
/// waits for the batch in flight and holds back the next until commit.
async fn lock_live_for_switch(tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("select generation from projection_live for update")
        .fetch_optional(&mut *tx)
        .await?;
    Ok(())
}

/// Makes `generation` live and tells every replica's cache to start over.
async fn switch(
    tx: &mut sqlx::PgConnection,
    generation: &Generation,
) -> anyhow::Result<Option<Generation>> {
    let previous = generation::activate(tx, generation).await?;
    changes::notify(tx, &[changes::CLEAR_ALL.to_owned()]).await?;
    // Old changes are not replayed into the feed; readers are told to
    // re-read instead.
    feed::record_resync(tx, "generation_switch").await?;
    Ok(previous)
}
