//! Members: the people who use what a customer pays for (`member.*`, and
//! the members embedded in seat and grant payloads: a seat assigned by email
//! creates its member without a `member.created`).
//!
//! An external id is unique only within its customer, so one may appear
//! under several. Polar's Member has no deletion time: `member.deleted`
//! carries the member as it was, and `deleted_at` is set from it. Its
//! version is the deletion's own, which no embedded copy of the member can
//! beat.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, change, free_text, optional, parse, present,
    required, text_at,
};
use crate::projection::decode::{Changes, Column, ObjectChange};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "members",
    snapshot: Snapshot::Jsonb,
    columns: &[
        required("customer_id", "text"),
        free_text("external_id"),
        free_text("email"),
        optional("role", "text"),
        required("created_at", "timestamptz"),
        optional("deleted_at", "timestamptz"),
    ],
    indexes: &[
        "using hash (external_id) where external_id is not null",
        "(customer_id)",
    ],
    touches,
};

fn touches(id: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        external_id: text_at(columns, 1),
        member: Some(id.to_owned()),
        recompute: false,
        look_up: false,
    }
}

pub const FAMILY: Family = Family {
    prefix: "member",
    events: Some(&["member.created", "member.updated", "member.deleted"]),
    decode,
};

#[derive(Deserialize)]
struct MemberData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
    #[serde(borrow, default)]
    external_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
}

fn decode<'a>(
    event_type: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let m: MemberData<'_> = parse(data)?;
    let deleted_at =
        (event_type == "member.deleted").then(|| m.modified_at.unwrap_or(stamp.occurred));
    changes
        .objects
        .push(member_change(m, data, deleted_at, stamp, Rank::OwnEvent));
    Ok(())
}

fn member_change<'a>(
    m: MemberData<'a>,
    raw: &'a RawValue,
    deleted_at: Option<DateTime<Utc>>,
    stamp: Stamp,
    rank: Rank,
) -> ObjectChange<'a> {
    change(
        Table::Members,
        m.id,
        stamp.version(m.modified_at.unwrap_or(m.created_at), rank),
        raw.get(),
        vec![
            Column::Text(Some(m.customer_id)),
            Column::Text(m.external_id),
            Column::Text(m.email),
            Column::Text(m.role),
            Column::Time(Some(m.created_at)),
            Column::Time(deleted_at),
        ],
    )
}

/// The member embedded in a seat's or a grant's event.
pub fn push_embedded<'a>(
    changes: &mut Changes<'a>,
    raw: Option<&'a RawValue>,
    stamp: Stamp,
) -> Result<(), String> {
    if let Some(raw) = present(raw) {
        let m: MemberData<'_> = parse(raw).map_err(|e| format!("embedded member: {e}"))?;
        changes
            .objects
            .push(member_change(m, raw, None, stamp, Rank::Embedded));
    }
    Ok(())
}
