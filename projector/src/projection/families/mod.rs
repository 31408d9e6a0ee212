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
pub mod refunds;
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
    CustomerVersions,
    Refunds,
    Discounts,
    Meters,
    Organizations,
}

impl Table {
    /// Every table, in the order a batch writes them.
    pub const ALL: [Table; 15] = [
        Table::Organizations,
        Table::Customers,
        Table::CustomerVersions,
        Table::Products,
        Table::Benefits,
        Table::Discounts,
        Table::Meters,
        Table::Subscriptions,
        Table::BenefitGrants,
        Table::Orders,
        Table::Checkouts,
        Table::Members,
        Table::CustomerSeats,
        Table::SeatHolders,
        Table::Refunds,
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
            Self::CustomerVersions => &customers::VERSIONS,
            Self::Refunds => &refunds::TABLE,
            Self::Discounts => &catalog::DISCOUNTS,
            Self::Meters => &catalog::METERS,
            Self::Organizations => &catalog::ORGANIZATIONS,
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
///
/// A text column is an identifier or an enum (an id, a status) unless it is
/// declared [`free_text`]: identifiers are at most [`MAX_ID_BYTES`], and an
/// event carrying a longer one is refused when decoded, so a btree index on
/// them can never be refused a row. Free text (an external id, an email: the
/// customer writes it) is kept whole however long, and may only be indexed
/// with `using hash`, which stores a hash of the value, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: &'static str,
    pub sql_type: &'static str,
    pub required: bool,
    pub free_text: bool,
}

pub const fn required(name: &'static str, sql_type: &'static str) -> ColumnSpec {
    ColumnSpec {
        name,
        sql_type,
        required: true,
        free_text: false,
    }
}

pub const fn optional(name: &'static str, sql_type: &'static str) -> ColumnSpec {
    ColumnSpec {
        name,
        sql_type,
        required: false,
        free_text: false,
    }
}

/// An optional text column a customer writes (see [`ColumnSpec`]).
pub const fn free_text(name: &'static str) -> ColumnSpec {
    ColumnSpec {
        name,
        sql_type: "text",
        required: false,
        free_text: true,
    }
}

/// Longest identifier or enum value a payload may carry: Polar's ids are
/// 36-byte UUIDs and its webhook ids at most 256 bytes. Far below what a
/// btree index entry can hold (about 2,700 bytes), even for two in one.
pub const MAX_ID_BYTES: usize = 256;

/// Refuses a change whose id, or an identifier column, is longer than
/// [`MAX_ID_BYTES`]: the database would refuse its index entries.
pub fn check_identifiers(change: &ObjectChange<'_>) -> Result<(), String> {
    let table = change.table.name();
    // A customer version's id is the customer's id and a time: its
    // customer id column is bounded like any other.
    let id_limit = match change.table {
        Table::CustomerVersions => MAX_ID_BYTES + 32,
        _ => MAX_ID_BYTES,
    };
    if change.id.len() > id_limit {
        return Err(too_long(&format!("{table}.id"), change.id.len()));
    }
    for (spec, value) in change.table.columns().iter().zip(&change.columns) {
        if let Column::Text(Some(text)) = value
            && !spec.free_text
            && text.len() > MAX_ID_BYTES
        {
            return Err(too_long(&format!("{table}.{}", spec.name), text.len()));
        }
    }
    Ok(())
}

/// The refusal for an identifier of `bytes` bytes.
pub fn too_long(what: &str, bytes: usize) -> String {
    format!("`{what}` is {bytes} bytes long; identifiers are at most {MAX_ID_BYTES}")
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
    catalog::DISCOUNT_FAMILY,
    catalog::METER_FAMILY,
    catalog::ORGANIZATION_FAMILY,
    refunds::FAMILY,
];

/// The family of `event_type`, if any projection uses it.
pub fn family_of(event_type: &str) -> Option<&'static Family> {
    let prefix = event_type.split('.').next()?;
    FAMILIES
        .iter()
        .find(|f| f.prefix == prefix && f.events.is_none_or(|events| events.contains(&event_type)))
}

/// Parses a family's payload; the error is the reason stored for a failure.
/// Only a JSON object is a payload (serde would also read a struct from an
/// array, whose keys SQL would then not find).
pub fn parse<'a, T>(raw: &'a RawValue) -> Result<T, String>
where
    T: serde::Deserialize<'a>,
{
    if !raw.get().starts_with('{') {
        return Err("`data` is not a JSON object".to_owned());
    }
    serde_json::from_str(raw.get())
        .map_err(|e| format!("`data` does not have the expected shape: {e}"))
}

/// The items of a JSON array of objects, each parsed as `T`; absent or
/// null is none. SQL walks such lists with `jsonb_array_elements` and reads
/// keys of each item: an array of anything else would fail it.
pub fn objects<'a, T>(raw: Option<&'a RawValue>, what: &str) -> Result<Vec<T>, String>
where
    T: serde::Deserialize<'a>,
{
    let Some(raw) = present(raw) else {
        return Ok(Vec::new());
    };
    let items: Vec<&'a RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| format!("`{what}` is not a JSON array"))?;
    items
        .into_iter()
        .map(|item| {
            if !item.get().starts_with('{') {
                return Err(format!("an item of `{what}` is not a JSON object"));
            }
            serde_json::from_str(item.get())
                .map_err(|e| format!("an item of `{what}` does not have the expected shape: {e}"))
        })
        .collect()
}

/// An instant as RFC 3339 text that Postgres's `timestamptz` input also
/// accepts: for times SQL reads out of a snapshot as text. Postgres has no
/// year 0, which chrono allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlInstant(pub DateTime<Utc>);

impl<'de> serde::Deserialize<'de> for SqlInstant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use chrono::Datelike as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let instant = DateTime::parse_from_rfc3339(&text)
            .map_err(|_| serde::de::Error::custom("not an RFC 3339 date-time"))?
            .with_timezone(&Utc);
        if !(1..=9999).contains(&instant.year()) {
            return Err(serde::de::Error::custom("a year outside 1 to 9999"));
        }
        Ok(Self(instant))
    }
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
                Column::Int(_) => "bigint",
                Column::Json(_) => "jsonb",
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

    /// A btree entry holds about 2,700 bytes: free text, which a customer
    /// writes and may make any length, is indexed only by its hash.
    #[test]
    fn free_text_is_indexed_only_by_hash() {
        for table in Table::ALL {
            for column in table.columns().iter().filter(|c| c.free_text) {
                for index in table.spec().indexes {
                    let names_it = index
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| word == column.name);
                    assert!(
                        !names_it || index.starts_with("using hash ("),
                        "{}: index {index:?} on free text {}",
                        table.name(),
                        column.name
                    );
                }
            }
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
            ("refund.created", Some("refund")),
            ("organization.updated", Some("organization")),
            ("discount.deleted", Some("discount")),
            ("order.refunded", Some("order")),
            ("subscription.migrated", Some("subscription")),
        ] {
            assert_eq!(
                family_of(event_type).map(|f| f.prefix),
                prefix,
                "{event_type}"
            );
        }
    }
}
