//! The change feed (`GET /v1/changes`): per customer, what each consumer
//! batch changed and the entitlements it left, in commit order.
//!
//! Rows are written by the live consumer only, in the batch's transaction
//! and under [`FEED_LOCK_KEY`] held to commit: a cursor allocated under the
//! lock commits before any later one is allocated, so a reader that asks
//! for everything after the cursor it stored never misses or repeats a
//! change, across projector restarts and rebalances. A replay does not
//! replay old changes into the feed; a generation switch, and a backfill
//! from the log, write one `resync` row instead (readers re-read what they
//! care about). Rows older than `PROJECTOR_CHANGES_RETENTION` are deleted;
//! a cursor from before that is refused (410), never silently skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::projection::Generation;
use crate::projection::store::CustomerChange;

/// Transaction-level advisory lock serialising feed writes until commit.
const FEED_LOCK_KEY: i64 = 0x686f_6f6b_6665_6564; // "hookfeed"

/// Most items one page of the feed returns.
pub const MAX_PAGE: i64 = 1000;

/// Records one row per changed customer, with the entitlements the batch
/// left it (read from `generation` in the same transaction).
pub async fn record(
    tx: &mut PgConnection,
    generation: &Generation,
    changes: &BTreeMap<String, CustomerChange>,
) -> sqlx::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    lock(tx).await?;
    let customers: Vec<&str> = changes.keys().map(String::as_str).collect();
    let changed: Vec<String> = changes
        .values()
        .map(|c| c.tables.iter().copied().collect::<Vec<_>>().join(","))
        .collect();
    let members: Vec<String> = changes
        .values()
        .map(|c| c.members.iter().cloned().collect::<Vec<_>>().join(","))
        .collect();
    sqlx::query(&format!(
        "insert into projection_changes
             (kind, customer_id, external_id, member_ids, changed, granted_benefit_ids, active_subscriptions)
         select 'customer', u.customer_id, c.external_id,
                coalesce(string_to_array(nullif(u.members, ''), ','), '{{}}'),
                coalesce(string_to_array(nullif(u.changed, ''), ','), '{{}}'),
                coalesce((select array_agg(distinct g.benefit_id order by g.benefit_id)
                          from {grants} g where g.customer_id = u.customer_id), '{{}}'),
                coalesce((select jsonb_agg(jsonb_build_object(
                                     'id', s.subscription_id,
                                     'status', s.item -> 'status',
                                     'product_id', s.item -> 'product_id')
                                 order by s.created_at, s.subscription_id)
                          from {subscriptions} s where s.customer_id = u.customer_id), '[]')
         from unnest($1::text[], $2::text[], $3::text[]) with ordinality
             as u(customer_id, changed, members, n)
         left join {customers} c on c.id = u.customer_id
         order by u.n",
        grants = generation.qualify("effective_grants"),
        subscriptions = generation.qualify("effective_subscriptions"),
        customers = generation.qualify("customers"),
    ))
    .bind(&customers)
    .bind(&changed)
    .bind(&members)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Seconds from ingest's acceptance of event `seq` (its row in the log) to
/// now: for a batch's oldest event, how far behind ingest the feed is.
/// `None` when the event is not in the log (a topic fed by something else).
pub async fn lag_seconds(tx: &mut PgConnection, seq: i64) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar(
        "select greatest(extract(epoch from clock_timestamp() - received_at), 0)::float8
         from event_log where seq = $1",
    )
    .bind(seq)
    .fetch_optional(&mut *tx)
    .await
}

/// Records a `resync` row: many customers may have changed at once.
pub async fn record_resync(tx: &mut PgConnection, why: &str) -> sqlx::Result<()> {
    lock(tx).await?;
    sqlx::query("insert into projection_changes (kind, changed) values ('resync', array[$1])")
        .bind(why)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn lock(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(FEED_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// One item of the feed, as `GET /v1/changes` (and later the stream and the
/// push) sends it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Change {
    pub cursor: i64,
    pub kind: String,
    pub customer_id: Option<String>,
    pub external_id: Option<String>,
    pub member_ids: Vec<String>,
    pub changed_at: chrono::DateTime<chrono::Utc>,
    /// What the batch wrote about the customer: `customers`,
    /// `subscriptions`, `benefit_grants`, `members`, `customer_seats`,
    /// `state` (or, for `resync`, why).
    pub changed: Vec<String>,
    pub granted_benefit_ids: Vec<String>,
    pub active_subscriptions: sqlx::types::Json<serde_json::Value>,
}

/// Why a page cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Changes after the cursor were deleted by retention.
    #[error("changes after cursor {after} are gone (retention deleted through {pruned_through})")]
    Gone { after: i64, pruned_through: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Up to `limit` changes after `after`, oldest first.
pub async fn read(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<Change>, ReadError> {
    let pruned: Option<i64> = sqlx::query_scalar("select through from projection_changes_pruned")
        .fetch_optional(pool)
        .await?;
    if let Some(pruned_through) = pruned.filter(|&through| after < through) {
        return Err(ReadError::Gone {
            after,
            pruned_through,
        });
    }
    Ok(sqlx::query_as(
        "select cursor, kind, customer_id, external_id, member_ids, changed_at, changed,
                granted_benefit_ids, active_subscriptions
         from projection_changes where cursor > $1 order by cursor limit $2",
    )
    .bind(after)
    .bind(limit.clamp(1, MAX_PAGE))
    .fetch_all(pool)
    .await?)
}

/// Deletes changes older than `retention`, remembering the highest cursor
/// deleted. Returns how many were deleted.
pub async fn prune(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let (through, count): (Option<i64>, i64) = sqlx::query_as(
        "with gone as (
             delete from projection_changes
             where changed_at < now() - make_interval(secs => $1)
             returning cursor)
         select max(cursor), count(*) from gone",
    )
    .bind(retention.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    if let Some(through) = through {
        sqlx::query(
            "insert into projection_changes_pruned (singleton, through) values (true, $1)
             on conflict (singleton) do update
                 set through = greatest(projection_changes_pruned.through, excluded.through)",
        )
        .bind(through)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(count.max(0) as u64)
}
