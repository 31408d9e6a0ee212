//! Rebuilding projections from the source of truth.
//!
//! - [`replay`] builds a new generation from the event log (or from what the
//!   topic still holds, [`from_kafka`]) beside the live one, catches up, and
//!   switches readers and the consumer to it atomically.
//! - [`verify`] builds a scratch generation from the log and compares it row
//!   by row with the live one.
//!
//! - [`reapply`] applies failed events again into the live generation.
//!
//! Replay and verify take [`RebuildLock`], so one runs at a time, and both start by
//! dropping generations an earlier, killed run left half-built.

pub mod from_kafka;
/// Kept here for the rebuild commands' callers; the reporter lives in `shared`.
pub use hookstream_shared::progress;
pub mod reapply;
pub mod replay;
pub mod verify;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::projection::decode::{ObjectChange, StateChange};
use crate::projection::from_log::LogCursor;
use crate::projection::generation::{self, Generation};
use crate::projection::store::{self, Whose};
use crate::projection::{self, BatchOutcome, IncomingEvent, Reduction};
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

/// Filling a generation that has no readers yet, which allows what a live
/// generation cannot: events are reduced in memory across chunks
/// ([`Reduction`]) and written when the reduction holds half of
/// `memory_budget` bytes of snapshots (in the background, on several
/// connections, while the other half fills) or at the end, so an object is
/// written once per half-budget of log rather than once per chunk it
/// appears in; and the effective subscriptions and grants are computed once,
/// for everyone, at the end ([`GenerationFill::finish`]).
///
/// The fill must be the generation's only writer until `finish` returns;
/// until then the generation is incomplete.
#[derive(Debug)]
pub struct GenerationFill {
    reduction: Reduction<'static>,
    memory_budget: usize,
    /// The write of the previous half of the budget, running while the
    /// reduction fills again. At most one: memory stays within the budget.
    writing: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Connections a fill writes on at once: Postgres parses and compresses the
/// snapshots, and one connection keeps one of its processes busy.
const WRITE_CONNECTIONS: usize = 2;

/// Snapshot bytes a fill holds at most, unless told otherwise. Once writes
/// run beside the reading, a bigger budget (fewer writes of one object)
/// stopped paying: a million-event replay took 48–53 s with any budget from
/// 0 to 1 GiB, and peaked at 278 MiB resident with 0, 375 MiB with 64 MiB,
/// 1.6 GiB with 1 GiB (BENCHMARKS.md).
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

impl GenerationFill {
    pub fn new(memory_budget: usize) -> Self {
        Self {
            reduction: Reduction::default(),
            memory_budget,
            writing: None,
        }
    }

    /// Adds a chunk of events. Once the reduction holds half the memory
    /// budget, it is written into `generation` in the background (after the
    /// previous write has finished) while a new one fills.
    pub async fn apply(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        events: &[IncomingEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            self.reduction
                .add(event, ObjectChange::into_owned, StateChange::into_owned);
        }
        if self.reduction.held_bytes() > self.memory_budget / 2 {
            self.wait_for_write().await?;
            tracing::debug!(
                rows = self.reduction.held_rows(),
                snapshot_bytes = self.reduction.held_bytes(),
                "half the memory budget reached; writing what the fill holds"
            );
            let mut full = std::mem::take(&mut self.reduction);
            let (pool, generation) = (pool.clone(), generation.clone());
            self.writing = Some(tokio::spawn(async move {
                write_reduction(&mut full, &pool, &generation).await
            }));
        }
        Ok(())
    }

    async fn wait_for_write(&mut self) -> anyhow::Result<()> {
        match self.writing.take() {
            Some(writing) => writing.await.context("a write of the fill panicked")?,
            None => Ok(()),
        }
    }

    /// Writes what is left, then computes every customer's effective rows:
    /// the fill wrote everything the generation holds, so everyone with a
    /// subscription, grant or state is stale, and one set-based pass beats
    /// looking each of them up.
    pub async fn finish(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        progress: &ProgressReport,
    ) -> anyhow::Result<()> {
        self.wait_for_write().await?;
        if !self.reduction.is_empty() {
            progress.step(&format!(
                "writing the newest version of every object: {} rows, {} MiB of snapshots",
                self.reduction.held_rows(),
                self.reduction.held_bytes() >> 20
            ));
            write_reduction(&mut self.reduction, pool, generation).await?;
        }
        progress.step("computing every customer's effective subscriptions and grants");
        let mut tx = pool.begin().await?;
        store::recompute_effective(&mut tx, generation, Whose::Everyone).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Drop for GenerationFill {
    /// A fill dropped unfinished (an error, a stop) leaves a generation that
    /// is dropped next; its write in flight has nothing left to do.
    fn drop(&mut self) {
        if let Some(writing) = &self.writing {
            writing.abort();
        }
    }
}

/// Writes `reduction` into a generation being built, and empties it.
async fn write_reduction(
    reduction: &mut Reduction<'static>,
    pool: &PgPool,
    generation: &Generation,
) -> anyhow::Result<()> {
    if reduction.is_empty() {
        return Ok(());
    }
    reduction
        .write_concurrently(pool, generation, WRITE_CONNECTIONS)
        .await
        .context("cannot write the reduced events")?;
    Ok(())
}

/// Adds the log from `cursor` up to `up_to` to `fill`, a chunk at a time.
/// The log is read by a task of its own, so Postgres reads the next chunks
/// while this one is decoded. Returns the events added; stops between chunks
/// when `stop` fires (the generation is then incomplete and must be dropped).
#[allow(clippy::too_many_arguments)]
pub async fn fill_from_log(
    pool: &PgPool,
    generation: &Generation,
    cursor: &mut LogCursor,
    up_to: i64,
    chunk: usize,
    stop: &CancellationToken,
    fill: &mut GenerationFill,
    progress: &mut ProgressReport,
) -> anyhow::Result<u64> {
    // Two chunks in flight: enough to keep both sides busy, bounded memory.
    let (chunks, mut received) = tokio::sync::mpsc::channel::<Vec<IncomingEvent>>(2);
    let reader = tokio::spawn({
        let pool = pool.clone();
        let mut cursor = cursor.clone();
        let stop = stop.clone();
        async move {
            let mut connection = pool.acquire().await?;
            while !stop.is_cancelled() {
                let events = cursor.next_chunk(&mut connection, up_to, chunk).await?;
                if events.is_empty() || chunks.send(events).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(cursor)
        }
    });
    let mut applied = 0u64;
    while let Some(events) = received.recv().await {
        if stop.is_cancelled() {
            break;
        }
        fill.apply(pool, generation, &events).await?;
        applied += events.len() as u64;
        progress.advance(events.len() as u64);
    }
    // Stopped early, the reader may be ahead of what was added; the
    // generation is dropped then, so its cursor is taken only when complete.
    drop(received);
    let reader_cursor = reader.await.context("the log reader panicked")??;
    if !stop.is_cancelled() {
        *cursor = reader_cursor;
    }
    Ok(applied)
}

/// Applies a chunk into a generation being built and counts it in the
/// progress report; what both replay sources share.
async fn apply_counted(
    tx: &mut sqlx::PgConnection,
    generation: &Generation,
    events: &[IncomingEvent],
    progress: &mut ProgressReport,
) -> anyhow::Result<BatchOutcome> {
    if events.is_empty() {
        return Ok(BatchOutcome::default());
    }
    let outcome = projection::apply(tx, generation, events).await?;
    progress.advance(events.len() as u64);
    Ok(outcome)
}
