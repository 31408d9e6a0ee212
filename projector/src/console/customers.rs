//! Customers: search (`/console/customers?q=`), and one customer's page
//! (`/console/customers/{customer_id}`): the state the read API serves,
//! members and seats, the benefit check with its reasons, and the timeline
//! of every logged event about the customer.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{CustomerRef, check_entitlement, customer_state};
use crate::projection::IncomingEvent;

use super::evidence::{self, Outcome, Standing};
use super::layout::{self, Page, customer_link, event_link, time};
use super::session::Operator;
use super::{ConsoleError, ConsoleState, PREFIX};

/// Most search results listed.
const MAX_RESULTS: i64 = 50;
/// Most events a timeline shows (the newest, in occurrence order).
const MAX_TIMELINE: i64 = 2000;

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

#[derive(Debug, sqlx::FromRow)]
struct Found {
    id: String,
    external_id: Option<String>,
    email: Option<String>,
    kind: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
    matched: String,
}

pub async fn search(
    operator: Operator,
    State(state): State<ConsoleState>,
    Query(query): Query<SearchQuery>,
) -> Result<Response, ConsoleError> {
    let q = query.q.trim();
    let found: Vec<Found> = if q.is_empty() {
        Vec::new()
    } else {
        // Exact matches, on the customer or on one of its members. Email is
        // compared case-insensitively, as Polar does.
        sqlx::query_as(
            "select distinct on (c.id) c.id, c.external_id, c.email, c.type as kind, c.deleted_at, hit.matched
             from (
                 select id as customer_id, 'customer id' as matched from projection.customers where id = $1
                 union all
                 select id, 'external id' from projection.customers where external_id = $1
                 union all
                 select id, 'email' from projection.customers where lower(email) = lower($1)
                 union all
                 select customer_id, 'member id' from projection.members where id = $1
                 union all
                 select customer_id, 'member external id' from projection.members where external_id = $1
                 union all
                 select customer_id, 'member email' from projection.members where lower(email) = lower($1)
             ) hit
             join projection.customers c on c.id = hit.customer_id
             order by c.id
             limit $2",
        )
        .bind(q)
        .bind(MAX_RESULTS)
        .fetch_all(&state.api.pool)
        .await?
    };
    let body = html! {
        form.searchpage method="get" action={ (PREFIX) "customers" } {
            input type="search" name="q" value=(q) placeholder="external id, email, customer or member id" autofocus;
            " " button type="submit" { "Search" }
        }
        @if q.is_empty() {
            p.muted { "Search by a customer's external id, email or id, or a member's external id, email or id." }
        } @else if found.is_empty() {
            p { "No customer matches " code { (q) } "." }
        } @else {
            table #results {
                thead { tr { th { "Customer" } th { "External id" } th { "Email" } th { "Type" } th { "Matched on" } } }
                tbody {
                    @for c in &found {
                        tr {
                            td { (customer_link(&c.id)) @if c.deleted_at.is_some() { " " span.pill.bad { "deleted" } } }
                            td.mono { (c.external_id.as_deref().unwrap_or("—")) }
                            td { (c.email.as_deref().unwrap_or("—")) }
                            td { (c.kind.as_deref().unwrap_or("—")) }
                            td.muted { (c.matched) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Page {
            title: "Customers",
            body,
        },
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct CheckQuery {
    /// The benefit the check asks about.
    benefit_id: Option<String>,
    /// Ask about this person (external id) within the customer, instead of
    /// the customer as a whole.
    external_id: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct CustomerRow {
    id: String,
    external_id: Option<String>,
    email: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
    v_seq: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct MemberRow {
    id: String,
    external_id: Option<String>,
    email: Option<String>,
    role: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct SeatRow {
    id: String,
    status: Option<String>,
    member_id: Option<String>,
    subscription_id: Option<String>,
    revoked_at: Option<DateTime<Utc>>,
}

/// One row of the timeline, straight from the log.
#[derive(Debug, sqlx::FromRow)]
struct LogEntry {
    seq: i64,
    webhook_id: String,
    event_type: String,
    occurred_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    duplicates: Option<i64>,
    body: Vec<u8>,
}

pub async fn page(
    operator: Operator,
    State(state): State<ConsoleState>,
    Path(customer_id): Path<String>,
    Query(check): Query<CheckQuery>,
) -> Result<Response, ConsoleError> {
    let pool = &state.api.pool;
    let customer: Option<CustomerRow> = sqlx::query_as(
        "select id, external_id, email, type as kind, snapshot ->> 'name' as name, deleted_at, v_seq
         from projection.customers where id = $1",
    )
    .bind(&customer_id)
    .fetch_optional(pool)
    .await?;
    let Some(customer) = customer else {
        return Err(ConsoleError::NotFound(
            "No customer with that id has been projected.",
        ));
    };
    let served = customer_state(&state.api, CustomerRef::Id(&customer.id))
        .await
        .map_err(api_failure)?;
    let members: Vec<MemberRow> = sqlx::query_as(
        "select id, external_id, email, role, deleted_at from projection.members
         where customer_id = $1 order by created_at, id",
    )
    .bind(&customer.id)
    .fetch_all(pool)
    .await?;
    let seats: Vec<SeatRow> = sqlx::query_as(
        "select s.id, s.status, coalesce(s.member_id, h.member_id) as member_id, s.subscription_id, s.revoked_at
         from projection.customer_seats s
         left join projection.seat_holders h on h.id = s.id
         where s.customer_id = $1 or h.customer_id = $1
         order by s.id",
    )
    .bind(&customer.id)
    .fetch_all(pool)
    .await?;
    let check = match check.benefit_id.as_deref().map(str::trim) {
        Some(benefit_id) if !benefit_id.is_empty() => Some(
            benefit_check(
                &state,
                &customer.id,
                benefit_id,
                check
                    .external_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|x| !x.is_empty()),
            )
            .await?,
        ),
        _ => None,
    };
    let seat_ids: Vec<&str> = seats.iter().map(|s| s.id.as_str()).collect();
    let timeline = timeline(&state, &customer.id, &seat_ids).await?;

    let title = format!("Customer {}", customer.id);
    let body = html! {
        table.facts {
            tr { th { "Id" } td.mono { (customer.id) } }
            tr { th { "External id" } td.mono { (customer.external_id.as_deref().unwrap_or("—")) } }
            tr { th { "Email" } td { (customer.email.as_deref().unwrap_or("—")) } }
            tr { th { "Name" } td { (customer.name.as_deref().unwrap_or("—")) } }
            tr { th { "Type" } td { (customer.kind.as_deref().unwrap_or("—")) } }
            tr { th { "Row from" } td { (event_link(customer.v_seq)) } }
            @if let Some(deleted) = customer.deleted_at {
                tr { th { "Deleted" } td.bad { (time(Some(deleted))) " — the read API answers 404 for this customer" } }
            }
        }
        (state_section(served.as_ref().map(|(_, text, _)| text.as_str())))
        (members_section(&members, &seats))
        (check_form(&customer.id, check.as_ref()))
        (timeline)
    };
    Ok(layout::page(
        &operator,
        Page {
            title: &title,
            body,
        },
    )
    .into_response())
}

fn api_failure(e: crate::api::ApiError) -> ConsoleError {
    match e {
        crate::api::ApiError::Validation(_) | crate::api::ApiError::Invalid(_) => {
            ConsoleError::BadRequest("The benefit must be given by its id (a UUID).".to_owned())
        }
        e => ConsoleError::Internal(anyhow::anyhow!("{e}")),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("—")
}

fn state_section(served: Option<&str>) -> Markup {
    let Some(served) = served else {
        return html! {
            h2 { "State" }
            p.muted { "The read API serves no state for this customer (deleted)." }
        };
    };
    let state: Value = serde_json::from_str(served).unwrap_or(Value::Null);
    let empty = Vec::new();
    let subscriptions = state["active_subscriptions"].as_array().unwrap_or(&empty);
    let benefits = state["granted_benefits"].as_array().unwrap_or(&empty);
    let meters = state["active_meters"].as_array().unwrap_or(&empty);
    html! {
        h2 { "State, as " code { "GET /v1/customers/{id}/state" } " serves it" }
        h3 { "Active subscriptions (" (subscriptions.len()) ")" }
        @if subscriptions.is_empty() { p.muted { "None." } } @else {
            table #subscriptions {
                thead { tr { th { "Subscription" } th { "Status" } th { "Product" } th { "Current period" } th { "Cancels at period end" } } }
                tbody { @for s in subscriptions {
                    tr {
                        td.mono { (text(s, "id")) }
                        td { span.pill.ok { (text(s, "status")) } }
                        td.mono { (text(s, "product_id")) }
                        td { (text(s, "current_period_start")) " → " (text(s, "current_period_end")) }
                        td { (s["cancel_at_period_end"].as_bool().map_or("—", |b| if b { "yes" } else { "no" })) }
                    }
                } }
            }
        }
        h3 { "Granted benefits (" (benefits.len()) ")" }
        @if benefits.is_empty() { p.muted { "None." } } @else {
            table #benefits {
                thead { tr { th { "Benefit" } th { "Type" } th { "Through grant" } th { "Granted at" } } }
                tbody { @for b in benefits {
                    tr {
                        td.mono { (text(b, "benefit_id")) }
                        td { (text(b, "benefit_type")) }
                        td.mono { (text(b, "id")) }
                        td { (text(b, "granted_at")) }
                    }
                } }
            }
        }
        @if !meters.is_empty() {
            h3 { "Meters (" (meters.len()) ")" }
            table { thead { tr { th { "Meter" } th.num { "Consumed" } th.num { "Credited" } th.num { "Balance" } } }
                tbody { @for m in meters { tr {
                    td.mono { (text(m, "meter_id")) }
                    td.num { (m["consumed_units"]) } td.num { (m["credited_units"]) } td.num { (m["balance"]) }
                } } } }
        }
    }
}

fn members_section(members: &[MemberRow], seats: &[SeatRow]) -> Markup {
    if members.is_empty() && seats.is_empty() {
        return html! {};
    }
    html! {
        h2 { "Members (" (members.len()) ")" }
        table #members {
            thead { tr { th { "Member" } th { "External id" } th { "Email" } th { "Role" } th { "Seat" } } }
            tbody { @for m in members {
                tr {
                    td.mono { (m.id) @if m.deleted_at.is_some() { " " span.pill.bad { "deleted" } } }
                    td.mono { (m.external_id.as_deref().unwrap_or("—")) }
                    td { (m.email.as_deref().unwrap_or("—")) }
                    td { (m.role.as_deref().unwrap_or("—")) }
                    td { @for s in seats.iter().filter(|s| s.member_id.as_deref() == Some(m.id.as_str())) {
                        span.pill.(if s.revoked_at.is_some() { "bad" } else { "ok" }) { (s.status.as_deref().unwrap_or("?")) } " "
                    } }
                }
            } }
        }
        @if !seats.is_empty() {
            h3 { "Seats (" (seats.len()) ")" }
            table #seats {
                thead { tr { th { "Seat" } th { "Status" } th { "Holder" } th { "Subscription" } th { "Revoked" } } }
                tbody { @for s in seats { tr {
                    td.mono { (s.id) }
                    td { (s.status.as_deref().unwrap_or("—")) }
                    td.mono { (s.member_id.as_deref().unwrap_or("—")) }
                    td.mono { (s.subscription_id.as_deref().unwrap_or("—")) }
                    td { (time(s.revoked_at)) }
                } } }
            }
        }
    }
}

/// The check's answer and the evidence behind it.
#[derive(Debug)]
struct Checked {
    benefit_id: String,
    external_id: Option<String>,
    granted: bool,
    /// The JSON `/v1/entitlements/check` answers for the same question.
    answer: String,
    reasons: Vec<Markup>,
}

#[derive(Debug, sqlx::FromRow)]
struct GrantEvidence {
    id: String,
    member_id: Option<String>,
    is_granted: bool,
    is_revoked: bool,
    v_seq: i64,
    effective: bool,
    state_at: Option<DateTime<Utc>>,
    state_seq: Option<i64>,
    member_deleted_at: Option<DateTime<Utc>>,
    seat_revoked_at: Option<DateTime<Utc>>,
}

async fn benefit_check(
    state: &ConsoleState,
    customer_id: &str,
    benefit_id: &str,
    external_id: Option<&str>,
) -> Result<Checked, ConsoleError> {
    // The serializer is not Send, so it must not live across an await.
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("customer_id", customer_id);
        query.append_pair("benefit_id", benefit_id);
        if let Some(external_id) = external_id {
            query.append_pair("external_id", external_id);
        }
        query.finish()
    };
    let (granted, answer) = check_entitlement(&state.api, &query)
        .await
        .map_err(api_failure)?;
    let pool = &state.api.pool;
    let grants: Vec<GrantEvidence> = sqlx::query_as(
        "select g.id, g.member_id, g.is_granted, g.is_revoked, g.v_seq,
                exists (select 1 from projection.effective_grants e
                        where e.customer_id = g.customer_id and e.grant_id = g.id) as effective,
                cs.state_at, cs.v_seq as state_seq,
                m.deleted_at as member_deleted_at,
                (select s.revoked_at from projection.seat_holders h
                 join projection.customer_seats s on s.id = h.id
                 where h.member_id = g.member_id and s.revoked_at is not null
                 order by s.revoked_at desc limit 1) as seat_revoked_at
         from projection.benefit_grants g
         left join projection.customer_states cs on cs.customer_id = g.customer_id
         left join projection.members m on m.id = g.member_id
         where g.customer_id = $1 and g.benefit_id = $2
         order by g.created_at, g.id",
    )
    .bind(customer_id)
    .bind(benefit_id)
    .fetch_all(pool)
    .await?;
    // Grants only the customer's state lists (their own event not yet here).
    let state_only: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "select e.grant_id, cs.state_at, cs.v_seq from projection.effective_grants e
         join projection.customer_states cs on cs.customer_id = e.customer_id
         where e.customer_id = $1 and e.benefit_id = $2
           and not exists (select 1 from projection.benefit_grants g where g.id = e.grant_id)",
    )
    .bind(customer_id)
    .bind(benefit_id)
    .fetch_all(pool)
    .await?;
    let benefit_known: bool =
        sqlx::query_scalar("select exists (select 1 from projection.benefits where id = $1)")
            .bind(benefit_id)
            .fetch_one(pool)
            .await?;

    let mut reasons = Vec::new();
    for g in &grants {
        let whose = html! {
            @if let Some(member) = &g.member_id { " (member " code { (member) } ")" }
        };
        let from = event_link(g.v_seq);
        reasons.push(if g.is_revoked {
            html! { "Grant " code { (g.id) } (whose) " was revoked (row from " (from) ")." }
        } else if !g.is_granted {
            html! { "Grant " code { (g.id) } (whose) " exists but Polar has not granted it yet (row from " (from) ")." }
        } else if !g.effective {
            html! {
                "Grant " code { (g.id) } (whose) " is granted (row from " (from) "), but the customer's newer state ("
                (time(g.state_at)) ", " (g.state_seq.map(event_link).unwrap_or_default()) ") does not list it, so it has ended."
            }
        } else if let Some(deleted) = g.member_deleted_at {
            html! { "Grant " code { (g.id) } (whose) " is in force, but its member was deleted at " (time(Some(deleted))) ": it no longer counts for that person." }
        } else if let Some(revoked) = g.seat_revoked_at {
            html! { "Grant " code { (g.id) } (whose) " is in force, but the member's seat was revoked at " (time(Some(revoked))) ": it no longer counts for that person." }
        } else {
            html! { "Grant " code { (g.id) } (whose) " is in force (row from " (from) ")." }
        });
    }
    for (grant_id, state_at, seq) in &state_only {
        reasons.push(html! {
            "The customer's state (" (time(Some(*state_at))) ", " (event_link(*seq)) ") lists grant "
            code { (grant_id) } "; its own benefit_grant event has not arrived."
        });
    }
    if grants.is_empty() && state_only.is_empty() {
        reasons.push(html! { "No grant of this benefit to this customer has been received." });
        if !benefit_known {
            reasons.push(html! { "hookstream has never seen a benefit with this id (no benefit or product event named it)." });
        }
    }
    if let Some(external_id) = external_id {
        reasons.push(html! {
            "Asked about the person " code { (external_id) } " within this customer: only grants of a member with that external id (or of the customer itself, if it is an individual with it) count."
        });
    }
    Ok(Checked {
        benefit_id: benefit_id.to_owned(),
        external_id: external_id.map(str::to_owned),
        granted,
        answer,
        reasons,
    })
}

fn check_form(customer_id: &str, checked: Option<&Checked>) -> Markup {
    html! {
        h2 { "Benefit check" }
        form #check method="get" action={ (PREFIX) "customers/" (layout::urlencode(customer_id)) } {
            label { "Benefit id " input type="text" name="benefit_id" required value=(checked.map_or("", |c| c.benefit_id.as_str())); }
            " "
            label { "Person (external id, optional) " input type="text" name="external_id" value=(checked.and_then(|c| c.external_id.as_deref()).unwrap_or("")); }
            " " button type="submit" { "Check" }
        }
        @if let Some(c) = checked {
            div.answer.(if c.granted { "granted" } else { "denied" }) #answer {
                p { strong { @if c.granted { "Granted." } @else { "Not granted." } } }
                ul { @for reason in &c.reasons { li { (reason) } } }
                p.muted { code { "/v1/entitlements/check" } " answers:" }
                pre { (c.answer) }
            }
        }
    }
}

/// Every logged event keyed by the customer (and by its seats, which a
/// revoked seat's events are keyed by), in occurrence order, with what each
/// came to.
async fn timeline(
    state: &ConsoleState,
    customer_id: &str,
    seat_ids: &[&str],
) -> Result<Markup, ConsoleError> {
    let mut keys: Vec<&str> = vec![customer_id];
    keys.extend_from_slice(seat_ids);
    let mut entries: Vec<LogEntry> = sqlx::query_as(
        "select l.seq, l.webhook_id, l.event_type, l.occurred_at, l.received_at,
                d.copies as duplicates, l.body
         from event_log l
         left join event_log_duplicates d on d.seq = l.seq
         where l.partition_key = any($1)
         order by l.occurred_at desc, l.seq desc
         limit $2",
    )
    .bind(&keys)
    .bind(MAX_TIMELINE)
    .fetch_all(&state.api.pool)
    .await?;
    entries.reverse();
    let events: Vec<IncomingEvent> = entries
        .iter_mut()
        .map(|e| IncomingEvent {
            seq: e.seq,
            webhook_id: e.webhook_id.clone(),
            body: std::mem::take(&mut e.body),
        })
        .collect();
    let outcomes: HashMap<i64, Outcome> = evidence::outcomes(&state.api.pool, &events).await?;
    Ok(html! {
        h2 { "Timeline (" (entries.len()) " events" @if entries.len() as i64 == MAX_TIMELINE { ", the newest" } ")" }
        table #timeline {
            thead { tr {
                th { "Event" } th { "Type" } th { "Webhook-id" } th { "Occurred (envelope)" } th { "Received" }
                th { "Delivered" } th { "Version" }
            } }
            tbody { @for e in &entries {
                tr data-seq=(e.seq) {
                    td { (event_link(e.seq)) }
                    td.mono { (e.event_type) }
                    td.mono { (e.webhook_id) }
                    td { (time(Some(e.occurred_at))) }
                    td { (time(Some(e.received_at))) }
                    td { @match e.duplicates {
                        Some(copies) => span.warn title="deliveries answered as duplicates" { "once + " (copies) " duplicate" @if copies > 1 { "s" } },
                        None => span.muted { "once" },
                    } }
                    td { (outcome_cell(outcomes.get(&e.seq))) }
                }
            } }
        }
    })
}

/// The timeline's verdict on one event: its own row's standing.
fn outcome_cell(outcome: Option<&Outcome>) -> Markup {
    match outcome {
        Some(Outcome::Failed(reason)) => html! { span.bad title=(reason) { "failed" } },
        Some(Outcome::Ignored) => html! { span.muted { "not projected" } },
        Some(outcome @ Outcome::Applied(rows)) => {
            let embedded = rows.len().saturating_sub(1);
            html! {
                @match outcome.primary().map(|r| r.standing) {
                    Some(Standing::Current) => span.ok { "current" },
                    Some(Standing::SupersededBy(seq)) => span.muted { "superseded by " (event_link(seq)) },
                    Some(Standing::Absent) | None => span.warn { "not applied yet" },
                }
                @if embedded > 0 { span.muted { " · " (embedded) " embedded" } }
            }
        }
        None => html! { span.muted { "—" } },
    }
}
