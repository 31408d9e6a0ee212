//! Subscriptions (`subscription.*`), with their embedded customer and
//! product (both full snapshots).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, catalog, change, customers, objects,
    optional, parse, required, text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "subscriptions",
    snapshot: Snapshot::Jsonb,
    columns: &[
        required("customer_id", "text"),
        optional("product_id", "text"),
        required("status", "text"),
        optional("started_at", "timestamptz"),
        required("created_at", "timestamptz"),
        // For the read API's sorts: typed here, so a sort never casts text.
        optional("current_period_end", "timestamptz"),
        optional("ended_at", "timestamptz"),
        optional("ends_at", "timestamptz"),
        optional("amount", "bigint"),
        // Filters of `GET /v1/subscriptions/`.
        optional("discount_id", "text"),
        required("cancel_at_period_end", "boolean"),
        optional("customer_cancellation_reason", "text"),
        optional("canceled_at", "timestamptz"),
        optional("recurring_interval", "text"),
    ],
    indexes: &[
        "(customer_id)",
        // The default order of the list: newest started first.
        "(started_at desc, created_at, id) where started_at is not null",
    ],
    touches,
};

/// The effective subscriptions read this table.
fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        recompute: true,
        ..Touch::default()
    }
}

pub const FAMILY: Family = Family {
    prefix: "subscription",
    events: None,
    decode,
};

#[derive(Deserialize)]
struct SubscriptionData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(default)]
    started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    current_period_end: Option<DateTime<Utc>>,
    #[serde(default)]
    ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(borrow, default)]
    discount_id: Option<Cow<'a, str>>,
    #[serde(default)]
    cancel_at_period_end: bool,
    #[serde(borrow, default)]
    customer_cancellation_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    canceled_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    recurring_interval: Option<Cow<'a, str>>,
    /// Read only to be checked: the seats list reads it as a number.
    #[serde(default, rename = "seats")]
    _seats: Option<i64>,
    /// The effective view walks them (`jsonb_array_elements`).
    #[serde(borrow, default)]
    meters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    product: Option<&'a RawValue>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let s: SubscriptionData<'_> = parse(data)?;
    let _: Vec<&RawValue> = objects(s.meters, "meters")?;
    customers::push_embedded(changes, s.customer, stamp)?;
    catalog::push_embedded(changes, Table::Products, s.product, stamp)?;
    changes.objects.push(change(
        Table::Subscriptions,
        s.id,
        stamp.version(s.modified_at.unwrap_or(s.created_at), Rank::OwnEvent),
        data.get(),
        vec![
            Column::Text(Some(s.customer_id)),
            Column::Text(s.product_id),
            Column::Text(Some(s.status)),
            Column::Time(s.started_at),
            Column::Time(Some(s.created_at)),
            Column::Time(s.current_period_end),
            Column::Time(s.ended_at),
            Column::Time(s.ends_at),
            Column::Int(s.amount),
            Column::Text(s.discount_id),
            Column::Bool(s.cancel_at_period_end),
            Column::Text(s.customer_cancellation_reason),
            Column::Time(s.canceled_at),
            Column::Text(s.recurring_interval),
        ],
    ));
    Ok(())
}
