//! Writing a batch of events into a generation, in the caller's transaction.
//!
//! The batch is reduced in memory first ([`Reduction`]): for each object only
//! its newest version in the batch is written, so a burst of events about one
//! object (created, active, updated) costs one row write; a generation build
//! reduces up to its memory budget before it writes. Each table then gets
//! multi-row upserts whose `where` clause keeps a row unless the incoming
//! version is strictly newer. Rows are written in id order, so two projectors
//! upserting overlapping rows take their locks in the same order and cannot
//! deadlock. Finally the effective subscriptions and grants of every customer
//! the batch touched are recomputed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use hookstream_shared::db::is_transient;

use super::decode::{Column, Decoded, IncomingEvent, ObjectChange, StateChange, Table, decode};
use super::families::customers::STATE_LISTS;
use super::generation::Generation;

/// What one applied batch did, for metrics and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events applied, by type.
    pub applied: BTreeMap<String, u64>,
    /// Well-formed events no projection uses, by type.
    pub ignored: BTreeMap<String, u64>,
    /// Events recorded in `apply_failures`.
    pub failed: u64,
    /// Customers whose rows, subscriptions, grants or state the batch wrote
    /// (or tried to: an older version is written nowhere but still listed).
    pub changed_customers: BTreeSet<String>,
    /// External ids named by the customer and member snapshots the batch wrote.
    pub changed_external_ids: BTreeSet<String>,
    /// Per customer with a known id, what the batch wrote about it (for the
    /// change feed).
    pub customer_changes: BTreeMap<String, CustomerChange>,
}

/// An event that could not be applied, as `apply_failures` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub webhook_id: String,
    /// The envelope's `type`, when the body got that far.
    pub event_type: Option<String>,
    /// Why, for the operator: the decoder's or the database's words.
    pub reason: String,
}

/// What one batch wrote about one customer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CustomerChange {
    /// The tables written (`state` for a `customer.state_changed`).
    pub tables: BTreeSet<&'static str>,
    /// Members the rows were about.
    pub members: BTreeSet<String>,
}

impl BatchOutcome {
    pub fn events(&self) -> u64 {
        self.applied.values().sum::<u64>() + self.ignored.values().sum::<u64>() + self.failed
    }
}

/// Applies `events` to `generation`. Runs inside the caller's transaction;
/// errors are database errors (the caller rolls back and retries). Events that
/// cannot be decoded are recorded as failures, not errors.
pub async fn apply_batch(
    tx: &mut PgConnection,
    generation: &Generation,
    events: &[IncomingEvent],
) -> sqlx::Result<BatchOutcome> {
    let mut reduction = reduce(events);
    reduction.write(tx, generation).await
}

/// Fewest events worth a decoding thread of their own: a thread costs tens of
/// microseconds, 250 events take milliseconds to decode.
const EVENTS_PER_DECODE_THREAD: usize = 250;

/// Decodes and reduces `events`. Decoding is most of the projector's own
/// work, and the database sits idle until it is done, so a large batch is
/// split over the machine's cores and the parts absorbed in event order,
/// which gives the reduction the events would give one by one.
fn reduce(events: &[IncomingEvent]) -> Reduction<'_> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(events.len() / EVENTS_PER_DECODE_THREAD).max(1);
    fn reduce_part(part: &[IncomingEvent]) -> Reduction<'_> {
        let mut reduction = Reduction::default();
        for event in part {
            reduction.add(event, |change| change, |state| state);
        }
        reduction
    }
    if threads == 1 {
        return reduce_part(events);
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = events
            .chunks(events.len().div_ceil(threads))
            .map(|part| scope.spawn(move || reduce_part(part)))
            .collect();
        let mut reduction = Reduction::default();
        for part in parts {
            match part.join() {
                Ok(part) => reduction.absorb(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        reduction
    })
}

/// Largest number of rows one upsert statement carries: a statement's
/// parameters travel in one protocol message, which Postgres caps at 1 GiB.
const ROWS_PER_STATEMENT: usize = 5_000;

/// Events reduced to what they leave behind: for each object its newest
/// version, for each customer its newest state, and the events that failed.
/// Writing a reduction gives the same rows as applying its events one by
/// one, in any order, because each row keeps only a strictly newer version
/// and the reduction picks the newest by the same [`Version`] order the
/// upserts compare. Whether an event fails is decided by the event alone
/// ([`decode`]), never by the others reduced with it.
///
/// `'a` borrows the events' bodies (a live batch); a generation build keeps a
/// `Reduction<'static>` across many chunks, owning what it keeps.
///
/// [`Version`]: super::version::Version
#[derive(Debug, Default)]
pub struct Reduction<'a> {
    objects: HashMap<(Table, String), ObjectChange<'a>>,
    states: HashMap<String, StateChange<'a>>,
    /// By seq.
    failures: BTreeMap<i64, Failure>,
    applied: BTreeMap<String, u64>,
    ignored: BTreeMap<String, u64>,
    /// Bytes of snapshots held, to bound an owning reduction's memory.
    held_bytes: usize,
}

impl<'a> Reduction<'a> {
    /// Decodes `event` and keeps what is newer than what the reduction holds.
    /// `adopt` and `adopt_state` turn a kept change into one the reduction
    /// can hold (the identity when it borrows, `into_owned` when it owns), so
    /// only winners are ever copied.
    pub fn add<'e>(
        &mut self,
        event: &'e IncomingEvent,
        adopt: impl Fn(ObjectChange<'e>) -> ObjectChange<'a>,
        adopt_state: impl Fn(StateChange<'e>) -> StateChange<'a>,
    ) {
        match decode(event) {
            Ok(Decoded::Apply {
                event_type,
                changes,
            }) => {
                *self.applied.entry(event_type.into_owned()).or_default() += 1;
                for change in changes.objects {
                    let key = (change.table, change.id.to_string());
                    self.keep_object(key, change, &adopt);
                }
                if let Some(state) = changes.state {
                    self.keep_state(state, &adopt_state);
                }
            }
            Ok(Decoded::Ignored { event_type }) => {
                *self.ignored.entry(event_type.into_owned()).or_default() += 1;
            }
            Err(e) => {
                self.failures.insert(
                    event.seq,
                    Failure {
                        webhook_id: event.webhook_id.clone(),
                        event_type: e.event_type,
                        reason: e.reason,
                    },
                );
            }
        }
    }

    /// Keeps `change` (the object `key` names) if it is newer than what the
    /// reduction holds for that object; only then is it adopted.
    fn keep_object<'e>(
        &mut self,
        key: (Table, String),
        change: ObjectChange<'e>,
        adopt: impl FnOnce(ObjectChange<'e>) -> ObjectChange<'a>,
    ) {
        let newer = self
            .objects
            .get(&key)
            .is_none_or(|old| change.version > old.version);
        if newer {
            self.held_bytes += change.snapshot.len();
            if let Some(old) = self.objects.insert(key, adopt(change)) {
                self.held_bytes -= old.snapshot.len();
            }
        }
    }

    /// Keeps `state` if it is newer than the customer's state the reduction
    /// holds; only then is it adopted.
    fn keep_state<'e>(
        &mut self,
        state: StateChange<'e>,
        adopt: impl FnOnce(StateChange<'e>) -> StateChange<'a>,
    ) {
        let newer = self
            .states
            .get(state.customer_id.as_ref())
            .is_none_or(|old| (state.state_at, state.seq) > (old.state_at, old.seq));
        if newer {
            self.held_bytes += state.snapshot.len();
            let customer_id = state.customer_id.to_string();
            if let Some(old) = self.states.insert(customer_id, adopt(state)) {
                self.held_bytes -= old.snapshot.len();
            }
        }
    }

    /// Takes in a reduction of other events: the result is what adding its
    /// events here would have given, since both keep the newest by the same
    /// order (on a tie, the copy already held, as `add` does).
    fn absorb(&mut self, other: Reduction<'a>) {
        for (key, change) in other.objects {
            self.keep_object(key, change, |c| c);
        }
        for (_, state) in other.states {
            self.keep_state(state, |s| s);
        }
        self.failures.extend(other.failures);
        for (event_type, n) in other.applied {
            *self.applied.entry(event_type).or_default() += n;
        }
        for (event_type, n) in other.ignored {
            *self.ignored.entry(event_type).or_default() += n;
        }
    }

    /// Bytes of snapshots the reduction holds.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Objects and customer states the reduction holds.
    pub fn held_rows(&self) -> usize {
        self.objects.len() + self.states.len()
    }

    /// Whether nothing has been added since the last write.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
            && self.states.is_empty()
            && self.failures.is_empty()
            && self.applied.is_empty()
            && self.ignored.is_empty()
    }

    /// Writes what the reduction holds into `generation`, in the caller's
    /// transaction, brings the effective subscriptions and grants of the
    /// customers it touched up to date (what readers of a live generation
    /// need), and empties it.
    pub async fn write(
        &mut self,
        tx: &mut PgConnection,
        generation: &Generation,
    ) -> sqlx::Result<BatchOutcome> {
        let (mut outcome, recompute, rows) = self.take();
        for statement in rows.statements() {
            statement.run(tx, generation).await?;
        }
        if !rows.unattributed_seats.is_empty() {
            let customers: Vec<String> = sqlx::query_scalar(&format!(
                "select customer_id from {} where id = any($1) and customer_id is not null",
                generation.qualify("seat_holders")
            ))
            .bind(&rows.unattributed_seats)
            .fetch_all(&mut *tx)
            .await?;
            for customer in customers {
                let change = outcome
                    .customer_changes
                    .entry(customer.clone())
                    .or_default();
                change.tables.insert(Table::CustomerSeats.name());
                outcome.changed_customers.insert(customer);
            }
        }
        if !recompute.is_empty() {
            let customers: Vec<&str> = recompute.iter().map(String::as_str).collect();
            recompute_effective(tx, generation, Whose::Customers(&customers)).await?;
        }
        Ok(outcome)
    }

    /// Writes what the reduction holds into a generation that has no
    /// readers yet, on up to `connections` of `pool`'s connections at once,
    /// each statement committing by itself, and empties it. Statements touch
    /// disjoint rows (one per object), so they cannot conflict; effective
    /// rows are left to the caller ([`recompute_effective`], once at the
    /// end). If one fails transiently, the generation is incomplete and must
    /// be dropped.
    ///
    /// A statement the database refuses otherwise is written again row by
    /// row, and the events of the rows still refused are recorded in
    /// `apply_failures`, as the live consumer records an event refused on its
    /// own ([`super::apply`]): a replay finishes whatever the log holds.
    pub async fn write_concurrently(
        &mut self,
        pool: &PgPool,
        generation: &Generation,
        connections: usize,
    ) -> sqlx::Result<BatchOutcome> {
        let (mut outcome, _, rows) = self.take();
        // Each worker takes the next statement until none is left.
        let queue = std::sync::Mutex::new(rows.statements().into_iter());
        let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let refused = std::sync::Mutex::new(BTreeMap::<i64, String>::new());
        let worker = |_: usize| async {
            let mut connection = pool.acquire().await?;
            while let Some(statement) = next() {
                match statement.run(&mut connection, generation).await {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "the database refused a write of a generation build; writing its rows one by one");
                        let alone = statement
                            .run_row_by_row(&mut connection, generation)
                            .await?;
                        refused
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(alone);
                    }
                }
            }
            Ok::<(), sqlx::Error>(())
        };
        futures::future::try_join_all((0..connections.max(1)).map(worker)).await?;
        let refused = refused.into_inner().unwrap_or_else(|e| e.into_inner());
        if !refused.is_empty() {
            outcome.failed += refused.len() as u64;
            let mut connection = pool.acquire().await?;
            record_refusals(&mut connection, generation, &refused).await?;
        }
        Ok(outcome)
    }

    /// Empties the reduction into what a write needs: the outcome to report,
    /// the customers whose effective rows may have changed, and the rows.
    fn take(&mut self) -> (BatchOutcome, BTreeSet<String>, Rows<'a>) {
        let Self {
            objects,
            states,
            failures,
            applied,
            ignored,
            held_bytes: _,
        } = std::mem::take(self);
        let mut outcome = BatchOutcome {
            applied,
            ignored,
            failed: failures.len() as u64,
            ..BatchOutcome::default()
        };

        // Customers whose effective subscriptions or grants may have changed,
        // to recompute; and, for caches, every customer and external id the
        // batch wrote anything about. Each family says whom its rows concern.
        let mut recompute: BTreeSet<String> = states.keys().cloned().collect();
        outcome.changed_customers = recompute.clone();
        let mut unattributed_seats = Vec::new();
        for customer in states.keys() {
            let change = outcome
                .customer_changes
                .entry(customer.clone())
                .or_default();
            change.tables.insert("state");
        }
        for ((table, id), change) in &objects {
            let touch = (table.spec().touches)(id, &change.columns);
            if touch.look_up {
                unattributed_seats.push(id.clone());
            }
            if let Some(customer) = touch.customer {
                if touch.recompute {
                    recompute.insert(customer.clone());
                }
                if *table != Table::SeatHolders {
                    let change = outcome
                        .customer_changes
                        .entry(customer.clone())
                        .or_default();
                    change.tables.insert(table.name());
                    change.members.extend(touch.member);
                }
                outcome.changed_customers.insert(customer);
            }
            outcome.changed_external_ids.extend(touch.external_id);
        }

        let mut by_table: BTreeMap<Table, Vec<ObjectChange<'a>>> = BTreeMap::new();
        for ((table, _), change) in objects {
            by_table.entry(table).or_default().push(change);
        }
        let objects = Table::ALL
            .into_iter()
            .filter_map(|table| {
                let mut rows = by_table.remove(&table)?;
                rows.sort_by(|a, b| a.id.cmp(&b.id));
                Some((table, rows))
            })
            .collect();
        let mut states: Vec<StateChange<'a>> = states.into_values().collect();
        states.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        (
            outcome,
            recompute,
            Rows {
                objects,
                states,
                failures,
                unattributed_seats,
            },
        )
    }
}

/// A reduction's rows, each table's in id order, so two writers upserting
/// overlapping rows take their locks in the same order.
struct Rows<'a> {
    objects: Vec<(Table, Vec<ObjectChange<'a>>)>,
    states: Vec<StateChange<'a>>,
    /// By seq.
    failures: BTreeMap<i64, Failure>,
    /// Rows written without a customer (revoked seats), whose customer is
    /// looked up once they are written.
    unattributed_seats: Vec<String>,
}

impl<'a> Rows<'a> {
    /// The statements that write them, at most [`ROWS_PER_STATEMENT`] rows each.
    fn statements(&self) -> Vec<Statement<'_, 'a>> {
        let mut statements: Vec<Statement<'_, 'a>> = self
            .objects
            .iter()
            .flat_map(|(table, rows)| {
                rows.chunks(ROWS_PER_STATEMENT)
                    .map(|slice| Statement::Objects(*table, slice))
            })
            .collect();
        statements.extend(
            self.states
                .chunks(ROWS_PER_STATEMENT)
                .map(Statement::States),
        );
        if !self.failures.is_empty() {
            statements.push(Statement::Failures(&self.failures));
        }
        statements
    }
}

/// One multi-row statement of a write.
#[derive(Clone, Copy)]
enum Statement<'r, 'a> {
    Objects(Table, &'r [ObjectChange<'a>]),
    States(&'r [StateChange<'a>]),
    Failures(&'r BTreeMap<i64, Failure>),
}

impl Statement<'_, '_> {
    async fn run(self, connection: &mut PgConnection, generation: &Generation) -> sqlx::Result<()> {
        match self {
            Self::Objects(table, rows) => upsert_objects(connection, generation, table, rows).await,
            Self::States(rows) => upsert_states(connection, generation, rows).await,
            Self::Failures(failures) => record_failures(connection, generation, failures).await,
        }
    }

    /// Runs the statement one row at a time, and returns the events (by seq)
    /// whose rows the database still refuses, with its reason. Fails only
    /// on a transient error.
    async fn run_row_by_row(
        self,
        connection: &mut PgConnection,
        generation: &Generation,
    ) -> sqlx::Result<BTreeMap<i64, String>> {
        let mut refused = BTreeMap::new();
        let mut keep = |seq: i64, written: sqlx::Result<()>| match written {
            Ok(()) => Ok(()),
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                refused.entry(seq).or_insert_with(|| e.to_string());
                Ok(())
            }
        };
        match self {
            Self::Objects(table, rows) => {
                for row in rows {
                    let written =
                        upsert_objects(connection, generation, table, std::slice::from_ref(row))
                            .await;
                    keep(row.version.seq, written)?;
                }
            }
            Self::States(rows) => {
                for row in rows {
                    let written =
                        upsert_states(connection, generation, std::slice::from_ref(row)).await;
                    keep(row.seq, written)?;
                }
            }
            // Failures are text the reduction made; refusing them is not an
            // event's doing.
            Self::Failures(failures) => record_failures(connection, generation, failures).await?,
        }
        Ok(refused)
    }
}

async fn upsert_objects(
    tx: &mut PgConnection,
    generation: &Generation,
    table: Table,
    rows: &[ObjectChange<'_>],
) -> sqlx::Result<()> {
    let columns = table.columns();
    let mut select = vec![
        "id".to_owned(),
        "v_at".to_owned(),
        "v_rank".to_owned(),
        "v_occurred".to_owned(),
        "v_seq".to_owned(),
        // A customer snapshot taken from a CustomerState carries the lists too.
        if table == Table::Customers {
            STATE_LISTS
                .iter()
                .fold("snapshot::jsonb".to_owned(), |sql, list| {
                    format!("{sql} - '{list}'")
                })
        } else {
            format!("snapshot::{}", table.snapshot_type())
        },
    ];
    let mut names = vec!["id", "v_at", "v_rank", "v_occurred", "v_seq", "snapshot"];
    let mut params = vec![
        "$1::text[]".to_owned(),
        "$2::timestamptz[]".to_owned(),
        "$3::int2[]".to_owned(),
        "$4::timestamptz[]".to_owned(),
        "$5::int8[]".to_owned(),
        "$6::text[]".to_owned(),
    ];
    for (i, column) in columns.iter().enumerate() {
        names.push(column.name);
        // jsonb travels as text, parsed by Postgres once it is in place.
        if column.sql_type == "jsonb" {
            select.push(format!("{}::jsonb", column.name));
            params.push(format!("${}::text[]", i + 7));
        } else {
            select.push(column.name.to_owned());
            params.push(format!("${}::{}[]", i + 7, column.sql_type));
        }
    }
    let updates: Vec<String> = names[1..]
        .iter()
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    let sql = format!(
        "insert into {target} as t ({names})
         select {select} from unnest({params}) as u({names})
         on conflict (id) do update set {updates}
         where (excluded.v_at, excluded.v_rank, excluded.v_occurred, excluded.v_seq)
             > (t.v_at, t.v_rank, t.v_occurred, t.v_seq)",
        target = generation.qualify(table.name()),
        names = names.join(", "),
        select = select.join(", "),
        params = params.join(", "),
        updates = updates.join(", "),
    );

    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_ref()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.version.at).collect();
    let rank: Vec<i16> = rows.iter().map(|r| r.version.rank as i16).collect();
    let occurred: Vec<DateTime<Utc>> = rows.iter().map(|r| r.version.occurred).collect();
    let seq: Vec<i64> = rows.iter().map(|r| r.version.seq).collect();
    let snapshots: Vec<&str> = rows.iter().map(|r| r.snapshot.as_ref()).collect();
    let mut query = sqlx::query(&sql)
        .bind(ids)
        .bind(at)
        .bind(rank)
        .bind(occurred)
        .bind(seq)
        .bind(snapshots);
    for i in 0..columns.len() {
        query = match rows.first().map(|r| &r.columns[i]) {
            Some(Column::Bool(_)) => query.bind(
                rows.iter()
                    .map(|r| matches!(r.columns[i], Column::Bool(true)))
                    .collect::<Vec<bool>>(),
            ),
            Some(Column::Int(_)) => query.bind(
                rows.iter()
                    .map(|r| match r.columns[i] {
                        Column::Int(n) => n,
                        _ => None,
                    })
                    .collect::<Vec<Option<i64>>>(),
            ),
            Some(Column::Time(_)) => query.bind(
                rows.iter()
                    .map(|r| match r.columns[i] {
                        Column::Time(t) => t,
                        _ => None,
                    })
                    .collect::<Vec<Option<DateTime<Utc>>>>(),
            ),
            _ => query.bind(
                rows.iter()
                    .map(|r| match &r.columns[i] {
                        Column::Text(t) | Column::Json(t) => t.as_deref(),
                        _ => None,
                    })
                    .collect::<Vec<Option<&str>>>(),
            ),
        };
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

async fn upsert_states(
    tx: &mut PgConnection,
    generation: &Generation,
    rows: &[StateChange<'_>],
) -> sqlx::Result<()> {
    let sql = format!(
        "insert into {target} as t (customer_id, state_at, v_seq, snapshot)
         select customer_id, state_at, v_seq, snapshot::jsonb
         from unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[]) as u(customer_id, state_at, v_seq, snapshot)
         on conflict (customer_id) do update
             set state_at = excluded.state_at, v_seq = excluded.v_seq, snapshot = excluded.snapshot
         where (excluded.state_at, excluded.v_seq) > (t.state_at, t.v_seq)",
        target = generation.qualify("customer_states"),
    );
    sqlx::query(&sql)
        .bind(
            rows.iter()
                .map(|r| r.customer_id.as_ref())
                .collect::<Vec<&str>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.state_at)
                .collect::<Vec<DateTime<Utc>>>(),
        )
        .bind(rows.iter().map(|r| r.seq).collect::<Vec<i64>>())
        .bind(
            rows.iter()
                .map(|r| r.snapshot.as_ref())
                .collect::<Vec<&str>>(),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whose effective rows to recompute.
#[derive(Debug, Clone, Copy)]
pub enum Whose<'a> {
    Customers(&'a [&'a str]),
    /// Everyone: one set-based statement per table, what a generation build
    /// wants at its end, when nearly every customer is stale.
    Everyone,
}

/// Rebuilds the materialised effective rows of `whose` from the views.
pub async fn recompute_effective(
    tx: &mut PgConnection,
    generation: &Generation,
    whose: Whose<'_>,
) -> sqlx::Result<()> {
    let (filter, customers): (&str, &[&str]) = match whose {
        Whose::Customers(customers) => ("where customer_id = any($1)", customers),
        Whose::Everyone => ("", &[]),
    };
    for (table, columns) in [
        (
            "effective_grants",
            "customer_id, grant_id, benefit_id, created_at, member_id, subscription_id, v_at, item",
        ),
        (
            "effective_subscriptions",
            "customer_id, subscription_id, created_at, item",
        ),
    ] {
        let delete = format!("delete from {} {filter}", generation.qualify(table));
        let insert = format!(
            "insert into {target} ({columns})
             select {columns} from {view} {filter}
             on conflict do nothing",
            target = generation.qualify(table),
            view = generation.qualify(&format!("{table}_v")),
        );
        for statement in [delete, insert] {
            let query = sqlx::query(&statement);
            let query = match whose {
                Whose::Customers(_) => query.bind(customers),
                Whose::Everyone => query,
            };
            query.execute(&mut *tx).await?;
        }
    }
    Ok(())
}

async fn record_failures(
    tx: &mut PgConnection,
    generation: &Generation,
    failures: &BTreeMap<i64, Failure>,
) -> sqlx::Result<()> {
    let sql = format!(
        "insert into {} (seq, webhook_id, event_type, reason)
         select * from unnest($1::int8[], $2::text[], $3::text[], $4::text[])
         on conflict (seq) do nothing",
        generation.qualify("apply_failures"),
    );
    sqlx::query(&sql)
        .bind(failures.keys().copied().collect::<Vec<i64>>())
        .bind(
            failures
                .values()
                .map(|f| f.webhook_id.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(
            failures
                .values()
                .map(|f| f.event_type.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(
            failures
                .values()
                .map(|f| f.reason.as_str())
                .collect::<Vec<&str>>(),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records an event the database refused even on its own.
pub async fn record_refusal(
    tx: &mut PgConnection,
    generation: &Generation,
    event: &IncomingEvent,
    reason: &str,
) -> sqlx::Result<()> {
    record_failures(
        tx,
        generation,
        &BTreeMap::from([(event.seq, refusal(event, reason))]),
    )
    .await
}

/// Records the logged events at `refused`'s seqs (with the database's
/// reason for each) as refused.
async fn record_refusals(
    connection: &mut PgConnection,
    generation: &Generation,
    refused: &BTreeMap<i64, String>,
) -> sqlx::Result<()> {
    let seqs: Vec<i64> = refused.keys().copied().collect();
    let events = super::from_log::events_at(connection, &seqs).await?;
    let failures = events
        .iter()
        .filter_map(|event| Some((event.seq, refusal(event, refused.get(&event.seq)?))))
        .collect();
    record_failures(connection, generation, &failures).await
}

fn refusal(event: &IncomingEvent, reason: &str) -> Failure {
    Failure {
        webhook_id: event.webhook_id.clone(),
        event_type: super::decode::event_type(&event.body),
        reason: format!("the database refused it: {}", reason.replace('\0', "")),
    }
}
