//! From one event to the row changes it implies.
//!
//! Every Polar payload is a full snapshot of its object, so an event becomes
//! one or more versioned upserts: the object itself, and the full snapshots
//! embedded in it (a subscription's customer and product, a grant's customer,
//! benefit and member, a seat's member). `customer.state_changed` also becomes a [`StateChange`], the
//! customer's list of what is active as of the event's timestamp.
//!
//! Embedded objects in a *reduced* shape (an order's product, a checkout's
//! product) are not projected: storing them would replace full snapshots with
//! partial ones.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::version::{Rank, Version};

/// One event as the projector receives it, from Kafka or from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    /// The event's sequence number in the log: the final tie-break of versions.
    pub seq: i64,
    pub webhook_id: String,
    pub body: Vec<u8>,
}

/// The tables objects are projected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Customers,
    Subscriptions,
    BenefitGrants,
    Orders,
    Checkouts,
    Products,
    Benefits,
    Members,
    CustomerSeats,
    SeatHolders,
}

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Customers,
        Table::Products,
        Table::Benefits,
        Table::Subscriptions,
        Table::BenefitGrants,
        Table::Orders,
        Table::Checkouts,
        Table::Members,
        Table::CustomerSeats,
        Table::SeatHolders,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Subscriptions => "subscriptions",
            Self::BenefitGrants => "benefit_grants",
            Self::Orders => "orders",
            Self::Checkouts => "checkouts",
            Self::Products => "products",
            Self::Benefits => "benefits",
            Self::Members => "members",
            Self::CustomerSeats => "customer_seats",
            Self::SeatHolders => "seat_holders",
        }
    }

    /// The SQL type of the table's snapshot column. Postgres parses every
    /// jsonb value it is sent, and for a 3 KB Polar object that costs ten to
    /// fifteen times storing it as text (BENCHMARKS.md, "Projector"), most of
    /// a drain's database time. So only tables whose snapshots SQL reads into
    /// (the effective views, the read API's merges and sorts) keep jsonb; the
    /// others keep the text the projector has already parsed, byte for byte.
    pub fn snapshot_type(self) -> &'static str {
        match self {
            Self::Customers
            | Self::Subscriptions
            | Self::BenefitGrants
            | Self::Benefits
            | Self::Members
            | Self::CustomerSeats => "jsonb",
            Self::Orders | Self::Checkouts | Self::Products | Self::SeatHolders => "text",
        }
    }

    /// The query columns each table keeps beside the snapshot, in the order
    /// [`ObjectChange::columns`] holds their values, with their SQL types.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Customers => &[
                ("external_id", "text"),
                ("email", "text"),
                ("deleted_at", "timestamptz"),
                ("type", "text"),
            ],
            Self::Subscriptions => &[
                ("customer_id", "text"),
                ("product_id", "text"),
                ("status", "text"),
                ("started_at", "timestamptz"),
                ("created_at", "timestamptz"),
            ],
            Self::BenefitGrants => &[
                ("customer_id", "text"),
                ("benefit_id", "text"),
                ("subscription_id", "text"),
                ("order_id", "text"),
                ("is_granted", "boolean"),
                ("is_revoked", "boolean"),
                ("created_at", "timestamptz"),
                ("member_id", "text"),
            ],
            Self::Orders => &[
                ("customer_id", "text"),
                ("subscription_id", "text"),
                ("status", "text"),
            ],
            Self::Checkouts => &[
                ("customer_id", "text"),
                ("external_customer_id", "text"),
                ("status", "text"),
            ],
            Self::Members => &[
                ("customer_id", "text"),
                ("external_id", "text"),
                ("email", "text"),
                ("role", "text"),
                ("created_at", "timestamptz"),
                ("deleted_at", "timestamptz"),
            ],
            Self::CustomerSeats => &[
                ("customer_id", "text"),
                ("subscription_id", "text"),
                ("order_id", "text"),
                ("status", "text"),
                ("member_id", "text"),
                ("revoked_at", "timestamptz"),
            ],
            Self::SeatHolders => &[("customer_id", "text"), ("member_id", "text")],
            Self::Products | Self::Benefits => &[],
        }
    }
}

/// A value of a query column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column<'a> {
    Text(Option<Cow<'a, str>>),
    Time(Option<DateTime<Utc>>),
    Bool(bool),
}

/// A versioned upsert of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChange<'a> {
    pub table: Table,
    pub id: Cow<'a, str>,
    pub version: Version,
    /// The object's JSON exactly as it appeared in the event.
    pub snapshot: Cow<'a, str>,
    /// Values for [`Table::columns`], in that order.
    pub columns: Vec<Column<'a>>,
}

/// What a `customer.state_changed` says: the customer's active subscriptions
/// and granted benefits as of `state_at`, the envelope timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange<'a> {
    pub customer_id: Cow<'a, str>,
    pub state_at: DateTime<Utc>,
    pub seq: i64,
    /// The whole CustomerState as sent.
    pub snapshot: Cow<'a, str>,
}

impl Column<'_> {
    fn into_owned(self) -> Column<'static> {
        match self {
            Self::Text(text) => Column::Text(text.map(|t| Cow::Owned(t.into_owned()))),
            Self::Time(time) => Column::Time(time),
            Self::Bool(b) => Column::Bool(b),
        }
    }
}

impl ObjectChange<'_> {
    /// The same change owning its text, to outlive the event's body (a
    /// generation build keeps the newest version of every object in memory).
    pub fn into_owned(self) -> ObjectChange<'static> {
        ObjectChange {
            table: self.table,
            id: Cow::Owned(self.id.into_owned()),
            version: self.version,
            snapshot: Cow::Owned(self.snapshot.into_owned()),
            columns: self.columns.into_iter().map(Column::into_owned).collect(),
        }
    }
}

impl StateChange<'_> {
    /// As [`ObjectChange::into_owned`].
    pub fn into_owned(self) -> StateChange<'static> {
        StateChange {
            customer_id: Cow::Owned(self.customer_id.into_owned()),
            state_at: self.state_at,
            seq: self.seq,
            snapshot: Cow::Owned(self.snapshot.into_owned()),
        }
    }
}

/// Everything one event changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes<'a> {
    pub objects: Vec<ObjectChange<'a>>,
    pub state: Option<StateChange<'a>>,
}

/// The outcome of decoding one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Apply {
        event_type: Cow<'a, str>,
        changes: Changes<'a>,
    },
    /// A well-formed event of a type no projection uses (refunds, discounts,
    /// organizations...), or one this version does not know.
    Ignored { event_type: Cow<'a, str> },
}

/// Why an event cannot be applied. Stored in the failures table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The event type, when the envelope got that far.
    pub event_type: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    timestamp: DateTime<Utc>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: DateTime<Utc>,
    modified_at: Option<DateTime<Utc>>,
}

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
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    product: Option<&'a RawValue>,
}

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
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    benefit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    member: Option<&'a RawValue>,
}

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
}

/// Decodes one event. The type comes from the signed body, not from a header.
pub fn decode(event: &IncomingEvent) -> Result<Decoded<'_>, DecodeError> {
    let envelope: Envelope<'_> = serde_json::from_slice(&event.body).map_err(|e| DecodeError {
        event_type: None,
        reason: format!("not a webhook envelope: {e}"),
    })?;
    let occurred = envelope.timestamp;
    let seq = event.seq;
    let data = envelope.data;
    if envelope.event_type.contains('\0') {
        return Err(DecodeError {
            event_type: None,
            reason: "`type` contains a NUL character".to_owned(),
        });
    }
    let fail = |reason: String| DecodeError {
        event_type: Some(envelope.event_type.to_string()),
        reason,
    };
    // Checked per event, before any coalescing, so whether an event fails
    // never depends on which other events share its batch.
    if let Some(problem) = unstorable_escape(data.get()) {
        return Err(fail(format!("`data` cannot be stored as jsonb: {problem}")));
    }
    let own = |at: DateTime<Utc>| Version {
        at,
        rank: Rank::OwnEvent,
        occurred,
        seq,
    };
    let embedded = |at: DateTime<Utc>| Version {
        at,
        rank: Rank::Embedded,
        occurred,
        seq,
    };

    let mut changes = Changes::default();
    let family = envelope.event_type.split('.').next().unwrap_or_default();
    match (family, envelope.event_type.as_ref()) {
        ("customer", "customer.state_changed") => {
            let c: CustomerData<'_> = parse(data).map_err(fail)?;
            changes.state = Some(StateChange {
                customer_id: c.id.clone(),
                state_at: occurred,
                seq,
                snapshot: Cow::Borrowed(data.get()),
            });
            // The state is the customer plus its lists; the customer part is a
            // customer snapshot like any other (the store strips the lists).
            changes.objects.push(customer_change(c, data, embedded));
        }
        ("customer", "customer.created" | "customer.updated" | "customer.deleted") => {
            let c: CustomerData<'_> = parse(data).map_err(fail)?;
            changes.objects.push(customer_change(c, data, own));
        }
        ("subscription", _) => {
            let s: SubscriptionData<'_> = parse(data).map_err(fail)?;
            push_embedded_customer(&mut changes, s.customer, embedded).map_err(fail)?;
            push_embedded_meta(&mut changes, Table::Products, s.product, embedded).map_err(fail)?;
            changes.objects.push(ObjectChange {
                table: Table::Subscriptions,
                id: s.id,
                version: own(s.modified_at.unwrap_or(s.created_at)),
                snapshot: Cow::Borrowed(data.get()),
                columns: vec![
                    Column::Text(Some(s.customer_id)),
                    Column::Text(s.product_id),
                    Column::Text(Some(s.status)),
                    Column::Time(s.started_at),
                    Column::Time(Some(s.created_at)),
                ],
            });
        }
        ("benefit_grant", _) => {
            let g: GrantData<'_> = parse(data).map_err(fail)?;
            push_embedded_customer(&mut changes, g.customer, embedded).map_err(fail)?;
            push_embedded_meta(&mut changes, Table::Benefits, g.benefit, embedded).map_err(fail)?;
            push_embedded_member(&mut changes, g.member, embedded).map_err(fail)?;
            changes.objects.push(ObjectChange {
                table: Table::BenefitGrants,
                id: g.id,
                version: own(g.modified_at.unwrap_or(g.created_at)),
                snapshot: Cow::Borrowed(data.get()),
                columns: vec![
                    Column::Text(Some(g.customer_id)),
                    Column::Text(Some(g.benefit_id)),
                    Column::Text(g.subscription_id),
                    Column::Text(g.order_id),
                    Column::Bool(g.is_granted),
                    Column::Bool(g.is_revoked),
                    Column::Time(Some(g.created_at)),
                    Column::Text(g.member_id),
                ],
            });
        }
        ("order", _) => {
            let o: OrderData<'_> = parse(data).map_err(fail)?;
            push_embedded_customer(&mut changes, o.customer, embedded).map_err(fail)?;
            changes.objects.push(ObjectChange {
                table: Table::Orders,
                id: o.id,
                version: own(o.modified_at.unwrap_or(o.created_at)),
                snapshot: Cow::Borrowed(data.get()),
                columns: vec![
                    Column::Text(o.customer_id),
                    Column::Text(o.subscription_id),
                    Column::Text(Some(o.status)),
                ],
            });
        }
        ("checkout", _) => {
            let c: CheckoutData<'_> = parse(data).map_err(fail)?;
            changes.objects.push(ObjectChange {
                table: Table::Checkouts,
                id: c.id,
                version: own(c.modified_at.unwrap_or(c.created_at)),
                snapshot: Cow::Borrowed(data.get()),
                columns: vec![
                    Column::Text(c.customer_id),
                    Column::Text(c.external_customer_id),
                    Column::Text(Some(c.status)),
                ],
            });
        }
        ("member", "member.created" | "member.updated" | "member.deleted") => {
            let m: MemberData<'_> = parse(data).map_err(fail)?;
            // Polar's Member has no deletion time: `member.deleted` carries
            // the member as it was. Its version is the deletion's own, which
            // no snapshot of the member embedded elsewhere can beat.
            let deleted_at = (envelope.event_type == "member.deleted")
                .then(|| m.modified_at.unwrap_or(occurred));
            changes
                .objects
                .push(member_change(m, data, deleted_at, own));
        }
        (
            "customer_seat",
            "customer_seat.assigned" | "customer_seat.claimed" | "customer_seat.revoked",
        ) => {
            let seat: SeatData<'_> = parse(data).map_err(fail)?;
            push_embedded_member(&mut changes, seat.member, embedded).map_err(fail)?;
            push_seat(&mut changes, seat, data, own);
        }
        ("product", "product.created" | "product.updated") => {
            push_meta(&mut changes, Table::Products, data, own).map_err(fail)?;
        }
        ("benefit", "benefit.created" | "benefit.updated") => {
            push_meta(&mut changes, Table::Benefits, data, own).map_err(fail)?;
        }
        _ => {
            return Ok(Decoded::Ignored {
                event_type: envelope.event_type,
            });
        }
    }
    Ok(Decoded::Apply {
        event_type: envelope.event_type,
        changes,
    })
}

fn parse<'a, T>(raw: &'a RawValue) -> Result<T, String>
where
    T: Deserialize<'a>,
{
    serde_json::from_str(raw.get())
        .map_err(|e| format!("`data` does not have the expected shape: {e}"))
}

fn customer_change<'a>(
    c: CustomerData<'a>,
    raw: &'a RawValue,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> ObjectChange<'a> {
    ObjectChange {
        table: Table::Customers,
        version: version(c.modified_at.unwrap_or(c.created_at)),
        id: c.id,
        snapshot: Cow::Borrowed(raw.get()),
        columns: vec![
            Column::Text(c.external_id),
            Column::Text(c.email),
            Column::Time(c.deleted_at),
            Column::Text(c.customer_type),
        ],
    }
}

fn member_change<'a>(
    m: MemberData<'a>,
    raw: &'a RawValue,
    deleted_at: Option<DateTime<Utc>>,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> ObjectChange<'a> {
    ObjectChange {
        table: Table::Members,
        version: version(m.modified_at.unwrap_or(m.created_at)),
        id: m.id,
        snapshot: Cow::Borrowed(raw.get()),
        columns: vec![
            Column::Text(Some(m.customer_id)),
            Column::Text(m.external_id),
            Column::Text(m.email),
            Column::Text(m.role),
            Column::Time(Some(m.created_at)),
            Column::Time(deleted_at),
        ],
    }
}

/// Members are not always announced (a seat assigned by email creates one
/// without `member.created`), so every embedded member is projected too.
fn push_embedded_member<'a>(
    changes: &mut Changes<'a>,
    raw: Option<&'a RawValue>,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> Result<(), String> {
    if let Some(raw) = raw.filter(|r| r.get() != "null") {
        let m: MemberData<'_> = parse(raw).map_err(|e| format!("embedded member: {e}"))?;
        changes.objects.push(member_change(m, raw, None, version));
    }
    Ok(())
}

/// A seat and, when the seat names its member, its holder. A
/// revoked seat no longer names anyone (Polar clears `member_id` and
/// `customer_id`), so who held it is kept apart, in `seat_holders`: the
/// member of the newest snapshot that names one, which every delivery order
/// agrees on.
fn push_seat<'a>(
    changes: &mut Changes<'a>,
    seat: SeatData<'a>,
    raw: &'a RawValue,
    version: impl Fn(DateTime<Utc>) -> Version,
) {
    let at = seat.modified_at.unwrap_or(seat.created_at);
    if let Some(member_id) = &seat.member_id {
        changes.objects.push(ObjectChange {
            table: Table::SeatHolders,
            id: seat.id.clone(),
            version: version(at),
            snapshot: Cow::Borrowed(seat.member.map_or("null", RawValue::get)),
            columns: vec![
                Column::Text(seat.customer_id.clone()),
                Column::Text(Some(member_id.clone())),
            ],
        });
    }
    changes.objects.push(ObjectChange {
        table: Table::CustomerSeats,
        id: seat.id,
        version: version(at),
        snapshot: Cow::Borrowed(raw.get()),
        columns: vec![
            Column::Text(seat.customer_id),
            Column::Text(seat.subscription_id),
            Column::Text(seat.order_id),
            Column::Text(Some(seat.status)),
            Column::Text(seat.member_id),
            Column::Time(seat.revoked_at),
        ],
    });
}

fn push_embedded_customer<'a>(
    changes: &mut Changes<'a>,
    raw: Option<&'a RawValue>,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> Result<(), String> {
    if let Some(raw) = raw.filter(|r| r.get() != "null") {
        let c: CustomerData<'_> = parse(raw).map_err(|e| format!("embedded customer: {e}"))?;
        changes.objects.push(customer_change(c, raw, version));
    }
    Ok(())
}

fn push_embedded_meta<'a>(
    changes: &mut Changes<'a>,
    table: Table,
    raw: Option<&'a RawValue>,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> Result<(), String> {
    match raw.filter(|r| r.get() != "null") {
        Some(raw) => push_meta(changes, table, raw, version)
            .map_err(|e| format!("embedded {}: {e}", table.name())),
        None => Ok(()),
    }
}

fn push_meta<'a>(
    changes: &mut Changes<'a>,
    table: Table,
    raw: &'a RawValue,
    version: impl Fn(DateTime<Utc>) -> Version,
) -> Result<(), String> {
    let meta: Meta<'_> = parse(raw)?;
    changes.objects.push(ObjectChange {
        table,
        version: version(meta.modified_at.unwrap_or(meta.created_at)),
        id: meta.id,
        snapshot: Cow::Borrowed(raw.get()),
        columns: Vec::new(),
    });
    Ok(())
}

/// Finds the valid JSON that Postgres `jsonb` refuses: a NUL (`u0000`)
/// escape, or a UTF-16 surrogate escape that is not part of a pair.
fn unstorable_escape(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut expect_low_surrogate = false;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            if expect_low_surrogate {
                return Some("a high surrogate escape without its low half");
            }
            i += 1;
            continue;
        }
        // An escape: a backslash and one character, or `u` and four hex digits.
        let &kind = bytes.get(i + 1)?;
        if kind != b'u' {
            if expect_low_surrogate {
                return Some("a high surrogate escape without its low half");
            }
            i += 2;
            continue;
        }
        let code = bytes
            .get(i + 2..i + 6)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())?;
        match code {
            0 => return Some("a NUL escape (u0000)"),
            0xD800..=0xDBFF if expect_low_surrogate => {
                return Some("two high surrogate escapes in a row");
            }
            0xD800..=0xDBFF => expect_low_surrogate = true,
            0xDC00..=0xDFFF if !expect_low_surrogate => {
                return Some("a low surrogate escape without its high half");
            }
            0xDC00..=0xDFFF => expect_low_surrogate = false,
            _ if expect_low_surrogate => {
                return Some("a high surrogate escape without its low half");
            }
            _ => {}
        }
        i += 6;
    }
    expect_low_surrogate.then_some("a high surrogate escape without its low half")
}

/// Reads a whole document, for tests and tools that need owned values.
pub fn parse_owned<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_postgres_refuses_are_found() {
        assert_eq!(
            unstorable_escape(r#"{"a":"plain \u00e9 \n \\u0000"}"#),
            None,
            "an escaped backslash is not an escape"
        );
        assert!(unstorable_escape(r#"{"a":"x\u0000y"}"#).is_some());
        assert!(
            unstorable_escape(r#"{"a":"\ud83d\ude00"}"#).is_none(),
            "a surrogate pair is fine"
        );
        assert!(unstorable_escape(r#"{"a":"\ud83d"}"#).is_some());
        assert!(unstorable_escape(r#"{"a":"\ude00"}"#).is_some());
        assert!(unstorable_escape(r#"{"a":"\ud83d\u0041"}"#).is_some());
    }
}
