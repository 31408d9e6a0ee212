//! `GET /v1/subscriptions/{id}` and `GET /v1/subscriptions/`: Polar's
//! Subscription (the latest full snapshot) and its paginated list.
//!
//! `active=true` selects status `active` or `trialing`, as Polar's filter does,
//! on the stored snapshots.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use super::list::{Arg, List};
use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};

pub async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let text: Option<String> =
        sqlx::query_scalar("select snapshot::text from projection.subscriptions where id = $1")
            .bind(&id)
            .fetch_optional(&state.pool)
            .await?;
    text.map(json_text).ok_or(ApiError::NotFound)
}

/// SQL for each of Polar's subscription sort properties.
fn sort_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "customer" => "s.customer_id",
        "status" => "s.status",
        "started_at" => "s.started_at",
        "current_period_end" => "s.current_period_end",
        "ended_at" => "s.ended_at",
        "ends_at" => "s.ends_at",
        "amount" => "s.amount",
        "product" => "s.product_id",
        "discount" => "s.snapshot ->> 'discount_id'",
        _ => return None,
    })
}

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    let order = params.sorting(&["-started_at"], sort_column)?;
    let customer_ids = params.list("customer_id");
    let external_ids = params.list("external_customer_id");
    let product_ids = params.list("product_id");
    let statuses = params.list("status");
    let active = params.boolean("active")?;
    let cancel_at_period_end = params.boolean("cancel_at_period_end")?;

    List {
        from: "projection.subscriptions s",
        item: "s.snapshot",
        key: "s.id",
        filter: "
        where ($1::text[] is null or s.customer_id = any($1))
          and ($2::text[] is null or s.customer_id in (
                select c.id from projection.customers c where c.external_id = any($2)))
          and ($3::text[] is null or s.product_id = any($3))
          and ($4::text[] is null or s.status = any($4))
          and ($5::boolean is null or (s.status in ('active', 'trialing')) = $5)
          and ($6::boolean is null or (s.snapshot -> 'cancel_at_period_end') = to_jsonb($6))",
        order,
        args: vec![
            Arg::Texts(customer_ids),
            Arg::Texts(external_ids),
            Arg::Texts(product_ids),
            Arg::Texts(statuses),
            Arg::Flag(active),
            Arg::Flag(cancel_at_period_end),
        ],
    }
    .page(&state.pool, page)
    .await
}
