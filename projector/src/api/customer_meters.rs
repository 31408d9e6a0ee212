//! `GET /v1/customer-meters/` and `/v1/customer-meters/{id}`: Polar's
//! CustomerMeter, from the meters of each customer's newest
//! `customer.state_changed`, with the customer and (when reconcile has read
//! it) the meter.
//!
//! Polar sends no webhook for a meter as such: it recomputes a customer's
//! meters with a debounce (at least 15 s after the last usage event) and then
//! sends the state, so these balances can lag Polar's by seconds to minutes.
//! The meter object itself comes only from reconcile (`GET /v1/meters/`).

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::polar_query::PolarQuery;
use super::version::ApiVersion;
use super::{ApiError, ApiState, json_text};

const SORT: &[&str] = &[
    "created_at",
    "modified_at",
    "customer_id",
    "customer_name",
    "meter_id",
    "meter_name",
    "consumed_units",
    "credited_units",
    "balance",
];

fn sort_key(property: &str) -> &'static str {
    match property {
        "created_at" => "(m.item ->> 'created_at')::timestamptz",
        "customer_id" => "m.customer_id collate \"C\"",
        "customer_name" => "(c.snapshot ->> 'name') collate \"C\"",
        "meter_id" => "m.meter_id collate \"C\"",
        "meter_name" => "(mt.snapshot ->> 'name') collate \"C\"",
        "consumed_units" => "(m.item ->> 'consumed_units')::float8",
        "credited_units" => "(m.item ->> 'credited_units')::float8",
        "balance" => "(m.item ->> 'balance')::float8",
        _ => "(m.item ->> 'modified_at')::timestamptz",
    }
}

/// One CustomerMeter as JSON text.
const ITEM: &str = "jsonb_build_object(
    'id', m.item -> 'id',
    'created_at', m.item -> 'created_at',
    'modified_at', m.item -> 'modified_at',
    'customer_id', m.customer_id,
    'meter_id', m.item -> 'meter_id',
    'consumed_units', m.item -> 'consumed_units',
    'credited_units', m.item -> 'credited_units',
    'balance', m.item -> 'balance',
    'customer', c.snapshot,
    'meter', mt.snapshot)";

const FROM: &str = "projection.customer_meters m
    join projection.customers c on c.id = m.customer_id and c.deleted_at is null
    left join projection.meters mt on mt.id = m.meter_id";

pub async fn list(
    State(state): State<ApiState>,
    Extension(_version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = super::listing::organization_matches(&state.pool, &mut query).await?;
    let customer_ids = query.uuids("customer_id");
    let external_ids = query.texts("external_customer_id");
    let meter_ids = query.uuids("meter_id");
    let sorting = query.sorting(SORT, &["-modified_at"]);
    query.finish()?;
    let mut order: Vec<String> = sorting
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                sort_key(c.property),
                if c.descending { "desc" } else { "asc" }
            )
        })
        .collect();
    order.push("(m.item ->> 'created_at')::timestamptz asc".to_owned());
    order.push("m.item ->> 'id' asc".to_owned());
    let filter = "where $1
          and ($2::text[] is null or m.customer_id = any($2))
          and ($3::text[] is null or c.external_id = any($3))
          and ($4::text[] is null or m.meter_id = any($4))";
    let total: i64 = sqlx::query_scalar(&format!("select count(*) from {FROM} {filter}"))
        .bind(ours)
        .bind(&customer_ids)
        .bind(&external_ids)
        .bind(&meter_ids)
        .fetch_one(&state.pool)
        .await?;
    let items: String = sqlx::query_scalar(&format!(
        "select coalesce(jsonb_agg(item order by position), '[]'::jsonb)::text from (
             select {ITEM} as item, row_number() over (order by {order}) as position
             from {FROM} {filter}
             order by {order} limit $5 offset $6) page",
        order = order.join(", ")
    ))
    .bind(ours)
    .bind(&customer_ids)
    .bind(&external_ids)
    .bind(&meter_ids)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_one(&state.pool)
    .await?;
    let items: Value = serde_json::from_str(&items)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("customer meters: {e}")))?;
    Ok(json_text(
        json!({"items": items, "pagination": page.pagination(total)}).to_string(),
    ))
}

pub async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(&id, "id", false);
    query.finish()?;
    let item: Option<String> = sqlx::query_scalar(&format!(
        "select {ITEM}::text from {FROM} where m.item ->> 'id' = $1 limit 1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    item.map(json_text).ok_or(ApiError::NotFound)
}
