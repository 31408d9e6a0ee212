//! The catalog: what the organization sells and how. Products
//! (`product.created|updated`), benefits (`benefit.created|updated`) and the
//! full snapshots of both embedded in subscriptions and grants; discounts
//! (`discount.created|updated|deleted`); meters, which no webhook announces
//! (reconcile reads them into the log as `meter.updated`); and the
//! organization itself (`organization.updated`).
//!
//! The tables are small (an organization has tens of these, not thousands),
//! so the read API filters and sorts them from their jsonb snapshots.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, change, objects, optional, parse, present, required,
    touches_nobody,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

/// jsonb: the read API filters and sorts products by their prices,
/// benefits and metadata.
pub const PRODUCTS: TableSpec = TableSpec {
    name: "products",
    snapshot: Snapshot::Jsonb,
    columns: &[required("created_at", "timestamptz")],
    indexes: &[],
    touches: touches_nobody,
};

/// jsonb: the state's granted benefits join the benefit's current type and
/// metadata in.
pub const BENEFITS: TableSpec = TableSpec {
    name: "benefits",
    snapshot: Snapshot::Jsonb,
    columns: &[required("created_at", "timestamptz")],
    indexes: &[],
    touches: touches_nobody,
};

/// A deleted discount keeps its row (with `deleted_at`), so that older
/// events about it still lose to the deletion.
pub const DISCOUNTS: TableSpec = TableSpec {
    name: "discounts",
    snapshot: Snapshot::Jsonb,
    columns: &[
        required("created_at", "timestamptz"),
        optional("deleted_at", "timestamptz"),
        optional("ends_at", "timestamptz"),
    ],
    indexes: &[],
    touches: touches_nobody,
};

pub const METERS: TableSpec = TableSpec {
    name: "meters",
    snapshot: Snapshot::Jsonb,
    columns: &[required("created_at", "timestamptz")],
    indexes: &[],
    touches: touches_nobody,
};

pub const ORGANIZATIONS: TableSpec = TableSpec {
    name: "organizations",
    snapshot: Snapshot::Jsonb,
    columns: &[required("created_at", "timestamptz")],
    indexes: &[],
    touches: touches_nobody,
};

pub const PRODUCT_FAMILY: Family = Family {
    prefix: "product",
    events: Some(&["product.created", "product.updated"]),
    decode: |_, data, stamp, changes| {
        check_product(data)?;
        push(changes, Table::Products, data, stamp, Rank::OwnEvent)
    },
};

/// What the products list sorts and filters by, checked where present:
/// `prices` and `benefits` lists of objects, a price's amounts numbers.
#[derive(Deserialize)]
struct ProductLists<'a> {
    #[serde(borrow, default)]
    prices: Option<&'a RawValue>,
    #[serde(borrow, default)]
    benefits: Option<&'a RawValue>,
}

/// Read only to be checked.
#[derive(Deserialize)]
struct Price {
    #[serde(default, rename = "price_amount")]
    _price_amount: Option<f64>,
    #[serde(default, rename = "minimum_amount")]
    _minimum_amount: Option<f64>,
    #[serde(default, rename = "is_archived")]
    _is_archived: Option<bool>,
}

fn check_product(data: &RawValue) -> Result<(), String> {
    let lists: ProductLists<'_> = parse(data)?;
    let _: Vec<Price> = objects(lists.prices, "prices")?;
    let _: Vec<&RawValue> = objects(lists.benefits, "benefits")?;
    Ok(())
}

pub const BENEFIT_FAMILY: Family = Family {
    prefix: "benefit",
    events: Some(&["benefit.created", "benefit.updated"]),
    decode: |_, data, stamp, changes| push(changes, Table::Benefits, data, stamp, Rank::OwnEvent),
};

pub const DISCOUNT_FAMILY: Family = Family {
    prefix: "discount",
    events: Some(&["discount.created", "discount.updated", "discount.deleted"]),
    decode: decode_discount,
};

/// Meters come only from reconcile, which logs each as `meter.updated`.
pub const METER_FAMILY: Family = Family {
    prefix: "meter",
    events: Some(&["meter.created", "meter.updated"]),
    decode: |_, data, stamp, changes| push(changes, Table::Meters, data, stamp, Rank::OwnEvent),
};

pub const ORGANIZATION_FAMILY: Family = Family {
    prefix: "organization",
    events: Some(&["organization.updated"]),
    decode: |_, data, stamp, changes| {
        push(changes, Table::Organizations, data, stamp, Rank::OwnEvent)
    },
};

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(default)]
    deleted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
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
        vec![Column::Time(Some(meta.created_at))],
    ));
    Ok(())
}

/// A discount deleted by `discount.deleted` counts as deleted from that
/// event's version on, whether or not the payload says when.
fn decode_discount<'a>(
    event_type: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let meta: Meta<'_> = parse(data)?;
    let at = meta.modified_at.unwrap_or(meta.created_at);
    let deleted_at = meta
        .deleted_at
        .or_else(|| (event_type == "discount.deleted").then_some(at));
    changes.objects.push(change(
        Table::Discounts,
        meta.id,
        stamp.version(at, Rank::OwnEvent),
        data.get(),
        vec![
            Column::Time(Some(meta.created_at)),
            Column::Time(deleted_at),
            Column::Time(meta.ends_at),
        ],
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
        Some(raw) => {
            if table == Table::Products {
                check_product(raw).map_err(|e| format!("embedded product: {e}"))?;
            }
            push(changes, table, raw, stamp, Rank::Embedded)
                .map_err(|e| format!("embedded {}: {e}", table.name()))
        }
        None => Ok(()),
    }
}
