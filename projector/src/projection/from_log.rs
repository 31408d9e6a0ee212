//! Applying the event log itself, in `seq` order: how replay builds a new
//! generation, and how the consumer repairs a gap when Kafka has lost messages
//! it never applied (retention ran out while the projector was down).
//!
//! Applying events is idempotent and order-independent, so re-applying events
//! a generation already holds is harmless.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_shared::event_log;

use super::generation::{self, Generation};
use super::{BatchOutcome, IncomingEvent, apply};

/// Where applied events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Whichever generation is live when each chunk commits (locked for it).
    Live,
    /// A generation being built.
    Generation(Generation),
}

/// Progress so far, for progress bars and logs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The last seq applied.
    pub seq: i64,
    /// Events applied so far in this run.
    pub events: u64,
    pub elapsed: Duration,
}

/// Applies every logged event with `after < seq <= up_to`, in chunks of
/// `chunk` events, each in its own transaction, calling `progress` after each.
/// Returns the last seq applied (or `after` if none). Stops early, between
/// chunks, when `stop` is cancelled.
pub async fn apply_log(
    pool: &PgPool,
    target: &Target,
    after: i64,
    up_to: i64,
    chunk: usize,
    stop: &CancellationToken,
    mut progress: impl FnMut(Progress, &BatchOutcome),
) -> anyhow::Result<i64> {
    let started = Instant::now();
    let mut last = after;
    let mut events_applied = 0u64;
    let limit = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
    while last < up_to && !stop.is_cancelled() {
        let rows = event_log::read_after(pool, last, limit).await?;
        let rows: Vec<_> = rows.into_iter().take_while(|r| r.seq <= up_to).collect();
        let Some(end) = rows.last().map(|r| r.seq) else {
            break;
        };
        let events: Vec<IncomingEvent> = rows
            .into_iter()
            .map(|r| IncomingEvent {
                seq: r.seq,
                webhook_id: r.webhook_id,
                body: r.body,
            })
            .collect();
        let mut tx = pool.begin().await?;
        let generation = match target {
            Target::Live => generation::lock_live(&mut tx).await?,
            Target::Generation(g) => g.clone(),
        };
        let outcome = apply(&mut tx, &generation, &events).await?;
        tx.commit().await?;
        last = end;
        events_applied += events.len() as u64;
        progress(
            Progress {
                seq: last,
                events: events_applied,
                elapsed: started.elapsed(),
            },
            &outcome,
        );
    }
    Ok(last)
}

/// The highest seq in the log, 0 when it is empty.
pub async fn log_head(pool: &PgPool) -> sqlx::Result<i64> {
    let head: Option<i64> = sqlx::query_scalar("select max(seq) from event_log")
        .fetch_one(pool)
        .await?;
    Ok(head.unwrap_or(0))
}
