//! Benefit grants (`benefit_grant.*`), with their embedded customer, benefit
//! and member. `customer_id` is the billing customer; `member_id` is whose
//! grant it is (a team's seat holder, or an individual customer's owner
//! member).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Family, Snapshot, Stamp, Table, TableSpec, Touch, catalog, change, customers, members,
    optional, parse, required, text_at,
};
use crate::projection::decode::{Changes, Column};
use crate::projection::version::Rank;

pub const TABLE: TableSpec = TableSpec {
    name: "benefit_grants",
    snapshot: Snapshot::Jsonb,
    columns: &[
        required("customer_id", "text"),
        required("benefit_id", "text"),
        optional("subscription_id", "text"),
        optional("order_id", "text"),
        required("is_granted", "boolean"),
        required("is_revoked", "boolean"),
        required("created_at", "timestamptz"),
        optional("member_id", "text"),
        // For the read API's sorts: typed here, so a sort never casts text.
        optional("granted_at", "timestamptz"),
        optional("revoked_at", "timestamptz"),
    ],
    indexes: &[
        "(customer_id, benefit_id)",
        // The default order of the lists: newest first.
        "(created_at desc, id)",
        "(benefit_id, created_at desc, id)",
    ],
    touches,
};

/// The effective grants read this table.
fn touches(_: &str, columns: &[Column<'_>]) -> Touch {
    Touch {
        customer: text_at(columns, 0),
        external_id: None,
        member: text_at(columns, 7),
        recompute: true,
        look_up: false,
    }
}

pub const FAMILY: Family = Family {
    prefix: "benefit_grant",
    events: None,
    decode,
};

#[derive(Deserialize)]
struct GrantData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
    #[serde(borrow)]
    benefit_id: Cow<'a, str>,
    #[serde(borrow, default)]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    order_id: Option<Cow<'a, str>>,
    is_granted: bool,
    is_revoked: bool,
    #[serde(borrow, default)]
    member_id: Option<Cow<'a, str>>,
    #[serde(default)]
    granted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    revoked_at: Option<DateTime<Utc>>,
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    benefit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    member: Option<&'a RawValue>,
}

fn decode<'a>(
    _: &str,
    data: &'a RawValue,
    stamp: Stamp,
    changes: &mut Changes<'a>,
) -> Result<(), String> {
    let g: GrantData<'_> = parse(data)?;
    customers::push_embedded(changes, g.customer, stamp)?;
    catalog::push_embedded(changes, Table::Benefits, g.benefit, stamp)?;
    members::push_embedded(changes, g.member, stamp)?;
    changes.objects.push(change(
        Table::BenefitGrants,
        g.id,
        stamp.version(g.modified_at.unwrap_or(g.created_at), Rank::OwnEvent),
        data.get(),
        vec![
            Column::Text(Some(g.customer_id)),
            Column::Text(Some(g.benefit_id)),
            Column::Text(g.subscription_id),
            Column::Text(g.order_id),
            Column::Bool(g.is_granted),
            Column::Bool(g.is_revoked),
            Column::Time(Some(g.created_at)),
            Column::Text(g.member_id),
            Column::Time(g.granted_at),
            Column::Time(g.revoked_at),
        ],
    ));
    Ok(())
}
