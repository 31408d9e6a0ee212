//! Checkouts (`checkout.*`). A checkout's product is in a reduced shape and
//! is not projected.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, free_text, optional, parse, required,
    text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "checkouts",
    snapshot: Snapshot::Text,
    columns: &[
        optional("customer_id", "text"),
        free_text("external_customer_id"),
        required("status", "text"),
        // Filters and sort keys of `GET /v1/checkouts/`.
        optional("product_id", "text"),
        free_text("customer_email"),
        required("created_at", "timestamptz"),
        optional("expires_at", "timestamptz"),
        // Whether a discount it names was redeemed (confirmed or succeeded):
        // Polar counts redemptions with a trigger, no webhook says.
        optional("discount_id", "text"),
    ],
    indexes: &[
        "(created_at desc, id)",
        "(discount_id) where discount_id is not null",
    ],
    touches,
};

fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        ..Touch::default()
    }
}

pub const FAMILY: Family = Family {
    prefix: "checkout",
    events: None,
    decode,
};

#[derive(Deserialize)]
struct CheckoutData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    external_customer_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    customer_email: Option<Cow<'a, str>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    discount_id: Option<Cow<'a, str>>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let c: CheckoutData<'_> = parse(data)?;
    changes.objects.push(change(
        Table::Checkouts,
        c.id,
        stamp.version(c.modified_at.unwrap_or(c.created_at), Rank::OwnEvent),
        data.get(),
        vec![
            Column::Text(c.customer_id),
            Column::Text(c.external_customer_id),
            Column::Text(Some(c.status)),
            Column::Text(c.product_id),
            Column::Text(c.customer_email),
            Column::Time(Some(c.created_at)),
            Column::Time(c.expires_at),
            Column::Text(c.discount_id),
        ],
    ));
    Ok(())
}
