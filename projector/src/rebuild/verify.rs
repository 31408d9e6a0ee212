//! `projector verify`: rebuild the projections from the log into a scratch
//! generation and compare them, row by row, with the live generation.
//!
//! The live generation may lag the log by the events still on their way
//! through Kafka, and that is not drift. So the comparison is made in one
//! REPEATABLE READ snapshot (the scratch generation caught up to the log as
//! that snapshot sees it, inside the same transaction, never committed) and
//! repeated a few times a moment apart: a row reported as drift differed in
//! every attempt. On a quiet system the first attempt is exact.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::apply_counted;
use super::progress::ProgressReport;
use super::{GenerationFill, RebuildLock, drop_abandoned, fill_from_log, log_size};
use crate::projection::dump::{self, RowDifference};
use crate::projection::from_log::{LogCursor, log_head};
use crate::projection::generation::{self, Generation};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub chunk: usize,
    /// As [`ReplayOptions::memory_budget`](super::replay::ReplayOptions::memory_budget).
    pub memory_budget: usize,
    /// Comparisons to make before calling a difference drift.
    pub attempts: u32,
    /// Pause between attempts, for the live consumer to catch up.
    pub pause: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            chunk: super::DEFAULT_CHUNK,
            memory_budget: super::DEFAULT_MEMORY_BUDGET,
            attempts: 3,
            pause: Duration::from_secs(2),
        }
    }
}

/// What a verify found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub live: Generation,
    /// Rows compared (in the last attempt, both sides together).
    pub rows: usize,
    /// Differences present in every attempt; empty means no drift.
    pub drift: Vec<RowDifference>,
    pub attempts: u32,
}

pub async fn verify(
    pool: &PgPool,
    options: &VerifyOptions,
    stop: &CancellationToken,
    progress: &mut ProgressReport,
) -> anyhow::Result<VerifyReport> {
    let lock = RebuildLock::acquire(pool).await?;
    drop_abandoned(pool, &lock).await?;
    let scratch = generation::create_unlogged(pool, "verify").await?;
    let result = build_and_compare(pool, options, &scratch, stop, progress).await;
    let dropped = generation::drop_generation(pool, &scratch).await;
    lock.release().await.ok();
    progress.finish();
    let report = result?;
    dropped?;
    Ok(report)
}

async fn build_and_compare(
    pool: &PgPool,
    options: &VerifyOptions,
    scratch: &Generation,
    stop: &CancellationToken,
    progress: &mut ProgressReport,
) -> anyhow::Result<VerifyReport> {
    progress.set_total(log_size(pool).await?);
    let mut cursor = LogCursor::after(0);
    let head = log_head(&mut *pool.acquire().await?).await?;
    let mut fill = GenerationFill::new(options.memory_budget);
    fill_from_log(
        pool,
        scratch,
        &mut cursor,
        head,
        options.chunk,
        stop,
        &mut fill,
        progress,
    )
    .await?;
    anyhow::ensure!(!stop.is_cancelled(), "verify interrupted");
    fill.finish(pool, scratch, progress).await?;

    let mut persistent: Option<BTreeSet<(&'static str, String)>> = None;
    let attempts = options.attempts.max(1);
    for attempt in 1..=attempts {
        progress.step(&format!("comparing (attempt {attempt} of {attempts})"));
        let mut tx = pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read")
            .execute(&mut *tx)
            .await?;
        let live = generation::live_in(&mut tx).await?;
        // A cursor copy: the attempt's transaction is rolled back, so its
        // events must be applied again by the next attempt.
        let mut attempt_cursor = cursor.clone();
        let head = log_head(&mut tx).await?;
        loop {
            let events = attempt_cursor
                .next_chunk(&mut tx, head, options.chunk)
                .await?;
            if events.is_empty() {
                break;
            }
            apply_counted(&mut tx, scratch, &events, progress).await?;
        }
        let late = attempt_cursor.late_arrivals(&mut tx).await?;
        apply_counted(&mut tx, scratch, &late, progress).await?;
        let expected = dump::dump(&mut tx, scratch).await?;
        let actual = dump::dump(&mut tx, &live).await?;
        tx.rollback().await?;
        let differences = dump::compare(&expected, &actual);
        let rows = expected
            .values()
            .chain(actual.values())
            .map(|t| t.len())
            .sum();
        let keys: BTreeSet<(&'static str, String)> = differences
            .iter()
            .map(|d| (d.table(), d.key().to_owned()))
            .collect();
        let still = match persistent.take() {
            None => keys,
            Some(before) => before.intersection(&keys).cloned().collect(),
        };
        if still.is_empty() || attempt == attempts {
            let drift = differences
                .into_iter()
                .filter(|d| still.contains(&(d.table(), d.key().to_owned())))
                .collect();
            return Ok(VerifyReport {
                live,
                rows,
                drift,
                attempts: attempt,
            });
        }
        persistent = Some(still);
        tokio::time::sleep(options.pause).await;
    }
    unreachable!("the last attempt returns")
}
