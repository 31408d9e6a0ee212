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

pub use decode::IncomingEvent;
pub use generation::Generation;
pub use store::{BatchOutcome, Reduction};

/// Applies a batch inside the caller's transaction. If the database refuses
/// the batch because of its data, each event is applied on its own (under a
/// savepoint) and the ones still refused are recorded as failures, so one bad
/// event never stalls a partition.
pub async fn apply(
    tx: &mut PgConnection,
    generation: &Generation,
    events: &[IncomingEvent],
) -> sqlx::Result<BatchOutcome> {
    sqlx::query("savepoint apply_batch")
        .execute(&mut *tx)
        .await?;
    match store::apply_batch(tx, generation, events).await {
        Ok(outcome) => {
            sqlx::query("release savepoint apply_batch")
                .execute(&mut *tx)
                .await?;
            Ok(outcome)
        }
        Err(e) if is_caused_by_data(&e) => {
            tracing::warn!(error = %e, events = events.len(), "batch refused by the database; applying its events one by one");
            sqlx::query("rollback to savepoint apply_batch")
                .execute(&mut *tx)
                .await?;
            let mut total = BatchOutcome::default();
            for event in events {
                sqlx::query("savepoint apply_one").execute(&mut *tx).await?;
                match store::apply_batch(tx, generation, std::slice::from_ref(event)).await {
                    Ok(outcome) => {
                        sqlx::query("release savepoint apply_one")
                            .execute(&mut *tx)
                            .await?;
                        merge(&mut total, outcome);
                    }
                    Err(e) if is_caused_by_data(&e) => {
                        sqlx::query("rollback to savepoint apply_one")
                            .execute(&mut *tx)
                            .await?;
                        store::record_refusal(tx, generation, event, &e.to_string()).await?;
                        total.failed += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(total)
        }
        Err(e) => Err(e),
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

/// Data exceptions (class 22) and integrity violations (class 23) come from
/// what was written, not from the database's health.
pub fn is_caused_by_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}
