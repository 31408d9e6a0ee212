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
    ],
    indexes: &["(customer_id)"],
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
        ],
    ));
    Ok(())
}
