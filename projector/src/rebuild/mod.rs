//! Rebuilding projections from the source of truth.
//!
//! - [`replay`] builds a new generation from the event log (or from what the
//!   topic still holds, [`from_kafka`]) beside the live one, catches up, and
//!   switches readers and the consumer to it atomically.
//! - [`verify`] builds a scratch generation from the log and compares it row
//!   by row with the live one.
//!
//! Both take [`RebuildLock`], so one runs at a time, and both start by
//! dropping generations an earlier, killed run left half-built.

pub mod from_kafka;
pub mod progress;
pub mod replay;
pub mod verify;

use std::collections::BTreeSet;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::projection::from_log::LogCursor;
use crate::projection::generation::{self, Generation};
use crate::projection::{Effective, IncomingEvent, apply_with, store};
use progress::ProgressReport;

/// Session advisory lock held for a whole replay or verify.
const REBUILD_LOCK_KEY: i64 = 0x686f_6f6b_7265_706c; // "hookrepl"

/// Events applied per transaction while building. Large chunks amortise the
/// per-transaction cost; a replay's generation has no readers to wait on it.
pub const DEFAULT_CHUNK: usize = 10_000;

/// Proof that this process is the only one rebuilding. Holds its own
/// connection (not a pooled one, which would keep the lock after release).
#[derive(Debug)]
pub struct RebuildLock {
    connection: PgConnection,
}

impl RebuildLock {
    /// Takes the lock, or says who holds it.
    pub async fn acquire(pool: &PgPool) -> anyhow::Result<Self> {
        let mut connection = PgConnection::connect_with(&pool.connect_options())
            .await
            .context("cannot open a connection for the rebuild lock")?;
        let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(REBUILD_LOCK_KEY)
            .fetch_one(&mut connection)
            .await?;
        anyhow::ensure!(
            acquired,
            "another `projector replay` or `projector verify` is running against this database"
        );
        Ok(Self { connection })
    }

    pub async fn release(self) -> anyhow::Result<()> {
        // Closing the session releases the lock.
        self.connection.close().await?;
        Ok(())
    }
}

/// Drops generations still `building`: only a rebuild makes them, and the
/// caller holds the rebuild lock, so they were left by one that was killed.
pub async fn drop_abandoned(pool: &PgPool, _lock: &RebuildLock) -> anyhow::Result<Vec<String>> {
    let abandoned: Vec<String> = sqlx::query_scalar(
        "select name from projection_generations where status = 'building' order by name",
    )
    .fetch_all(pool)
    .await?;
    for name in &abandoned {
        let generation = Generation::parse(name)?;
        generation::drop_generation(pool, &generation).await?;
        tracing::info!(%generation, "dropped a generation an interrupted rebuild left behind");
    }
    Ok(abandoned)
}

/// Number of events in the log, for the progress bar's length.
pub async fn log_size(pool: &PgPool) -> sqlx::Result<u64> {
    let count: i64 = sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Customers whose effective subscriptions and grants a fill left stale:
/// building applies chunks with [`Effective::Defer`] and recomputes each
/// customer once at the end ([`StaleCustomers::recompute`]), not once per
/// chunk it appears in.
#[derive(Debug, Default)]
pub struct StaleCustomers(BTreeSet<String>);

/// Customers recomputed per transaction.
const RECOMPUTE_CHUNK: usize = 2000;

impl StaleCustomers {
    /// Applies a chunk into `generation` in its own transaction, deferring
    /// the effective rows.
    pub async fn apply(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        events: &[IncomingEvent],
    ) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        let outcome = apply_with(&mut tx, generation, events, Effective::Defer).await?;
        tx.commit().await?;
        self.0.extend(outcome.changed_customers);
        Ok(())
    }

    /// Brings every stale customer's effective rows up to date.
    pub async fn recompute(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        progress: &ProgressReport,
    ) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        progress.step(&format!(
            "computing the effective subscriptions and grants of {} customers",
            self.0.len()
        ));
        let customers: Vec<String> = std::mem::take(&mut self.0).into_iter().collect();
        for chunk in customers.chunks(RECOMPUTE_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let mut tx = pool.begin().await?;
            store::recompute_effective(&mut tx, generation, &ids).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Applies the log from `cursor` up to `up_to` into `generation`, one chunk
/// per transaction, reading the next chunk while the current one is applied.
/// Returns the events applied; stops between chunks when `stop` fires (the
/// generation is then incomplete and must be dropped).
#[allow(clippy::too_many_arguments)]
pub async fn fill_from_log(
    pool: &PgPool,
    generation: &Generation,
    cursor: &mut LogCursor,
    up_to: i64,
    chunk: usize,
    stop: &CancellationToken,
    stale: &mut StaleCustomers,
    progress: &mut ProgressReport,
) -> anyhow::Result<u64> {
    let mut applied = 0u64;
    let mut reader = pool.acquire().await?;
    let mut current = cursor.next_chunk(&mut reader, up_to, chunk).await?;
    while !current.is_empty() && !stop.is_cancelled() {
        let (outcome, next) = tokio::join!(
            stale.apply(pool, generation, &current),
            cursor.next_chunk(&mut reader, up_to, chunk)
        );
        outcome?;
        applied += current.len() as u64;
        progress.advance(current.len() as u64);
        current = next?;
    }
    Ok(applied)
}
