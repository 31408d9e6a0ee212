//! Customers: `customer.created|updated|deleted`, the customer part of
//! `customer.state_changed` (whose lists become a [`StateChange`]), and the
//! customers embedded in other objects' events.
//!
//! A deleted customer keeps its row (with `deleted_at`): later events about
//! it must still lose to the deletion's version.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, SqlInstant, Stamp, Table, TableSpec, Touch, change, free_text, objects,
    optional, parse, present, required, text_at, touches_nobody,
};
use crate::projection::decode::{Changes, Column, ObjectChange, StateChange};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "customers",
    snapshot: Snapshot::Jsonb,
    columns: &[
        free_text("external_id"),
        free_text("email"),
        optional("deleted_at", "timestamptz"),
        // `individual` or `team`: a team's own external id is its owner
        // member's, so the person check reads it.
        optional("type", "text"),
        // What the read API lists, filters and sorts by.
        required("created_at", "timestamptz"),
        free_text("name"),
        free_text("billing_name"),
    ],
    indexes: &[
        "using hash (external_id) where external_id is not null",
        // The default order of `GET /v1/customers/`: newest first, ties by id.
        "(created_at desc, id) where deleted_at is null",
        "using hash (lower(email)) where deleted_at is null",
    ],
    touches,
};

/// Every version of every customer as its own event carried it (not the
/// copies embedded elsewhere): Polar copies an individual customer's new
/// email to its owner member without a `member.updated`, version by
/// version, so serving the member as Polar does needs the customer's email
/// history after the member's own version (see `api::served`). One row per
/// version; the id is the customer's id and the version's time.
pub const VERSIONS: TableSpec = TableSpec {
    name: "customer_versions",
    snapshot: Snapshot::Text,
    columns: &[
        required("customer_id", "text"),
        free_text("email"),
        optional("type", "text"),
        optional("modified_at", "timestamptz"),
    ],
    indexes: &["(customer_id, v_at)"],
    touches: touches_nobody,
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
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    billing_name: Option<Cow<'a, str>>,
}

fn decode<'a>(
    event_type: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let c: CustomerData<'_> = parse(data)?;
    if event_type == "customer.state_changed" {
        check_state_lists(data)?;
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
        let version = stamp.version(c.modified_at.unwrap_or(c.created_at), Rank::OwnEvent);
        changes.objects.push(change(
            Table::CustomerVersions,
            Cow::Owned(format!(
                "{}@{}",
                c.id,
                version.at.to_rfc3339_opts(SecondsFormat::Micros, true)
            )),
            version,
            "",
            vec![
                Column::Text(Some(c.id.clone())),
                Column::Text(c.email.clone()),
                Column::Text(c.customer_type.clone()),
                Column::Time(c.modified_at),
            ],
        ));
        changes
            .objects
            .push(customer_change(c, data, stamp, Rank::OwnEvent));
    }
    Ok(())
}

/// The lists of a CustomerState, as far as SQL reads into them: the
/// effective views take each item's ids (keys of their rows) and cast its
/// `created_at`; the meters' read API sorts by their times and amounts.
#[derive(Deserialize)]
struct StateLists<'a> {
    #[serde(borrow, default)]
    active_subscriptions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    granted_benefits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    active_meters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ListedSubscription<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "created_at")]
    _created_at: SqlInstant,
}

#[derive(Deserialize)]
struct ListedGrant<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    benefit_id: Cow<'a, str>,
    #[serde(rename = "created_at")]
    _created_at: SqlInstant,
}

/// Checked where present (read only to be checked): a meter's API sorts by
/// these.
#[derive(Deserialize)]
struct ListedMeter {
    #[serde(default, rename = "created_at")]
    _created_at: Option<SqlInstant>,
    #[serde(default, rename = "modified_at")]
    _modified_at: Option<SqlInstant>,
    #[serde(default, rename = "balance")]
    _balance: Option<f64>,
    #[serde(default, rename = "consumed_units")]
    _consumed_units: Option<f64>,
    #[serde(default, rename = "credited_units")]
    _credited_units: Option<f64>,
}

/// Refuses a state whose lists SQL could not read: not arrays of objects,
/// items without their ids and creation times, ids longer than an index
/// entry, times Postgres cannot parse, meter amounts that are not numbers.
fn check_state_lists(data: &RawValue) -> Result<(), String> {
    let lists: StateLists<'_> = parse(data)?;
    let subscriptions: Vec<ListedSubscription<'_>> =
        objects(lists.active_subscriptions, "active_subscriptions")?;
    let grants: Vec<ListedGrant<'_>> = objects(lists.granted_benefits, "granted_benefits")?;
    let _: Vec<ListedMeter> = objects(lists.active_meters, "active_meters")?;
    let ids = subscriptions
        .iter()
        .map(|s| ("active_subscriptions[].id", &s.id))
        .chain(grants.iter().map(|g| ("granted_benefits[].id", &g.id)))
        .chain(
            grants
                .iter()
                .map(|g| ("granted_benefits[].benefit_id", &g.benefit_id)),
        );
    for (what, id) in ids {
        if id.len() > super::MAX_ID_BYTES {
            return Err(super::too_long(what, id.len()));
        }
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
            Column::Time(Some(c.created_at)),
            Column::Text(c.name),
            Column::Text(c.billing_name),
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
