//! Applying events from the log that did not come through Kafka:
//!
//! - events that failed, after a fix: the operator console's "re-apply" (a
//!   new projector version that decodes what an older one could not, or
//!   data corrected in Polar and sent again);
//! - events the relay parked because Kafka refuses their message itself
//!   ([`apply_parked`]): the log is the source of truth, so they reach the
//!   projections from it, and a replay of the log agrees with live.
//!
//! The events are read back from the log and go through the same
//! [`projection::apply`] as the consumer, into the live generation, in one
//! transaction with their failure rows: an event that fails again gets its
//! row back with the new reason, and one that applies is announced like any
//! consumer batch (cache notifications, change feed).

use sqlx::PgPool;

use hookstream_shared::event_log;

use crate::changes;
use crate::projection::{self, from_log, generation};

/// What a re-apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reapplied {
    /// Events that applied this time.
    pub applied: Vec<i64>,
    /// Events that failed again, with the reason now given.
    pub still_failing: Vec<(i64, String)>,
}

/// Which failures to re-apply.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    All,
    Seqs(&'a [i64]),
}

/// Re-applies the live generation's failed events (all, or those of `which`
/// that are failures; other seqs are left alone). `feed_on` says whether
/// the change feed is written.
pub async fn reapply_failures(
    pool: &PgPool,
    which: Which<'_>,
    feed_on: bool,
) -> anyhow::Result<Reapplied> {
    let mut tx = pool.begin().await?;
    let live = generation::lock_live(&mut tx).await?;
    let seqs: Option<Vec<i64>> = match which {
        Which::All => None,
        Which::Seqs(seqs) => Some(seqs.to_vec()),
    };
    let taken: Vec<i64> = sqlx::query_scalar(&format!(
        "delete from {} where $1::int8[] is null or seq = any($1) returning seq",
        live.qualify("apply_failures")
    ))
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    if taken.is_empty() {
        return Ok(Reapplied::default());
    }
    let events = from_log::events_at(&mut tx, &taken).await?;
    let outcome = projection::apply(&mut tx, &live, &events).await?;
    let still_failing: Vec<(i64, String)> = sqlx::query_as(&format!(
        "select seq, reason from {} where seq = any($1) order by seq",
        live.qualify("apply_failures")
    ))
    .bind(&taken)
    .fetch_all(&mut *tx)
    .await?;
    changes::announce(&mut tx, &live, &outcome, feed_on).await?;
    tx.commit().await?;
    let applied = taken
        .into_iter()
        .filter(|seq| !still_failing.iter().any(|(s, _)| s == seq))
        .collect();
    Ok(Reapplied {
        applied,
        still_failing,
    })
}

/// Parked events taken at a time.
const PARKED_AT_A_TIME: i64 = 500;

/// Applies the events the relay parked and no projector has applied yet,
/// from the log into the live generation, announced like a consumer batch,
/// in one transaction with marking them applied. Replicas skip what another
/// holds. Returns how many were applied (or recorded as failures).
pub async fn apply_parked(pool: &PgPool, feed_on: bool) -> anyhow::Result<usize> {
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        let seqs = event_log::take_unapplied_parked(&mut *tx, PARKED_AT_A_TIME).await?;
        if seqs.is_empty() {
            return Ok(applied);
        }
        let live = generation::lock_live(&mut tx).await?;
        let events = from_log::events_at(&mut tx, &seqs).await?;
        let outcome = projection::apply(&mut tx, &live, &events).await?;
        changes::announce(&mut tx, &live, &outcome, feed_on).await?;
        event_log::mark_parked_applied(&mut *tx, &seqs).await?;
        tx.commit().await?;
        tracing::info!(
            events = seqs.len(),
            failed = outcome.failed,
            "applied events the relay parked, from the log"
        );
        applied += seqs.len();
    }
}
