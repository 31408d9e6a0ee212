//! The catalog: products (`product.created|updated`) and benefits
//! (`benefit.created|updated`), and the full snapshots of them embedded in
//! subscriptions and grants. Only the snapshot is kept; nothing queries them
//! by a column.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Family, Snapshot, Stamp, Table, TableSpec, change, parse, present, touches_nobody};
use crate::projection::decode::Changes;
use crate::projection::version::Rank;

pub const PRODUCTS: TableSpec = TableSpec {
    name: "products",
    snapshot: Snapshot::Text,
    columns: &[],
    indexes: &[],
    touches: touches_nobody,
};

/// jsonb: the state's granted benefits join the benefit's current type and
/// metadata in.
pub const BENEFITS: TableSpec = TableSpec {
    name: "benefits",
    snapshot: Snapshot::Jsonb,
    columns: &[],
    indexes: &[],
    touches: touches_nobody,
};

pub const PRODUCT_FAMILY: Family = Family {
    prefix: "product",
    events: Some(&["product.created", "product.updated"]),
    decode: |_, data, stamp, changes| push(changes, Table::Products, data, stamp, Rank::OwnEvent),
};

pub const BENEFIT_FAMILY: Family = Family {
    prefix: "benefit",
    events: Some(&["benefit.created", "benefit.updated"]),
    decode: |_, data, stamp, changes| push(changes, Table::Benefits, data, stamp, Rank::OwnEvent),
};

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
}

fn push<'a>(
    changes: &mut Changes<'a>,
    table: Table,
    raw: &'a RawValue,
    stamp: Stamp,
    rank: Rank,
) -> Result<(), String> {
    let meta: Meta<'_> = parse(raw)?;
    changes.objects.push(change(
        table,
        meta.id,
        stamp.version(meta.modified_at.unwrap_or(meta.created_at), rank),
        raw.get(),
        Vec::new(),
    ));
    Ok(())
}

/// A product or benefit embedded in another object's event.
pub fn push_embedded<'a>(
    changes: &mut Changes<'a>,
    table: Table,
    raw: Option<&'a RawValue>,
    stamp: Stamp,
) -> Result<(), String> {
    match present(raw) {
        Some(raw) => push(changes, table, raw, stamp, Rank::Embedded)
            .map_err(|e| format!("embedded {}: {e}", table.name())),
        None => Ok(()),
    }
}
