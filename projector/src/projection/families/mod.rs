//! The event families, one module each: what a family's events look like,
//! the row changes they become, and the table those rows live in (its query
//! columns, their SQL types and indexes) side by side. Adding a family is a
//! new module here and a line in [`FAMILIES`] and [`Table`].
//!
//! Every object table has the same shape around its own columns: the
//! object's id, its [`Version`] and its latest snapshot. The upsert that
//! writes them (`store.rs`) and the DDL that creates them
//! ([`object_tables_ddl`]) are built from the [`TableSpec`]s here, so a
//! column is declared once.

pub mod benefit_grants;
pub mod catalog;
pub mod checkouts;
pub mod customers;
pub mod members;
pub mod orders;
pub mod seats;
pub mod subscriptions;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::decode::{Changes, Column, ObjectChange};
use super::version::{Rank, Version};

/// The tables objects are projected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Customers,
    Subscriptions,
    BenefitGrants,
    Orders,
    Checkouts,
    Products,
    Benefits,
    Members,
    CustomerSeats,
    SeatHolders,
}

impl Table {
    /// Every table, in the order a batch writes them.
    pub const ALL: [Table; 10] = [
        Table::Customers,
        Table::Products,
        Table::Benefits,
        Table::Subscriptions,
        Table::BenefitGrants,
        Table::Orders,
        Table::Checkouts,
        Table::Members,
        Table::CustomerSeats,
        Table::SeatHolders,
    ];

    pub fn spec(self) -> &'static TableSpec {
        match self {
            Self::Customers => &customers::TABLE,
            Self::Subscriptions => &subscriptions::TABLE,
            Self::BenefitGrants => &benefit_grants::TABLE,
            Self::Orders => &orders::TABLE,
            Self::Checkouts => &checkouts::TABLE,
            Self::Products => &catalog::PRODUCTS,
            Self::Benefits => &catalog::BENEFITS,
            Self::Members => &members::TABLE,
            Self::CustomerSeats => &seats::SEATS,
            Self::SeatHolders => &seats::HOLDERS,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The SQL type of the table's snapshot column. Postgres parses every
    /// jsonb value it is sent, and for a 3 KB Polar object that costs ten to
    /// fifteen times storing it as text (BENCHMARKS.md, "Projector"), most of
    /// a drain's database time. So only tables whose snapshots SQL reads into
    /// (the effective views, the read API's merges and sorts) keep jsonb; the
    /// others keep the text the projector has already parsed, byte for byte.
    pub fn snapshot_type(self) -> &'static str {
        self.spec().snapshot.sql_type()
    }

    /// The query columns the table keeps beside the snapshot, in the order
    /// [`ObjectChange::columns`] holds their values.
    pub fn columns(self) -> &'static [ColumnSpec] {
        self.spec().columns
    }
}

/// How a table keeps its snapshots (see [`Table::snapshot_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    Jsonb,
    Text,
}

impl Snapshot {
    pub fn sql_type(self) -> &'static str {
        match self {
            Self::Jsonb => "jsonb",
            Self::Text => "text",
        }
    }
}

/// One object table.
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub snapshot: Snapshot,
    pub columns: &'static [ColumnSpec],
    /// Index definitions, each `(columns) [where ...]`.
    pub indexes: &'static [&'static str],
    /// Whom a row written here concerns, for recomputing and for caches.
    pub touches: fn(id: &str, columns: &[Column<'_>]) -> Touch,
}

/// A query column: its name and SQL type, and whether every row has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: &'static str,
    pub sql_type: &'static str,
    pub required: bool,
}

pub const fn required(name: &'static str, sql_type: &'static str) -> ColumnSpec {
    ColumnSpec {
        name,
        sql_type,
        required: true,
    }
}

pub const fn optional(name: &'static str, sql_type: &'static str) -> ColumnSpec {
    ColumnSpec {
        name,
        sql_type,
        required: false,
    }
}

/// Whom a written row concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touch {
    /// The customer whose answers may change.
    pub customer: Option<String>,
    /// An external id whose answers may change.
    pub external_id: Option<String>,
    /// The member the row is about, if any.
    pub member: Option<String>,
    /// Whether the customer's effective subscriptions and grants must be
    /// recomputed (only rows those views read).
    pub recompute: bool,
    /// The row names no customer (a revoked seat): whom it concerns must be
    /// looked up once it is written.
    pub look_up: bool,
}

/// A row that concerns nobody in particular (products, benefits).
pub fn touches_nobody(_: &str, _: &[Column<'_>]) -> Touch {
    Touch::default()
}

/// The text of a query column, by position.
pub fn text_at(columns: &[Column<'_>], i: usize) -> Option<String> {
    match columns.get(i) {
        Some(Column::Text(Some(text))) => Some(text.to_string()),
        _ => None,
    }
}

/// The creation statements of every object table; `{schema}` is left for
/// the generation's name.
pub fn object_tables_ddl() -> String {
    let mut ddl = String::new();
    for table in Table::ALL {
        let spec = table.spec();
        ddl.push_str(&format!(
            "create table {{schema}}.{name} (\n    id text primary key,\n    \
             v_at timestamptz not null,\n    v_rank smallint not null,\n    \
             v_occurred timestamptz not null,\n    v_seq bigint not null,\n    \
             snapshot {snapshot} not null",
            name = spec.name,
            snapshot = spec.snapshot.sql_type(),
        ));
        for column in spec.columns {
            ddl.push_str(&format!(
                ",\n    {} {}{}",
                column.name,
                column.sql_type,
                if column.required { " not null" } else { "" }
            ));
        }
        ddl.push_str("\n);\n");
        for index in spec.indexes {
            ddl.push_str(&format!(
                "create index on {{schema}}.{} {index};\n",
                spec.name
            ));
        }
        ddl.push('\n');
    }
    ddl
}

/// When and where an event happened: with an object's own time and where
/// its snapshot came from, a [`Version`].
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The envelope's `timestamp`.
    pub occurred: DateTime<Utc>,
    pub seq: i64,
}

impl Stamp {
    pub fn version(self, at: DateTime<Utc>, rank: Rank) -> Version {
        Version {
            at,
            rank,
            occurred: self.occurred,
            seq: self.seq,
        }
    }
}

/// One family: the events it decodes (a type prefix, and the types of it,
/// or all of them) and how.
#[derive(Debug)]
pub struct Family {
    pub prefix: &'static str,
    pub events: Option<&'static [&'static str]>,
    pub decode: for<'a> fn(&str, &'a RawValue, Stamp, &mut Changes<'a>) -> Result<(), String>,
}

/// Every family, by the events it decodes.
pub const FAMILIES: &[Family] = &[
    customers::FAMILY,
    members::FAMILY,
    seats::FAMILY,
    subscriptions::FAMILY,
    benefit_grants::FAMILY,
    orders::FAMILY,
    checkouts::FAMILY,
    catalog::PRODUCT_FAMILY,
    catalog::BENEFIT_FAMILY,
];

/// The family of `event_type`, if any projection uses it.
pub fn family_of(event_type: &str) -> Option<&'static Family> {
    let prefix = event_type.split('.').next()?;
    FAMILIES
        .iter()
        .find(|f| f.prefix == prefix && f.events.is_none_or(|events| events.contains(&event_type)))
}

/// Parses a family's payload; the error is the reason stored for a failure.
pub fn parse<'a, T>(raw: &'a RawValue) -> Result<T, String>
where
    T: serde::Deserialize<'a>,
{
    serde_json::from_str(raw.get())
        .map_err(|e| format!("`data` does not have the expected shape: {e}"))
}

/// An embedded object, unless absent or null.
pub fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// A new object change of `table`. Its `columns` are the values of the
/// table's [`ColumnSpec`]s, in their order; debug builds (every test) check
/// that they agree in number and kind.
pub fn change<'a>(
    table: Table,
    id: std::borrow::Cow<'a, str>,
    version: Version,
    snapshot: &'a str,
    columns: Vec<Column<'a>>,
) -> ObjectChange<'a> {
    debug_assert!(
        columns_fit(table.columns(), &columns),
        "{}: columns {columns:?} do not fit {:?}",
        table.name(),
        table.columns()
    );
    ObjectChange {
        table,
        id,
        version,
        snapshot: std::borrow::Cow::Borrowed(snapshot),
        columns,
    }
}

/// Whether `values` are one per column of `specs`, each of its column's kind.
pub fn columns_fit(specs: &[ColumnSpec], values: &[Column<'_>]) -> bool {
    specs.len() == values.len()
        && specs.iter().zip(values).all(|(spec, value)| {
            let kind = match value {
                Column::Text(_) => "text",
                Column::Time(_) => "timestamptz",
                Column::Bool(_) => "boolean",
            };
            spec.sql_type == kind
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_a_family_and_a_unique_name() {
        let mut names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Table::ALL.len());
        let ddl = object_tables_ddl();
        for table in Table::ALL {
            assert!(ddl.contains(&format!("create table {{schema}}.{} (", table.name())));
        }
    }

    #[test]
    fn events_find_their_family() {
        for (event_type, prefix) in [
            ("customer.state_changed", Some("customer")),
            ("member.deleted", Some("member")),
            ("customer_seat.revoked", Some("customer_seat")),
            ("subscription.uncanceled", Some("subscription")),
            ("benefit_grant.cycled", Some("benefit_grant")),
            ("product.created", Some("product")),
            ("benefit.updated", Some("benefit")),
            ("customer.merged", None),
            ("refund.created", None),
            ("organization.updated", None),
        ] {
            assert_eq!(
                family_of(event_type).map(|f| f.prefix),
                prefix,
                "{event_type}"
            );
        }
    }
}
