//! Customers: `customer.created|updated|deleted`, the customer part of
//! `customer.state_changed` (whose lists become a [`StateChange`]), and the
//! customers embedded in other objects' events.
//!
//! A deleted customer keeps its row (with `deleted_at`): later events about
//! it must still lose to the deletion's version.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, optional, parse, present, text_at,
};
use crate::projection::decode::{Changes, Column, ObjectChange, StateChange};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "customers",
    snapshot: Snapshot::Jsonb,
    columns: &[
        optional("external_id", "text"),
        optional("email", "text"),
        optional("deleted_at", "timestamptz"),
        // `individual` or `team`: a team's own external id is its owner
        // member's, so the person check reads it.
        optional("type", "text"),
    ],
    indexes: &["(external_id) where external_id is not null"],
    touches,
};

fn touches(id: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: Some(id.to_owned()),
        external_id: text_at(columns, 0),
        // A customer row alone does not change who holds what.
        ..Touch::default()
    }
}

/// The snapshot keys of a CustomerState that are not the customer's: the
/// store strips them from a customer row taken from a state.
pub const STATE_LISTS: [&str; 3] = ["active_subscriptions", "granted_benefits", "active_meters"];

pub const FAMILY: Family = Family {
    prefix: "customer",
    events: Some(&[
        "customer.created",
        "customer.updated",
        "customer.deleted",
        "customer.state_changed",
    ]),
    decode,
};

#[derive(Deserialize)]
struct CustomerData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    external_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(default)]
    deleted_at: Option<DateTime<Utc>>,
    #[serde(borrow, default, rename = "type")]
    customer_type: Option<Cow<'a, str>>,
}

fn decode<'a>(
    event_type: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let c: CustomerData<'_> = parse(data)?;
    if event_type == "customer.state_changed" {
        changes.state = Some(StateChange {
            customer_id: c.id.clone(),
            state_at: stamp.occurred,
            seq: stamp.seq,
            snapshot: Cow::Borrowed(data.get()),
        });
        // The state is the customer plus its lists; the customer part is a
        // customer snapshot like any other, ranked as embedded.
        changes
            .objects
            .push(customer_change(c, data, stamp, Rank::Embedded));
    } else {
        changes
            .objects
            .push(customer_change(c, data, stamp, Rank::OwnEvent));
    }
    Ok(())
}

fn customer_change<'a>(
    c: CustomerData<'a>,
    raw: &'a RawValue,
    stamp: Stamp,
    rank: Rank,
) -> ObjectChange<'a> {
    change(
        Table::Customers,
        c.id,
        stamp.version(c.modified_at.unwrap_or(c.created_at), rank),
        raw.get(),
        vec![
            Column::Text(c.external_id),
            Column::Text(c.email),
            Column::Time(c.deleted_at),
            Column::Text(c.customer_type),
        ],
    )
}

/// The customer embedded in another object's event (a full Customer).
pub fn push_embedded<'a>(
    changes: &mut Changes<'a>,
    raw: Option<&'a RawValue>,
    stamp: Stamp,
) -> Result<(), String> {
    if let Some(raw) = present(raw) {
        let c: CustomerData<'_> = parse(raw).map_err(|e| format!("embedded customer: {e}"))?;
        changes
            .objects
            .push(customer_change(c, raw, stamp, Rank::Embedded));
    }
    Ok(())
}
