//! What logged events did to the live projection: the rows each one wrote
//! (its own object, the snapshots embedded in it, a customer's state) and,
//! for each, whether the row still holds that event's version or a newer
//! event's. Decoded with the projector's own decoder, so the answer is the
//! one the consumer acted on.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgPool;

use crate::projection::IncomingEvent;
use crate::projection::decode::{self, Decoded};

/// A row an event wrote (or tried to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub table: &'static str,
    pub id: String,
    pub standing: Standing,
}

/// Whether the row holds the event's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The row is this event's version.
    Current,
    /// A newer version won; it came from this seq.
    SupersededBy(i64),
    /// No such row (only possible if the event was not applied yet).
    Absent,
}

/// What one event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the first row is the event's own object (or the state).
    Applied(Vec<Touched>),
    /// A type no projection uses.
    Ignored,
    /// Recorded in the apply failures, with the reason.
    Failed(String),
}

impl Outcome {
    /// The event's own row, when it has one.
    pub fn primary(&self) -> Option<&Touched> {
        match self {
            Self::Applied(rows) => rows.first(),
            _ => None,
        }
    }
}

/// The outcome of each event, by seq.
pub async fn outcomes(
    pool: &PgPool,
    events: &[IncomingEvent],
) -> sqlx::Result<HashMap<i64, Outcome>> {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let failures: HashMap<i64, String> =
        sqlx::query_as("select seq, reason from projection.apply_failures where seq = any($1)")
            .bind(&seqs)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    // (table, id) of every row each event wrote, in the event's order.
    let mut wrote: Vec<(i64, Vec<(&'static str, String)>)> = Vec::new();
    let mut outcomes = HashMap::with_capacity(events.len());
    for event in events {
        if let Some(reason) = failures.get(&event.seq) {
            outcomes.insert(event.seq, Outcome::Failed(reason.clone()));
            continue;
        }
        match decode::decode(event) {
            Ok(Decoded::Apply { changes, .. }) => {
                let mut rows = Vec::new();
                if let Some(state) = &changes.state {
                    rows.push(("customer_states", state.customer_id.to_string()));
                }
                // The event's own object first, then what it embeds.
                let mut objects: Vec<_> = changes.objects.iter().collect();
                objects.sort_by_key(|o| std::cmp::Reverse(o.version.rank));
                for object in objects {
                    let row = (object.table.name(), object.id.to_string());
                    if !rows.contains(&row) {
                        rows.push(row);
                    }
                }
                wrote.push((event.seq, rows));
            }
            Ok(Decoded::Ignored { .. }) => {
                outcomes.insert(event.seq, Outcome::Ignored);
            }
            // Failed to decode but not recorded: a failure re-applied since
            // with a newer projector, or one from before this generation.
            Err(e) => {
                outcomes.insert(event.seq, Outcome::Failed(e.reason));
            }
        }
    }
    let versions = current_versions(pool, wrote.iter().flat_map(|(_, rows)| rows)).await?;
    for (seq, rows) in wrote {
        let touched = rows
            .into_iter()
            .map(|(table, id)| {
                let standing = match versions.get(&(table, id.clone())) {
                    Some(&v) if v == seq => Standing::Current,
                    Some(&v) => Standing::SupersededBy(v),
                    None => Standing::Absent,
                };
                Touched {
                    table,
                    id,
                    standing,
                }
            })
            .collect();
        outcomes.insert(seq, Outcome::Applied(touched));
    }
    Ok(outcomes)
}

/// The seq each row's current version came from, one query per table.
async fn current_versions<'a>(
    pool: &PgPool,
    rows: impl Iterator<Item = &'a (&'static str, String)>,
) -> sqlx::Result<HashMap<(&'static str, String), i64>> {
    let mut by_table: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
    for (table, id) in rows {
        by_table.entry(table).or_default().push(id);
    }
    let mut versions = HashMap::new();
    for (table, mut ids) in by_table {
        ids.sort_unstable();
        ids.dedup();
        let key = if table == "customer_states" {
            "customer_id"
        } else {
            "id"
        };
        // Table names come from the projector's own declarations.
        let found: Vec<(String, i64)> = sqlx::query_as(&format!(
            "select {key}, v_seq from projection.{table} where {key} = any($1)"
        ))
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        versions.extend(found.into_iter().map(|(id, v)| ((table, id), v)));
    }
    Ok(versions)
}
