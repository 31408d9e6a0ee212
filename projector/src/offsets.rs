//! The consumer's positions in Postgres (`projector_offsets`): per consumer
//! group, topic and partition, the next offset to apply, written in the same
//! transaction as the changes of the messages before it, with the audit of
//! exactly-once application beside it. Every read and write of the table is
//! here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

struct StoredOffset {
    partition: i32,
    next_offset: i64,
}

fn by_partition(rows: Vec<StoredOffset>) -> HashMap<i32, i64> {
    rows.into_iter()
        .map(|r| (r.partition, r.next_offset))
        .collect()
}

/// The stored next offsets of `partitions` (those never applied are absent).
pub async fn load(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<HashMap<i32, i64>> {
    let rows = sqlx::query_as!(
        StoredOffset,
        "select partition, next_offset from projector_offsets
         where consumer_group = $1 and topic = $2 and partition = any($3)",
        group,
        topic,
        partitions
    )
    .fetch_all(pool)
    .await?;
    Ok(by_partition(rows))
}

/// As [`load`], locking the rows until the transaction ends, so a batch
/// commits only from the positions it started at.
pub async fn lock(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<HashMap<i32, i64>> {
    let rows = sqlx::query_as!(
        StoredOffset,
        "select partition, next_offset from projector_offsets
                 where consumer_group = $1 and topic = $2 and partition = any($3)
                 for update",
        group,
        topic,
        partitions
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(by_partition(rows))
}

/// One partition's position as stored, for display.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredPosition {
    pub partition: i32,
    pub next_offset: i64,
    pub updated_at: DateTime<Utc>,
}

/// Every stored position of the group on the topic, by partition.
pub async fn all(
    executor: impl PgExecutor<'_>,
    group: &str,
    topic: &str,
) -> sqlx::Result<Vec<StoredPosition>> {
    sqlx::query_as!(
        StoredPosition,
        "select partition, next_offset, updated_at from projector_offsets
         where consumer_group = $1 and topic = $2 order by partition",
        group,
        topic
    )
    .fetch_all(executor)
    .await
}

/// What one batch applied of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub partition: i32,
    /// The offset after the batch's last message.
    pub next_offset: i64,
    /// The batch's first offset (the audit's start, if this is the first).
    pub first_offset: i64,
    /// Messages applied (the audit's count moves with the position).
    pub applied: i64,
}

/// Moves the positions on after a batch, in the batch's transaction.
pub async fn advance(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    advances: &[Advance],
) -> sqlx::Result<()> {
    let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
    let offsets: Vec<i64> = advances.iter().map(|a| a.next_offset).collect();
    let firsts: Vec<i64> = advances.iter().map(|a| a.first_offset).collect();
    let counts: Vec<i64> = advances.iter().map(|a| a.applied).collect();
    sqlx::query!(
        "insert into projector_offsets
                     (consumer_group, topic, partition, next_offset, first_offset, messages_applied)
                 select $1, $2, partition, next_offset, first_offset, applied
                 from unnest($3::int4[], $4::int8[], $5::int8[], $6::int8[])
                     as u(partition, next_offset, first_offset, applied)
                 on conflict (consumer_group, topic, partition)
                 do update set next_offset = excluded.next_offset,
                     messages_applied = projector_offsets.messages_applied + excluded.messages_applied,
                     updated_at = now()",
        group,
        topic,
        &partitions,
        &offsets,
        &firsts,
        &counts
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves a partition's stored position from `expected` to `restart` (its
/// audit starting over there), if it is still `expected`.
pub async fn restart(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    expected: i64,
    restart: i64,
) -> sqlx::Result<bool> {
    let moved = sqlx::query!(
        "update projector_offsets
         set next_offset = $5, first_offset = $5, messages_applied = 0, updated_at = now()
         where consumer_group = $1 and topic = $2 and partition = $3 and next_offset = $4",
        group,
        topic,
        partition,
        expected,
        restart
    )
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Messages of `topic` that the consumer group's stored positions passed
/// without applying them, from the audit columns of `projector_offsets`.
/// Always 0 unless Kafka lost messages before they were applied (a gap,
/// recovered from the event log instead). Partitions whose audit began before
/// the audit existed are left out.
pub async fn messages_passed_over(pool: &PgPool, topic: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select coalesce(sum(next_offset - first_offset - messages_applied), 0)::bigint as "passed_over!"
           from projector_offsets where topic = $1 and first_offset is not null"#,
        topic
    )
    .fetch_one(pool)
    .await
}
