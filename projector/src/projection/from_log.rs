//! Applying the event log itself, in `seq` order: how replay and verify build a
//! generation, and how the consumer repairs a gap when Kafka has lost messages
//! it never applied (retention ran out while the projector was down).
//!
//! Applying events is idempotent and order-independent, so re-applying events
//! a generation already holds is harmless.
//!
//! Seqs are taken when ingest's transaction inserts, not when it commits, so a
//! reader walking the log by `seq` can pass a seq whose transaction is still
//! open and later commits. [`LogCursor`] therefore remembers every seq it
//! skipped and looks them up again ([`LogCursor::late_arrivals`]) before a
//! replay declares itself caught up.

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

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

/// A position in the log plus the seqs skipped on the way there, which may
/// yet turn up (their transactions had not committed when they were passed).
/// Rollbacks and duplicates also leave holes in the sequence; those stay empty
/// and cost one index probe per range when looked up again.
#[derive(Debug, Clone, Default)]
pub struct LogCursor {
    last: i64,
    /// Inclusive ranges of skipped seqs, ascending and disjoint.
    skipped: Vec<(i64, i64)>,
}

#[derive(sqlx::FromRow)]
struct LogRow {
    seq: i64,
    webhook_id: String,
    body: Vec<u8>,
}

impl From<LogRow> for IncomingEvent {
    fn from(row: LogRow) -> Self {
        IncomingEvent {
            seq: row.seq,
            webhook_id: row.webhook_id,
            body: row.body,
        }
    }
}

impl LogCursor {
    /// A cursor positioned after `after`, with nothing skipped.
    pub fn after(after: i64) -> Self {
        Self {
            last: after,
            skipped: Vec::new(),
        }
    }

    /// The highest seq read so far.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The next up to `limit` events after the cursor with `seq <= up_to`.
    pub async fn next_chunk(
        &mut self,
        connection: &mut PgConnection,
        up_to: i64,
        limit: usize,
    ) -> sqlx::Result<Vec<IncomingEvent>> {
        let rows: Vec<LogRow> = sqlx::query_as(
            "select seq, webhook_id, body from event_log
             where seq > $1 and seq <= $2 order by seq limit $3",
        )
        .bind(self.last)
        .bind(up_to)
        .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
        .fetch_all(&mut *connection)
        .await?;
        for row in &rows {
            if row.seq > self.last + 1 {
                self.skipped.push((self.last + 1, row.seq - 1));
            }
            self.last = row.seq;
        }
        Ok(rows.into_iter().map(IncomingEvent::from).collect())
    }

    /// Events that have committed since at seqs this cursor skipped. They stop
    /// being watched once found.
    pub async fn late_arrivals(
        &mut self,
        connection: &mut PgConnection,
    ) -> sqlx::Result<Vec<IncomingEvent>> {
        if self.skipped.is_empty() {
            return Ok(Vec::new());
        }
        let (lows, highs): (Vec<i64>, Vec<i64>) = self.skipped.iter().copied().unzip();
        let rows: Vec<LogRow> = sqlx::query_as(
            "select e.seq, e.webhook_id, e.body
             from unnest($1::bigint[], $2::bigint[]) as r(lo, hi)
             join event_log e on e.seq between r.lo and r.hi
             order by e.seq",
        )
        .bind(&lows)
        .bind(&highs)
        .fetch_all(&mut *connection)
        .await?;
        let found: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        self.skipped = remove_found(&self.skipped, &found);
        Ok(rows.into_iter().map(IncomingEvent::from).collect())
    }
}

/// The logged events with these seqs, in seq order.
pub async fn events_at(
    connection: &mut PgConnection,
    seqs: &[i64],
) -> sqlx::Result<Vec<IncomingEvent>> {
    let rows: Vec<LogRow> = sqlx::query_as(
        "select seq, webhook_id, body from event_log where seq = any($1) order by seq",
    )
    .bind(seqs)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().map(IncomingEvent::from).collect())
}

/// `ranges` without the (ascending) seqs in `found`.
fn remove_found(ranges: &[(i64, i64)], found: &[i64]) -> Vec<(i64, i64)> {
    let mut remaining = Vec::with_capacity(ranges.len());
    let mut found = found.iter().copied().peekable();
    for &(mut lo, hi) in ranges {
        while let Some(&seq) = found.peek() {
            if seq > hi {
                break;
            }
            found.next();
            if seq < lo {
                continue;
            }
            if seq > lo {
                remaining.push((lo, seq - 1));
            }
            lo = seq + 1;
        }
        if lo <= hi {
            remaining.push((lo, hi));
        }
    }
    remaining
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
    let mut cursor = LogCursor::after(after);
    let mut events_applied = 0u64;
    let mut reader = pool.acquire().await?;
    while cursor.last() < up_to && !stop.is_cancelled() {
        let events = cursor.next_chunk(&mut reader, up_to, chunk).await?;
        if events.is_empty() {
            break;
        }
        let outcome = apply_to(pool, target, &events).await?;
        events_applied += events.len() as u64;
        progress(
            Progress {
                seq: cursor.last(),
                events: events_applied,
                elapsed: started.elapsed(),
            },
            &outcome,
        );
    }
    Ok(cursor.last())
}

/// Applies one chunk in its own transaction.
pub async fn apply_to(
    pool: &PgPool,
    target: &Target,
    events: &[IncomingEvent],
) -> anyhow::Result<BatchOutcome> {
    let mut tx = pool.begin().await?;
    let generation = match target {
        Target::Live => generation::lock_live(&mut tx).await?,
        Target::Generation(g) => g.clone(),
    };
    let outcome = apply(&mut tx, &generation, events).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The highest seq in the log, 0 when it is empty.
pub async fn log_head(connection: &mut PgConnection) -> sqlx::Result<i64> {
    let head: Option<i64> = sqlx::query_scalar("select max(seq) from event_log")
        .fetch_one(connection)
        .await?;
    Ok(head.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::remove_found;

    #[test]
    fn found_seqs_split_and_shrink_the_skipped_ranges() {
        let ranges = [(2, 2), (5, 9), (12, 13)];
        assert_eq!(
            remove_found(&ranges, &[2, 5, 7, 9, 13]),
            vec![(6, 6), (8, 8), (12, 12)]
        );
        assert_eq!(remove_found(&ranges, &[]), ranges.to_vec());
        assert_eq!(remove_found(&ranges, &[1, 10, 14]), ranges.to_vec());
        assert!(remove_found(&[(4, 5)], &[4, 5]).is_empty());
    }
}
