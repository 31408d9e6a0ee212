//! Refunds (`refund.created|updated`): what `GET /v1/refunds/` lists. A
//! refund changes no entitlement (Polar's refunds never revoke benefits by
//! default); the order it refunds says so itself (`order.refunded`).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, optional, parse, required, text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "refunds",
    snapshot: Snapshot::Text,
    columns: &[
        optional("customer_id", "text"),
        optional("order_id", "text"),
        optional("subscription_id", "text"),
        required("status", "text"),
        optional("amount", "bigint"),
        required("created_at", "timestamptz"),
    ],
    indexes: &["(created_at desc, id)", "(customer_id)"],
    touches,
};

fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        ..Touch::default()
    }
}

pub const FAMILY: Family = Family {
    prefix: "refund",
    events: Some(&["refund.created", "refund.updated"]),
    decode,
};

#[derive(Deserialize)]
struct RefundData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    order_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(default)]
    amount: Option<i64>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let r: RefundData<'_> = parse(data)?;
    changes.objects.push(change(
        Table::Refunds,
        r.id,
        stamp.version(r.modified_at.unwrap_or(r.created_at), Rank::OwnEvent),
        data.get(),
        vec![
            Column::Text(r.customer_id),
            Column::Text(r.order_id),
            Column::Text(r.subscription_id),
            Column::Text(Some(r.status)),
            Column::Int(r.amount),
            Column::Time(Some(r.created_at)),
        ],
    ));
    Ok(())
}
