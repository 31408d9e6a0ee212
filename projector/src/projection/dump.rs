//! A canonical dump of a generation: every row of every projection table as
//! `jsonb` text (keys sorted by Postgres), in key order. Two generations built
//! from the same events dump byte for byte the same; `projector verify` and the
//! order-independence tests compare dumps.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::families::Table;
use super::generation::Generation;

/// The tables of the cross-family DDL with the expression of their keys.
const CROSS_FAMILY_TABLES: &[(&str, &str)] = &[
    ("customer_states", "customer_id"),
    ("apply_failures", "seq::text"),
    ("effective_grants", "customer_id || '/' || grant_id"),
    (
        "effective_subscriptions",
        "customer_id || '/' || subscription_id",
    ),
];

/// Each table with the expression of its key: every object table (by id),
/// then the others.
pub fn tables() -> Vec<(&'static str, &'static str)> {
    Table::ALL
        .iter()
        .map(|table| (table.name(), "id"))
        .chain(CROSS_FAMILY_TABLES.iter().copied())
        .collect()
}

/// One table's rows: key → row as canonical JSON text.
pub type TableDump = BTreeMap<String, String>;

/// Every table of `generation`, by table name.
pub async fn dump(
    connection: &mut PgConnection,
    generation: &Generation,
) -> sqlx::Result<BTreeMap<&'static str, TableDump>> {
    let mut dumped = BTreeMap::new();
    for (table, key) in tables() {
        // Table names and key expressions are constants; the schema name is a
        // validated Generation.
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "select {key}, to_jsonb(t)::text from {} t order by 1",
            generation.qualify(table)
        ))
        .fetch_all(&mut *connection)
        .await?;
        dumped.insert(table, rows.into_iter().collect());
    }
    Ok(dumped)
}

/// A difference between two dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowDifference {
    /// In the first dump only.
    Missing {
        table: &'static str,
        key: String,
        expected: String,
    },
    /// In the second dump only.
    Unexpected {
        table: &'static str,
        key: String,
        actual: String,
    },
    /// In both, different.
    Changed {
        table: &'static str,
        key: String,
        expected: String,
        actual: String,
    },
}

impl RowDifference {
    pub fn table(&self) -> &'static str {
        match self {
            Self::Missing { table, .. }
            | Self::Unexpected { table, .. }
            | Self::Changed { table, .. } => table,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Self::Missing { key, .. }
            | Self::Unexpected { key, .. }
            | Self::Changed { key, .. } => key,
        }
    }
}

impl std::fmt::Display for RowDifference {
    /// One difference per line block: the table and key, then what the
    /// rebuild has (`expected`) and what the live generation has (`live`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing {
                table,
                key,
                expected,
            } => write!(
                f,
                "{table} {key}: missing from live
  expected {expected}"
            ),
            Self::Unexpected { table, key, actual } => {
                write!(
                    f,
                    "{table} {key}: only in live
  live     {actual}"
                )
            }
            Self::Changed {
                table,
                key,
                expected,
                actual,
            } => write!(
                f,
                "{table} {key}: differs
  expected {expected}
  live     {actual}"
            ),
        }
    }
}

/// Every row that differs between `expected` and `actual`.
pub fn compare(
    expected: &BTreeMap<&'static str, TableDump>,
    actual: &BTreeMap<&'static str, TableDump>,
) -> Vec<RowDifference> {
    let empty = TableDump::new();
    let mut differences = Vec::new();
    for (table, _) in tables() {
        let want = expected.get(table).unwrap_or(&empty);
        let have = actual.get(table).unwrap_or(&empty);
        for (key, expected_row) in want {
            match have.get(key) {
                None => differences.push(RowDifference::Missing {
                    table,
                    key: key.clone(),
                    expected: expected_row.clone(),
                }),
                Some(actual_row) if actual_row != expected_row => {
                    differences.push(RowDifference::Changed {
                        table,
                        key: key.clone(),
                        expected: expected_row.clone(),
                        actual: actual_row.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for (key, actual_row) in have {
            if !want.contains_key(key) {
                differences.push(RowDifference::Unexpected {
                    table,
                    key: key.clone(),
                    actual: actual_row.clone(),
                });
            }
        }
    }
    differences
}
