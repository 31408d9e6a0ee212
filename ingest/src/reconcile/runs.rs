//! The record of reconcile runs (`reconcile_runs`): one row a run.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Summary;

/// Records that a run starts; returns its id.
pub async fn start(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!("insert into reconcile_runs default values returning id")
        .fetch_one(pool)
        .await
}

/// Records how run `id` ended.
pub async fn finish(pool: &PgPool, id: i64, outcome: &Result<Summary, String>) -> sqlx::Result<()> {
    let (status, summary, error) = match outcome {
        Ok(summary) => ("ok", Some(summary_json(summary)), None),
        Err(error) => ("failed", None, Some(error.as_str())),
    };
    sqlx::query!(
        "update reconcile_runs set finished_at = now(), outcome = $2, summary = $3, error = $4
         where id = $1",
        id,
        status,
        summary,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// When the last successful run ended, if any did.
pub async fn last_success(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!("select max(finished_at) from reconcile_runs where outcome = 'ok'")
        .fetch_one(pool)
        .await
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "objects": s.objects(),
        "seen": s.seen,
        "appended": s.appended,
        "unchanged": s.unchanged,
        "removed": s.removed,
        "removed_by_kind": s.removed_by_kind,
        "members_per_customer": s.members_per_customer,
        "missed_by_pages": s.missed_by_pages,
        "deliveries": {
            "attempts": s.deliveries.attempts,
            "events": s.deliveries.events,
            "appended": s.deliveries.appended,
            "already_logged": s.deliveries.already_logged,
            "archived": s.deliveries.archived,
            "malformed": s.deliveries.malformed,
        },
        "requests": s.requests,
        "rate_limited": s.rate_limited,
        "retries": s.retries,
        "seconds": s.elapsed.as_secs_f64(),
    })
}
