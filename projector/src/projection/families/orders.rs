//! Orders (`order.*`), with their embedded customer. An order's product is
//! in a reduced shape and is not projected: it would replace full product
//! snapshots with partial ones.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, customers, optional, parse, required,
    text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "orders",
    snapshot: Snapshot::Text,
    columns: &[
        optional("customer_id", "text"),
        optional("subscription_id", "text"),
        required("status", "text"),
        // Filters and sort keys of `GET /v1/orders/`.
        optional("product_id", "text"),
        optional("discount_id", "text"),
        optional("checkout_id", "text"),
        required("created_at", "timestamptz"),
        optional("invoice_number", "text"),
        optional("net_amount", "bigint"),
        // The snapshot is kept as text (cheaper to write); the metadata
        // filter reads this.
        optional("metadata", "jsonb"),
    ],
    indexes: &["(customer_id)", "(created_at desc, id)"],
    touches,
};

fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        ..Touch::default()
    }
}

pub const FAMILY: Family = Family {
    prefix: "order",
    events: None,
    decode,
};

#[derive(Deserialize)]
struct OrderData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    discount_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    checkout_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    invoice_number: Option<Cow<'a, str>>,
    #[serde(default)]
    net_amount: Option<i64>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    /// Read only to be checked: the seats list reads it as a number.
    #[serde(default, rename = "seats")]
    _seats: Option<i64>,
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let o: OrderData<'_> = parse(data)?;
    customers::push_embedded(changes, o.customer, stamp)?;
    changes.objects.push(change(
        Table::Orders,
        o.id,
        stamp.version(o.modified_at.unwrap_or(o.created_at), Rank::OwnEvent),
        data.get(),
        vec![
            Column::Text(o.customer_id),
            Column::Text(o.subscription_id),
            Column::Text(Some(o.status)),
            Column::Text(o.product_id),
            Column::Text(o.discount_id),
            Column::Text(o.checkout_id),
            Column::Time(Some(o.created_at)),
            Column::Text(o.invoice_number),
            Column::Int(o.net_amount),
            Column::Json(o.metadata.map(|m| Cow::Borrowed(m.get()))),
        ],
    ));
    Ok(())
}
