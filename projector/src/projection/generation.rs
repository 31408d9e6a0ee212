//! Generations: complete sets of projection tables, each in its own schema.
//!
//! Exactly one generation is live. The consumer writes into it and readers see
//! it through the views in the `projection` schema. A replay builds a new
//! generation beside it and then [`activate`]s it: one transaction re-points
//! the views and the live row, so readers and the consumer move over together.

use std::fmt;

use anyhow::Context as _;
use sqlx::{Executor as _, PgConnection, PgPool};

use super::families::Table;

/// Version of a generation's DDL (the families' object tables and
/// `generation.sql`). A live generation built with another version must be
/// rebuilt (`projector replay`) before this binary serves it. The test
/// `the_ddl_version_changes_with_the_ddl` fails until it is raised when the
/// DDL changes.
pub const DDL_VERSION: i32 = 5;

/// What reads across the object tables: states, failures, the effective views.
const CROSS_FAMILY_DDL: &str = include_str!("generation.sql");

/// The whole DDL of a generation: the schema, the families' object tables,
/// then [`CROSS_FAMILY_DDL`]. `{schema}` is left for the generation's name.
fn ddl() -> String {
    format!(
        "create schema {{schema}};\n\n{}{CROSS_FAMILY_DDL}",
        super::families::object_tables_ddl()
    )
}

/// Transaction-level advisory lock serialising generation creation and switches.
const GENERATIONS_LOCK_KEY: i64 = 0x686f_6f6b_6765_6e73; // "hookgens"

/// The relations of [`CROSS_FAMILY_DDL`] readers reach through
/// `projection.<name>`, beside every object table.
const CROSS_FAMILY_RELATIONS: &[&str] = &[
    "customer_states",
    "customer_meters",
    "apply_failures",
    "effective_grants",
    "effective_subscriptions",
];

/// Tables and views readers reach through `projection.<name>`.
fn reader_relations() -> Vec<&'static str> {
    Table::ALL
        .iter()
        .map(|table| table.name())
        .chain(CROSS_FAMILY_RELATIONS.iter().copied())
        .collect()
}

/// A generation's schema name, e.g. `hookstream_gen_3`. Only this module makes
/// one, from a number, so it is always safe to splice into SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Generation(String);

impl Generation {
    fn numbered(n: i64) -> Self {
        Self(format!("hookstream_gen_{n}"))
    }

    /// Accepts a stored name only if it has the shape this module gives names.
    pub(crate) fn parse(name: &str) -> anyhow::Result<Self> {
        let valid = name
            .strip_prefix("hookstream_gen_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        anyhow::ensure!(valid, "unexpected generation name {name:?}");
        Ok(Self(name.to_owned()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `schema.relation`, for building SQL.
    pub fn qualify(&self, relation: &str) -> String {
        format!("{}.{relation}", self.0)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The live generation, creating and activating the first one on a fresh
/// database. Refuses a live generation built with another DDL version.
pub async fn ensure_live(pool: &PgPool) -> anyhow::Result<Generation> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(GENERATIONS_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let live: Option<(String, i32)> = sqlx::query_as(
        "select g.name, g.ddl_version from projection_live l join projection_generations g on g.name = l.generation",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let generation = match live {
        Some((name, ddl_version)) => {
            anyhow::ensure!(
                ddl_version == DDL_VERSION,
                "the live projections ({name}) were built by projection DDL version {ddl_version}, \
                 this projector uses version {DDL_VERSION}: run `projector replay` to rebuild them"
            );
            Generation::parse(&name)?
        }
        None => {
            let generation = create_locked(&mut tx, "consumer", Persistence::Logged).await?;
            activate_locked(&mut tx, &generation).await?;
            tracing::info!(%generation, "created the first projection generation");
            generation
        }
    };
    tx.commit().await?;
    Ok(generation)
}

/// Creates an empty generation with status `building`.
pub async fn create(pool: &PgPool, built_from: &str) -> anyhow::Result<Generation> {
    create_with(pool, built_from, Persistence::Logged).await
}

/// Whether a generation's tables write the write-ahead log while it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    Logged,
    /// See [`create_unlogged`].
    Unlogged,
}

/// Creates an empty generation whose tables skip the write-ahead log while it
/// is built: a rebuild rewrites each row many times, and logging every
/// version cost most of replay's time. Nothing is lost by it: a generation
/// still `building` when Postgres crashes is dropped by the next rebuild
/// anyway. [`make_durable`] logs it (once, as it stands) before it goes live.
pub async fn create_unlogged(pool: &PgPool, built_from: &str) -> anyhow::Result<Generation> {
    create_with(pool, built_from, Persistence::Unlogged).await
}

/// Creates an empty generation with status `building` and tables of the
/// given persistence.
pub async fn create_with(
    pool: &PgPool,
    built_from: &str,
    persistence: Persistence,
) -> anyhow::Result<Generation> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(GENERATIONS_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let generation = create_locked(&mut tx, built_from, persistence).await?;
    tx.commit().await?;
    Ok(generation)
}

/// Makes an unlogged generation's tables ordinary, crash-safe tables; a
/// logged generation is left as it is.
pub async fn make_durable(pool: &PgPool, generation: &Generation) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = $1 and c.relkind = 'r' and c.relpersistence = 'u' order by 1",
    )
    .bind(generation.name())
    .fetch_all(&mut *tx)
    .await?;
    for table in tables {
        // Names come from the catalog of a validated schema; quote them anyway.
        let table = table.replace('"', "\"\"");
        run_script(
            &mut tx,
            &format!("alter table {generation}.\"{table}\" set logged"),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn create_locked(
    tx: &mut PgConnection,
    built_from: &str,
    persistence: Persistence,
) -> anyhow::Result<Generation> {
    let next: i64 = sqlx::query_scalar(
        r"select coalesce(max(substring(name from '^hookstream_gen_(\d+)$')::bigint), 0) + 1
          from projection_generations",
    )
    .fetch_one(&mut *tx)
    .await?;
    let generation = Generation::numbered(next);
    // A schema of that name left by a crashed, unregistered attempt would be junk.
    run_script(
        &mut *tx,
        &format!("drop schema if exists {generation} cascade"),
    )
    .await?;
    let mut ddl = ddl().replace("{schema}", generation.name());
    if persistence == Persistence::Unlogged {
        // Created unlogged rather than altered after: an `alter table` per
        // table cost a small replay a tenth of its time.
        ddl = ddl.replace("create table ", "create unlogged table ");
    }
    run_script(&mut *tx, &ddl)
        .await
        .with_context(|| format!("cannot create projection tables in {generation}"))?;
    // Snapshots are a few KB and rewritten often (a replay writes each row
    // many times); compressing them with lz4 instead of the default pglz
    // cuts Postgres's share of every upsert. That includes the snapshots kept
    // as text: a drain's profile showed pglz still compressing them.
    // Servers without lz4 keep pglz.
    run_script(
        &mut *tx,
        &format!(
            "do $$
             declare c record;
             begin
                 for c in select r.relname, a.attname from pg_attribute a
                          join pg_class r on r.oid = a.attrelid
                          where r.relnamespace = '{generation}'::regnamespace and r.relkind = 'r'
                            and (a.atttypid = 'jsonb'::regtype or a.attname = 'snapshot')
                            and a.attnum > 0 and not a.attisdropped
                 loop
                     execute format('alter table %I.%I alter column %I set compression lz4',
                                    '{generation}', c.relname, c.attname);
                 end loop;
             exception when feature_not_supported or invalid_parameter_value then
                 raise notice 'lz4 not available; projections use the default compression';
             end
             $$"
        ),
    )
    .await?;
    sqlx::query(
        "insert into projection_generations (name, ddl_version, status, built_from) values ($1, $2, 'building', $3)",
    )
    .bind(generation.name())
    .bind(DDL_VERSION)
    .bind(built_from)
    .execute(&mut *tx)
    .await?;
    Ok(generation)
}

/// Makes `generation` live in the caller's transaction: re-points the reader
/// views and the live row, and retires the previous generation. Returns the
/// previous one. The caller must hold the live row lock (see [`lock_live`]).
pub async fn activate(
    tx: &mut PgConnection,
    generation: &Generation,
) -> anyhow::Result<Option<Generation>> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(GENERATIONS_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    activate_locked(tx, generation).await
}

async fn activate_locked(
    tx: &mut PgConnection,
    generation: &Generation,
) -> anyhow::Result<Option<Generation>> {
    let previous: Option<String> =
        sqlx::query_scalar("select generation from projection_live for update")
            .fetch_optional(&mut *tx)
            .await?;
    let existing: Vec<String> = sqlx::query_scalar(
        "select format('projection.%I', c.relname) from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'projection' and c.relname = any($1) order by 1",
    )
    .bind(reader_relations())
    .fetch_all(&mut *tx)
    .await?;
    lock_without_deadlock(tx, &existing).await?;
    for relation in reader_relations() {
        run_script(
            tx,
            &format!(
                "drop view if exists projection.{relation}; create view projection.{relation} as select * from {};",
                generation.qualify(relation)
            ),
        )
        .await?;
    }
    sqlx::query(
        "insert into projection_live (singleton, generation) values (true, $1)
         on conflict (singleton) do update set generation = excluded.generation",
    )
    .bind(generation.name())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update projection_generations set status = 'live', activated_at = now() where name = $1",
    )
    .bind(generation.name())
    .execute(&mut *tx)
    .await?;
    let previous = match previous.filter(|p| p != generation.name()) {
        Some(name) => {
            sqlx::query("update projection_generations set status = 'retired', retired_at = now() where name = $1")
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            Some(Generation::parse(&name)?)
        }
        None => None,
    };
    Ok(previous)
}

/// How long a generation switch or drop waits for one lock before it lets
/// go of all it took and tries again.
const LOCK_ATTEMPT_TIMEOUT: &str = "50ms";

/// Takes `access exclusive` locks on `relations` in the caller's transaction
/// without ever being part of a deadlock. A reader's query locks the views
/// it names in its own order, which no fixed order here can match; waiting
/// for its lock while holding another could deadlock, and Postgres would then
/// cancel one side, possibly the reader. So each attempt waits at most
/// [`LOCK_ATTEMPT_TIMEOUT`] per lock, far below Postgres's deadlock check
/// (1 s by default), and on a timeout releases what it took and starts over.
async fn lock_without_deadlock(tx: &mut PgConnection, relations: &[String]) -> anyhow::Result<()> {
    if relations.is_empty() {
        return Ok(());
    }
    let lock = format!(
        "lock table {} in access exclusive mode",
        relations.join(", ")
    );
    let mut pause = std::time::Duration::from_millis(5);
    for attempt in 1.. {
        run_script(
            tx,
            &format!("savepoint take_locks; set local lock_timeout = '{LOCK_ATTEMPT_TIMEOUT}'"),
        )
        .await?;
        match run_script(tx, &lock).await {
            Ok(()) => {
                run_script(
                    tx,
                    "set local lock_timeout = 0; release savepoint take_locks",
                )
                .await?;
                return Ok(());
            }
            Err(e) if is_lock_timeout(&e) && attempt < 200 => {
                run_script(tx, "rollback to savepoint take_locks").await?;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context("cannot lock the projection relations"));
            }
        }
    }
    unreachable!("the loop returns")
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// Runs SQL statements without parameters (simple query protocol).
/// `Executor::execute` rather than `sqlx::raw_sql`: the latter's future is not
/// provably `Send`, and replay runs in spawned tasks.
async fn run_script(tx: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
    tx.execute(sql).await?;
    Ok(())
}

/// The live generation, locked FOR SHARE for the rest of the caller's
/// transaction: a switch waits for the batch holding it, and a batch that
/// starts after a switch sees the new generation.
pub async fn lock_live(tx: &mut PgConnection) -> anyhow::Result<Generation> {
    let name: String = sqlx::query_scalar("select generation from projection_live for share")
        .fetch_optional(&mut *tx)
        .await?
        .context("no live projection generation")?;
    Generation::parse(&name)
}

/// The live generation as the caller's transaction sees it, unlocked.
pub async fn live_in(tx: &mut PgConnection) -> anyhow::Result<Generation> {
    let name: String = sqlx::query_scalar("select generation from projection_live")
        .fetch_optional(&mut *tx)
        .await?
        .context("no live projection generation")?;
    Generation::parse(&name)
}

/// The live generation, unlocked (for reads and reports).
pub async fn live(executor: &PgPool) -> anyhow::Result<Option<Generation>> {
    let name: Option<String> = sqlx::query_scalar("select generation from projection_live")
        .fetch_optional(executor)
        .await?;
    name.as_deref().map(Generation::parse).transpose()
}

/// Drops a generation that is not live.
pub async fn drop_generation(pool: &PgPool, generation: &Generation) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(GENERATIONS_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let is_live: bool =
        sqlx::query_scalar("select exists (select 1 from projection_live where generation = $1)")
            .bind(generation.name())
            .fetch_one(&mut *tx)
            .await?;
    anyhow::ensure!(!is_live, "{generation} is live and cannot be dropped");
    // Readers that began before the switch may still be reading it.
    let tables: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', n.nspname, c.relname) from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = $1 and c.relkind in ('r', 'v') order by 1",
    )
    .bind(generation.name())
    .fetch_all(&mut *tx)
    .await?;
    lock_without_deadlock(&mut tx, &tables).await?;
    run_script(
        &mut tx,
        &format!("drop schema if exists {generation} cascade"),
    )
    .await?;
    sqlx::query("delete from projection_generations where name = $1")
        .bind(generation.name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    /// The DDL each version stands for. A change to any family's columns
    /// or indexes, or to `generation.sql`, changes this fingerprint: raise
    /// [`DDL_VERSION`] (an old generation then asks for a replay rather
    /// than failing queries), then record the new fingerprint here.
    #[test]
    fn the_ddl_version_changes_with_the_ddl() {
        let fingerprint: String = Sha256::digest(ddl().as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            (DDL_VERSION, fingerprint.as_str()),
            (5, "f39a4a7c42954fd4"),
            "the projection DDL changed: raise DDL_VERSION and record its fingerprint"
        );
    }
}
