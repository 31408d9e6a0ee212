//! What the live consumer applied, kept for the operator console: where each
//! event was found in Kafka (topic, partition, offset), how many events were
//! applied when, and the event types it did not know.
//!
//! Written in each batch's own transaction, so what is recorded here was
//! applied. One row per partition per batch keeps the cost to one statement
//! a batch.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::metrics::is_known_event_type;
use crate::projection::IncomingEvent;

/// One applied message: its partition, offset and the event's log seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub partition: i32,
    pub offset: i64,
    pub seq: i64,
}

/// Records where a batch's events were, grouped by partition.
pub async fn record_placements(
    tx: &mut PgConnection,
    topic: &str,
    placements: &[Placement],
) -> sqlx::Result<()> {
    if placements.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = placements.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = placements.iter().map(|p| p.offset).collect();
    let seqs: Vec<i64> = placements.iter().map(|p| p.seq).collect();
    sqlx::query!(
        "insert into projector_applied_messages (topic, partition, offsets, seqs, seq_span)
         select $1, partition, array_agg(message_offset order by message_offset),
                array_agg(seq order by message_offset), int8range(min(seq), max(seq), '[]')
         from unnest($2::int4[], $3::int8[], $4::int8[]) as m(partition, message_offset, seq)
         group by partition",
        topic,
        &partitions,
        &offsets,
        &seqs
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records the events of types hookstream does not know. `ignored` is the
/// batch outcome's ignored types; only when one of them is unknown are the
/// events' envelopes read again to find which seqs they were.
pub async fn record_unknown_types<'a>(
    tx: &mut PgConnection,
    ignored: impl IntoIterator<Item = &'a String>,
    events: &[IncomingEvent],
) -> sqlx::Result<()> {
    let unknown: BTreeSet<&str> = ignored
        .into_iter()
        .map(String::as_str)
        .filter(|t| !is_known_event_type(t))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut types = Vec::new();
    let mut seqs = Vec::new();
    for event in events {
        if let Ok(envelope) = hookstream_shared::envelope::parse(&event.body)
            && unknown.contains(envelope.event_type.as_str())
        {
            types.push(envelope.event_type);
            seqs.push(event.seq);
        }
    }
    sqlx::query!(
        "insert into projector_unknown_event_types (event_type, events, first_seq, last_seq)
         select event_type, count(*), min(seq), max(seq)
         from unnest($1::text[], $2::int8[]) as u(event_type, seq) group by event_type
         on conflict (event_type) do update
         set events = projector_unknown_event_types.events + excluded.events,
             first_seq = least(projector_unknown_event_types.first_seq, excluded.first_seq),
             last_seq = greatest(projector_unknown_event_types.last_seq, excluded.last_seq),
             last_seen_at = now()",
        &types,
        &seqs
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Where the live consumer found an event, if it applied it from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub applied_at: DateTime<Utc>,
}

pub async fn location(pool: &PgPool, seq: i64) -> sqlx::Result<Option<Location>> {
    let row = sqlx::query!(
        r#"select topic, partition, applied_at,
                  offsets[array_position(seqs, $1)] as "offset!"
           from projector_applied_messages
           where seq_span @> $1 and $1 = any(seqs)
           order by id desc limit 1"#,
        seq
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Location {
        topic: r.topic,
        partition: r.partition,
        offset: r.offset,
        applied_at: r.applied_at,
    }))
}

/// Deletes placements older than `retention` (with the change feed's).
pub async fn prune(pool: &PgPool, retention: std::time::Duration) -> sqlx::Result<u64> {
    let seconds = retention.as_secs_f64();
    let deleted = sqlx::query!(
        "delete from projector_applied_messages
         where applied_at < now() - make_interval(secs => $1)",
        seconds
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
