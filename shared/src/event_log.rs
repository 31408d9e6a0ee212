//! The event log: one append-only Postgres table that is the source of truth.
//!
//! Ingest appends verified webhooks in batches ([`append_batch`]), which also
//! queues each new row in `event_log_outbox`; the relay publishes what is
//! queued ([`next_unpublished`]) and dequeues it once Kafka has acknowledged
//! ([`mark_published`]); the projector's replay reads everything back in
//! `seq` order. Deduplication lives in the schema: a unique constraint on
//! `(source, webhook_id)`, never an in-memory set.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// A verified event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The configured source it came in on, e.g. `polar`.
    pub source: String,
    /// The `webhook-id` header: the same on every retry of one event.
    pub webhook_id: String,
    pub event_type: String,
    pub partition_key: String,
    pub occurred_at: DateTime<Utc>,
    /// The body exactly as received and signed.
    pub body: bytes::Bytes,
    /// The API version the payload is written in: the `webhook-api-version`
    /// header of a webhook, else the body's `api_version`.
    pub api_version: Option<String>,
}

impl NewEvent {
    /// The row for a webhook whose envelope has been parsed. The partition
    /// key falls back to the webhook id when the event names no customer or
    /// object (DESIGN.md "Kafka message").
    pub fn from_envelope(
        source: &str,
        webhook_id: &str,
        envelope: crate::envelope::Envelope,
        body: bytes::Bytes,
    ) -> Self {
        Self {
            source: source.to_owned(),
            webhook_id: webhook_id.to_owned(),
            event_type: envelope.event_type,
            partition_key: envelope
                .partition_key
                .unwrap_or_else(|| webhook_id.to_owned()),
            occurred_at: envelope.occurred_at,
            body,
            api_version: envelope.api_version,
        }
    }
}

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new row was written with this sequence number.
    New { seq: i64 },
    /// The `(source, webhook_id)` was already in the log (or earlier in the same
    /// batch) under this sequence number; nothing was written. `same_body`
    /// says whether this copy's body is the one logged: a retry always is,
    /// so a different body under a logged id means someone else signed it
    /// (a leaked secret) or a sender reuses ids.
    Duplicate { seq: i64, same_body: bool },
}

impl Appended {
    pub fn seq(self) -> i64 {
        match self {
            Self::New { seq } | Self::Duplicate { seq, .. } => seq,
        }
    }
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: i64,
    pub source: String,
    pub webhook_id: String,
    pub event_type: String,
    pub partition_key: String,
    pub occurred_at: DateTime<Utc>,
    pub body: Vec<u8>,
}

/// Appends a batch in one multi-row insert, which is one commit. Copies of one
/// `(source, webhook_id)` within the batch, or already in the log, or being
/// inserted by a concurrent batch, all resolve to the one row that wins.
///
/// Returns one outcome per input event, in input order.
pub async fn append_batch(pool: &PgPool, events: &[NewEvent]) -> sqlx::Result<Vec<Appended>> {
    // First occurrence of each key in the batch; later copies point at it.
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::with_capacity(events.len());
    let mut unique: Vec<usize> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        first_of
            .entry((e.source.as_str(), e.webhook_id.as_str()))
            .or_insert_with(|| {
                unique.push(i);
                i
            });
    }

    let column =
        |f: fn(&NewEvent) -> &str| -> Vec<&str> { unique.iter().map(|&i| f(&events[i])).collect() };
    let sources = column(|e| &e.source);
    let webhook_ids = column(|e| &e.webhook_id);
    let event_types = column(|e| &e.event_type);
    let keys = column(|e| &e.partition_key);
    let occurred: Vec<DateTime<Utc>> = unique.iter().map(|&i| events[i].occurred_at).collect();
    let bodies: Vec<&[u8]> = unique.iter().map(|&i| &events[i].body[..]).collect();
    let api_versions: Vec<Option<&str>> = unique
        .iter()
        .map(|&i| events[i].api_version.as_deref())
        .collect();

    // ON CONFLICT DO NOTHING waits for a concurrent uncommitted insert of the
    // same key and then skips it, so racing batches never both win.
    // One statement appends the new rows and queues them for the relay, so
    // the two can never disagree.
    let inserted = sqlx::query!(
        r#"
        with appended as (
            insert into event_log (source, webhook_id, event_type, partition_key, occurred_at, body, api_version)
            select source, webhook_id, event_type, partition_key, occurred_at, body, api_version
            from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bytea[], $7::text[])
                with ordinality as batch(source, webhook_id, event_type, partition_key, occurred_at, body, api_version, position)
            order by position
            on conflict (source, webhook_id) do nothing
            returning seq, source, webhook_id
        ), queued as (
            insert into event_log_outbox (seq) select seq from appended
        )
        select seq as "seq!", source as "source!", webhook_id as "webhook_id!" from appended
        "#,
        &sources as &[&str],
        &webhook_ids as &[&str],
        &event_types as &[&str],
        &keys as &[&str],
        &occurred,
        &bodies as &[&[u8]],
        &api_versions as &[Option<&str>],
    )
    .fetch_all(pool)
    .await?;

    let mut seq_of: HashMap<(&str, &str), Appended> = HashMap::with_capacity(events.len());
    for row in &inserted {
        // Borrow the key from the input, not the row, to keep one lifetime.
        if let Some(&i) = first_of.get(&(row.source.as_str(), row.webhook_id.as_str())) {
            let e = &events[i];
            seq_of.insert(
                (e.source.as_str(), e.webhook_id.as_str()),
                Appended::New { seq: row.seq },
            );
        }
    }

    if seq_of.len() < unique.len() {
        // Some were already there. A fresh statement sees rows that concurrent
        // batches committed while our insert waited on them. Their bodies are
        // compared where they lie, not sent back.
        let missing: Vec<usize> = unique
            .iter()
            .copied()
            .filter(|&i| {
                !seq_of.contains_key(&(events[i].source.as_str(), events[i].webhook_id.as_str()))
            })
            .collect();
        let m_sources: Vec<&str> = missing.iter().map(|&i| events[i].source.as_str()).collect();
        let m_ids: Vec<&str> = missing
            .iter()
            .map(|&i| events[i].webhook_id.as_str())
            .collect();
        let m_bodies: Vec<&[u8]> = missing.iter().map(|&i| &events[i].body[..]).collect();
        let existing = sqlx::query!(
            r#"
            select l.seq, l.source, l.webhook_id, l.body = wanted.body as "same_body!"
            from event_log l
            join unnest($1::text[], $2::text[], $3::bytea[]) as wanted(source, webhook_id, body)
              on l.source = wanted.source and l.webhook_id = wanted.webhook_id
            "#,
            &m_sources as &[&str],
            &m_ids as &[&str],
            &m_bodies as &[&[u8]],
        )
        .fetch_all(pool)
        .await?;
        for row in &existing {
            if let Some(&i) = first_of.get(&(row.source.as_str(), row.webhook_id.as_str())) {
                let e = &events[i];
                seq_of.insert(
                    (e.source.as_str(), e.webhook_id.as_str()),
                    Appended::Duplicate {
                        seq: row.seq,
                        same_body: row.same_body,
                    },
                );
            }
        }
    }

    let outcomes = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let key = (e.source.as_str(), e.webhook_id.as_str());
            let outcome = seq_of.get(&key).copied().ok_or_else(|| {
                // Only possible if a row vanished between the two statements,
                // which an append-only table does not allow.
                sqlx::Error::Protocol(format!(
                    "event_log row for webhook-id {} neither inserted nor found",
                    e.webhook_id
                ))
            })?;
            let first = first_of[&key];
            if first == i {
                return Ok(outcome);
            }
            // A later copy in the batch: the logged body is the first copy's
            // (inserted now) or the one the first copy was compared with.
            let same_as_first = e.body == events[first].body;
            Ok(match outcome {
                Appended::New { seq } => Appended::Duplicate {
                    seq,
                    same_body: same_as_first,
                },
                Appended::Duplicate { seq, same_body } => Appended::Duplicate {
                    seq,
                    same_body: same_body && same_as_first,
                },
            })
        })
        .collect::<sqlx::Result<Vec<Appended>>>()?;
    let duplicates: Vec<i64> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Appended::Duplicate { seq, .. } => Some(*seq),
            Appended::New { .. } => None,
        })
        .collect();
    if !duplicates.is_empty() {
        record_duplicates(pool, &duplicates).await?;
    }
    Ok(outcomes)
}

/// Counts deliveries answered as duplicates, once per copy (`seqs` may name
/// one event more than once). Only the duplicate path pays for it.
async fn record_duplicates(pool: &PgPool, seqs: &[i64]) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into event_log_duplicates (seq, copies, last_received_at)
         select seq, count(*), now() from unnest($1::int8[]) as d(seq) group by seq
         on conflict (seq) do update
         set copies = event_log_duplicates.copies + excluded.copies,
             last_received_at = excluded.last_received_at",
        seqs
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The oldest queued (unpublished) rows received before `received_before`,
/// in `seq` order, at most `limit`.
///
/// Rows committed out of `seq` order (a slow transaction holding a low seq) are
/// found on a later call because the query asks for everything queued, not
/// for rows after a cursor.
pub async fn next_unpublished(
    executor: impl PgExecutor<'_>,
    limit: i64,
    received_before: DateTime<Utc>,
) -> sqlx::Result<Vec<LoggedEvent>> {
    sqlx::query_as!(
        LoggedEvent,
        r#"
        select l.seq, l.source, l.webhook_id, l.event_type, l.partition_key, l.occurred_at, l.body
        from event_log_outbox o
        join event_log l on l.seq = o.seq
        where l.received_at < $2
        order by o.seq
        limit $1
        "#,
        limit,
        received_before
    )
    .fetch_all(executor)
    .await
}

/// Dequeues rows after Kafka has acknowledged them.
pub async fn mark_published(executor: impl PgExecutor<'_>, seqs: &[i64]) -> sqlx::Result<u64> {
    let done = sqlx::query!("delete from event_log_outbox where seq = any($1)", seqs)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Moves events Kafka can never take as they are out of the outbox, with
/// Kafka's reason, so the relay stops retrying them; a projector then
/// applies them from the log ([`take_unapplied_parked`]).
pub async fn park(executor: impl PgExecutor<'_>, parked: &[(i64, String)]) -> sqlx::Result<u64> {
    let seqs: Vec<i64> = parked.iter().map(|(seq, _)| *seq).collect();
    let reasons: Vec<&str> = parked.iter().map(|(_, reason)| reason.as_str()).collect();
    let moved = sqlx::query!(
        "with dequeued as (delete from event_log_outbox where seq = any($1) returning seq)
         insert into event_log_parked (seq, reason)
         select d.seq, r.reason
         from dequeued d join unnest($1::int8[], $2::text[]) as r(seq, reason) on r.seq = d.seq
         on conflict (seq) do nothing",
        &seqs,
        &reasons as &[&str],
    )
    .execute(executor)
    .await?;
    Ok(moved.rows_affected())
}

/// Up to `limit` parked events no projector has applied yet, locked for the
/// caller's transaction (others skip them), in `seq` order.
pub async fn take_unapplied_parked(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        "select seq from event_log_parked where applied_at is null
         order by seq limit $1 for update skip locked",
        limit
    )
    .fetch_all(executor)
    .await
}

/// Every parked event's seq, applied or not: what a replay from Kafka must
/// take from the log.
pub async fn parked_seqs(executor: impl PgExecutor<'_>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!("select seq from event_log_parked order by seq")
        .fetch_all(executor)
        .await
}

/// Marks parked events applied from the log.
pub async fn mark_parked_applied(executor: impl PgExecutor<'_>, seqs: &[i64]) -> sqlx::Result<()> {
    sqlx::query!(
        "update event_log_parked set applied_at = now() where seq = any($1)",
        seqs
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// A parked event, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    pub seq: i64,
    pub webhook_id: String,
    pub event_type: String,
    pub reason: String,
    pub parked_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// The most recently parked events, newest first, at most `limit`.
pub async fn parked(executor: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<ParkedEvent>> {
    sqlx::query_as!(
        ParkedEvent,
        "select p.seq, l.webhook_id, l.event_type, p.reason, p.parked_at, p.applied_at
         from event_log_parked p join event_log l on l.seq = p.seq
         order by p.seq desc limit $1",
        limit
    )
    .fetch_all(executor)
    .await
}

/// How far the relay is behind: unpublished rows and the age of the oldest;
/// and what it parked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub unpublished: i64,
    pub oldest_received_at: Option<DateTime<Utc>>,
    /// Events parked (Kafka refuses their message), all told.
    pub parked: i64,
    /// Of those, the ones no projector has applied from the log yet.
    pub parked_unapplied: i64,
}

pub async fn backlog(executor: impl PgExecutor<'_>) -> sqlx::Result<Backlog> {
    let row = sqlx::query!(
        r#"
        select count(*) as "unpublished!", min(l.received_at) as oldest,
               (select count(*) from event_log_parked) as "parked!",
               (select count(*) from event_log_parked where applied_at is null) as "parked_unapplied!"
        from event_log_outbox o
        join event_log l on l.seq = o.seq
        "#
    )
    .fetch_one(executor)
    .await?;
    Ok(Backlog {
        unpublished: row.unpublished,
        oldest_received_at: row.oldest,
        parked: row.parked,
        parked_unapplied: row.parked_unapplied,
    })
}
