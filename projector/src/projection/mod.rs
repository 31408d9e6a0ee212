//! Projections: the current state of every Polar object, built from events.
//!
//! - [`decode`] turns one event into versioned row changes.
//! - [`version`] orders versions, which is what makes apply order-independent.
//! - [`store`] writes a batch into a generation.
//! - [`generation`] creates, switches and drops generations (schemas).
//! - [`from_log`] applies the event log itself (replay, gap repair).
//! - [`dump`] dumps a generation canonically, to compare two.
//!
//! The live consumer and replay both go through [`apply`], so a replay builds
//! exactly what the consumer built.

pub mod decode;
pub mod dump;
pub mod families;
pub mod from_log;
pub mod generation;
pub mod store;
pub mod version;

use sqlx::PgConnection;

use hookstream_shared::db::is_transient;

pub use decode::IncomingEvent;
pub use generation::Generation;
pub use store::{BatchOutcome, Reduction};

/// How often an event is applied alone before a refusal counts as its own:
/// a refusal that is not [transient](is_transient) repeats, but one try is
/// no proof, so it is given a few.
pub const TRIES_ALONE: u32 = 3;

/// Applies a batch inside the caller's transaction.
///
/// If the database refuses the batch for any reason that is not
/// [transient](is_transient) (a lost connection, a serialization failure or
/// deadlock, a shutdown, an unavailable database: those fail the call, and
/// the caller retries the batch), each event is applied on its own under a
/// savepoint, up to [`TRIES_ALONE`] times; an event still refused is
/// recorded in `apply_failures` with the database's reason and passed over,
/// so no single event can stall a partition. The decoder refuses everything
/// the database is known to refuse (see `decode`), so this is the net under
/// it, not the first line.
pub async fn apply(
    tx: &mut PgConnection,
    generation: &Generation,
    events: &[IncomingEvent],
) -> sqlx::Result<BatchOutcome> {
    let batch_error = match apply_under_savepoint(tx, generation, events).await? {
        Ok(outcome) => return Ok(outcome),
        Err(refusal) => refusal,
    };
    tracing::warn!(
        error = %batch_error,
        events = events.len(),
        "batch refused by the database; applying its events one by one"
    );
    let mut total = BatchOutcome::default();
    for event in events {
        let mut refusal = None;
        for _ in 0..TRIES_ALONE {
            match apply_under_savepoint(tx, generation, std::slice::from_ref(event)).await? {
                Ok(outcome) => {
                    merge(&mut total, outcome);
                    refusal = None;
                    break;
                }
                Err(e) => refusal = Some(e),
            }
        }
        if let Some(e) = refusal {
            tracing::warn!(
                seq = event.seq,
                webhook_id = %event.webhook_id,
                error = %e,
                "the database refused an event {TRIES_ALONE} times on its own; recorded as an apply failure"
            );
            store::record_refusal(tx, generation, event, &e.to_string()).await?;
            total.failed += 1;
        }
    }
    Ok(total)
}

/// Applies `events` under a savepoint. A transient error fails the call (the
/// caller rolls the transaction back and retries); any other refusal is
/// rolled back to the savepoint and returned, the transaction still usable.
async fn apply_under_savepoint(
    tx: &mut PgConnection,
    generation: &Generation,
    events: &[IncomingEvent],
) -> sqlx::Result<Result<BatchOutcome, sqlx::Error>> {
    sqlx::query("savepoint apply_events")
        .execute(&mut *tx)
        .await?;
    match store::apply_batch(tx, generation, events).await {
        Ok(outcome) => {
            sqlx::query("release savepoint apply_events")
                .execute(&mut *tx)
                .await?;
            Ok(Ok(outcome))
        }
        Err(e) if is_transient(&e) => Err(e),
        Err(refusal) => {
            // Rolled back to, a savepoint stays; released, it does not pile up.
            for statement in [
                "rollback to savepoint apply_events",
                "release savepoint apply_events",
            ] {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            Ok(Err(refusal))
        }
    }
}

fn merge(total: &mut BatchOutcome, outcome: BatchOutcome) {
    for (k, v) in outcome.applied {
        *total.applied.entry(k).or_default() += v;
    }
    for (k, v) in outcome.ignored {
        *total.ignored.entry(k).or_default() += v;
    }
    total.failed += outcome.failed;
    total.changed_customers.extend(outcome.changed_customers);
    total
        .changed_external_ids
        .extend(outcome.changed_external_ids);
    for (customer, change) in outcome.customer_changes {
        let into = total.customer_changes.entry(customer).or_default();
        into.tables.extend(change.tables);
        into.members.extend(change.members);
    }
}
