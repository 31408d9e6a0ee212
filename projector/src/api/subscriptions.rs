//! `GET /v1/subscriptions/` and `/v1/subscriptions/{id}`: subscriptions that
//! have started (an imported one that is still paused too), with every
//! filter and sort key Polar has.
//!
//! As in Polar, `active=true` means active or trialing and `active=false`
//! canceled or unpaid (past-due and paused are in neither); the `status`
//! sort follows Polar's rank (a canceling active one just after the
//! active ones); `amount` sorts by the amount per month; `customer` by the
//! customer's email, `product` and `discount` by their names in any case.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Bind, Listing, customer_filters, one_or_not_found, organization_matches};
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState};

pub const STATUSES: &[&str] = &[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "paused",
    "past_due",
    "canceled",
    "unpaid",
];

const CANCELLATION_REASONS: &[&str] = &[
    "customer_service",
    "low_quality",
    "missing_features",
    "switched_service",
    "too_complex",
    "too_expensive",
    "unused",
    "other",
];

const SORT: &[&str] = &[
    "customer",
    "status",
    "started_at",
    "current_period_end",
    "ended_at",
    "ends_at",
    "amount",
    "product",
    "discount",
];

/// SQL for each sort property.
fn sort_key(property: &str) -> String {
    match property {
        "customer" => {
            "(select c.email from projection.customers c where c.id = s.customer_id) collate \"C\""
        }
        "status" => {
            "(case s.status when 'incomplete' then 1 when 'incomplete_expired' then 2
                when 'trialing' then 3 when 'active' then 4 when 'paused' then 6
                when 'past_due' then 7 when 'canceled' then 8 when 'unpaid' then 9 else 0 end
              + case when s.status = 'active' and s.cancel_at_period_end then 1 else 0 end)"
        }
        "current_period_end" => "s.current_period_end",
        "ended_at" => "s.ended_at",
        "ends_at" => "s.ends_at",
        "amount" => {
            "(case s.recurring_interval when 'year' then s.amount / 12.0 when 'month' then s.amount::numeric
                when 'week' then s.amount * 4.0 when 'day' then s.amount * 30.0 end)"
        }
        "product" => {
            "(select lower(p.snapshot ->> 'name') from projection.products p where p.id = s.product_id) collate \"C\""
        }
        "discount" => {
            "(select lower(d.snapshot ->> 'name') from projection.discounts d where d.id = s.discount_id) collate \"C\""
        }
        _ => "s.started_at",
    }
    .to_owned()
}

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Subscriptions, "s");
    list.filter("s.started_at is not null");
    customer_filters(&mut list, &mut query, "s.customer_id");
    list.any_of("s.product_id", query.uuids("product_id"));
    list.any_of("s.discount_id", query.uuids("discount_id"));
    if let Some(active) = query.boolean("active") {
        list.filter(if active {
            "s.status in ('active', 'trialing')"
        } else {
            "s.status in ('canceled', 'unpaid')"
        });
    }
    list.any_of("s.status", query.enums("status", STATUSES));
    if let Some(cancel) = query.boolean("cancel_at_period_end") {
        let p = list.bind(Bind::Bool(cancel));
        list.filter(format!("s.cancel_at_period_end = {p}"));
    }
    list.any_of(
        "s.customer_cancellation_reason",
        query.enums("customer_cancellation_reason", CANCELLATION_REASONS),
    );
    for (name, column, op) in [
        ("canceled_at_after", "s.canceled_at", ">="),
        ("canceled_at_before", "s.canceled_at", "<="),
        ("started_after", "s.started_at", ">"),
        ("started_before", "s.started_at", "<"),
    ] {
        if let Some(bound) = query.time(name, false) {
            let p = list.bind(Bind::Time(bound));
            list.filter(format!("{column} {op} {p}"));
        }
    }
    list.metadata("s.snapshot -> 'metadata'", query.metadata());
    let sorting = query.sorting(SORT, &["-started_at"]);
    list.sort(&sorting, sort_key);
    query.finish()?;
    if !ours {
        list.filter("false");
    }
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

/// `GET /v1/subscriptions/{id}`: any subscription that has started.
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(&id, "id", false);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(
        "select id, v_at, snapshot::text as snapshot from projection.subscriptions
         where id = $1 and started_at is not null",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(Table::Subscriptions, row)
        .await?,
    )
}
