//! Seats of seat-based products (`customer_seat.assigned|claimed|revoked`).
//!
//! A revoked seat names no member and no customer (Polar clears them), yet
//! the person check must know whose access it ended. So `seat_holders`
//! keeps, per seat, the member (and billing customer) of its newest snapshot
//! that names one: a row of its own, newest-wins like any other, so every
//! delivery order agrees on it. Its snapshot is that member object.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, members, optional, parse, required,
    text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const SEATS: TableSpec = TableSpec {
    name: "customer_seats",
    snapshot: Snapshot::Jsonb,
    columns: &[
        optional("customer_id", "text"),
        optional("subscription_id", "text"),
        optional("order_id", "text"),
        required("status", "text"),
        optional("member_id", "text"),
        optional("revoked_at", "timestamptz"),
        required("created_at", "timestamptz"),
    ],
    indexes: &[
        "(subscription_id) where subscription_id is not null",
        "(order_id) where order_id is not null",
    ],
    touches,
};

pub const HOLDERS: TableSpec = TableSpec {
    name: "seat_holders",
    snapshot: Snapshot::Text,
    columns: &[
        optional("customer_id", "text"),
        required("member_id", "text"),
    ],
    indexes: &["(member_id)"],
    touches,
};

/// Both tables keep the customer first (a revoked seat has none); the
/// member is a seat's fifth column, a holder's second.
fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    let customer = text_at(columns, 0);
    Touch {
        look_up: customer.is_none(),
        customer,
        member: text_at(columns, if columns.len() == 2 { 1 } else { 4 }),
        ..Touch::default()
    }
}

pub const FAMILY: Family = Family {
    prefix: "customer_seat",
    events: Some(&[
        "customer_seat.assigned",
        "customer_seat.claimed",
        "customer_seat.revoked",
    ]),
    decode,
};

#[derive(Deserialize)]
struct SeatData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    order_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    member_id: Option<Cow<'a, str>>,
    #[serde(default)]
    revoked_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    member: Option<&'a RawValue>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let seat: SeatData<'_> = parse(data)?;
    members::push_embedded(changes, seat.member, stamp)?;
    let version = stamp.version(seat.modified_at.unwrap_or(seat.created_at), Rank::OwnEvent);
    if let Some(member_id) = &seat.member_id {
        changes.objects.push(change(
            Table::SeatHolders,
            seat.id.clone(),
            version,
            seat.member.map_or("null", RawValue::get),
            vec![
                Column::Text(seat.customer_id.clone()),
                Column::Text(Some(member_id.clone())),
            ],
        ));
    }
    changes.objects.push(change(
        Table::CustomerSeats,
        seat.id,
        version,
        data.get(),
        vec![
            Column::Text(seat.customer_id),
            Column::Text(seat.subscription_id),
            Column::Text(seat.order_id),
            Column::Text(Some(seat.status)),
            Column::Text(seat.member_id),
            Column::Time(seat.revoked_at),
            Column::Time(Some(seat.created_at)),
        ],
    ));
    Ok(())
}
