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
    /// The table and key, then for a row in both the fields that differ, one
    /// a line (`path: expected → live`, expected being what a rebuild from
    /// the log has). A row on one side only is named, not printed: rows are
    /// kilobytes of JSON ([`RowDifference::full`] prints them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { table, key, .. } => write!(f, "{table} {key}: missing from live"),
            Self::Unexpected { table, key, .. } => write!(f, "{table} {key}: only in live"),
            Self::Changed {
                table,
                key,
                expected,
                actual,
            } => {
                write!(f, "{table} {key}: differs")?;
                for field in field_differences(expected, actual) {
                    write!(f, "\n  {field}")?;
                }
                Ok(())
            }
        }
    }
}

impl RowDifference {
    /// The difference with the whole rows: what a rebuild has (`expected`)
    /// and what the live generation has (`live`).
    pub fn full(&self) -> String {
        match self {
            Self::Missing { expected, .. } => format!("{self}\n  expected {expected}"),
            Self::Unexpected { actual, .. } => format!("{self}\n  live     {actual}"),
            Self::Changed {
                expected, actual, ..
            } => format!("{self}\n  expected {expected}\n  live     {actual}"),
        }
    }
}

/// Longest value printed in a field difference; longer ones are cut.
const MAX_VALUE_CHARS: usize = 120;

/// One differing field of two rows: its path (`snapshot.status`,
/// `snapshot.items[2].id`) and both values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDifference {
    pub path: String,
    /// `None`: the field is absent on that side.
    pub expected: Option<String>,
    pub actual: Option<String>,
}

impl std::fmt::Display for FieldDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: &Option<String>| match value {
            None => "(absent)".to_owned(),
            Some(v) if v.chars().count() > MAX_VALUE_CHARS => {
                let cut: String = v.chars().take(MAX_VALUE_CHARS).collect();
                format!("{cut}…")
            }
            Some(v) => v.clone(),
        };
        write!(
            f,
            "{}: {} → {}",
            self.path,
            show(&self.expected),
            show(&self.actual)
        )
    }
}

/// The leaf fields in which two rows (JSON texts) differ, in path order.
/// Objects are compared key by key and arrays of the same length element by
/// element; anything else that differs is one difference.
pub fn field_differences(expected: &str, actual: &str) -> Vec<FieldDifference> {
    match (
        serde_json::from_str::<serde_json::Value>(expected),
        serde_json::from_str::<serde_json::Value>(actual),
    ) {
        (Ok(expected), Ok(actual)) => {
            let mut out = Vec::new();
            diff_values("", Some(&expected), Some(&actual), &mut out);
            out
        }
        _ => vec![FieldDifference {
            path: "(row)".to_owned(),
            expected: Some(expected.to_owned()),
            actual: Some(actual.to_owned()),
        }],
    }
}

fn diff_values(
    path: &str,
    expected: Option<&serde_json::Value>,
    actual: Option<&serde_json::Value>,
    out: &mut Vec<FieldDifference>,
) {
    use serde_json::Value;
    if expected == actual {
        return;
    }
    let child = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    match (expected, actual) {
        (Some(Value::Object(e)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                diff_values(&child(key), e.get(key), a.get(key), out);
            }
        }
        (Some(Value::Array(e)), Some(Value::Array(a))) if e.len() == a.len() => {
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                diff_values(&format!("{path}[{i}]"), Some(e), Some(a), out);
            }
        }
        _ => out.push(FieldDifference {
            path: if path.is_empty() {
                "(row)".to_owned()
            } else {
                path.to_owned()
            },
            expected: expected.map(Value::to_string),
            actual: actual.map(Value::to_string),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_row_names_only_the_fields_that_differ() {
        let expected = r#"{"id":"s1","status":"active","snapshot":{"amount":2900,"items":[{"id":"a"},{"id":"b"}],"name":"Pro"}}"#;
        let actual = r#"{"id":"s1","status":"canceled","snapshot":{"amount":2900,"items":[{"id":"a"},{"id":"c"}],"extra":true}}"#;
        let lines: Vec<String> = field_differences(expected, actual)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "snapshot.extra: (absent) → true",
                r#"snapshot.items[1].id: "b" → "c""#,
                r#"snapshot.name: "Pro" → (absent)"#,
                r#"status: "active" → "canceled""#,
            ]
        );
        let difference = RowDifference::Changed {
            table: "subscriptions",
            key: "s1".to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        };
        let short = difference.to_string();
        assert!(short.starts_with("subscriptions s1: differs\n  snapshot.extra"));
        assert!(
            !short.contains("2900"),
            "equal fields are not printed: {short}"
        );
        assert!(difference.full().contains(expected) && difference.full().contains(actual));
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(500);
        let line = field_differences(&format!(r#"{{"a":"{long}"}}"#), r#"{"a":1}"#)[0].to_string();
        assert!(line.len() < 200 && line.ends_with("… → 1"), "{line}");
    }
}
