//! `GET /v1/customer-meters/`: Polar's paginated CustomerMeter list, from
//! the meters of each customer's newest `customer.state_changed`.
//!
//! Polar sends no webhook for a meter as such: it recomputes a customer's
//! meters with a debounce (at least 15 s after the last usage event) and then
//! sends the state, so these balances can lag Polar's by seconds to minutes.
//! The meter object itself (name, filter, aggregation) never comes by
//! webhook, so `meter` is null.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::list::{Arg, List};
use super::params::QueryParams;
use super::{ApiError, ApiState};

fn sort_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "created_at" => "(m.item ->> 'created_at')::timestamptz",
        "modified_at" => "(m.item ->> 'modified_at')::timestamptz",
        "balance" => "(m.item ->> 'balance')::float8",
        "consumed_units" => "(m.item ->> 'consumed_units')::float8",
        "credited_units" => "(m.item ->> 'credited_units')::float8",
        _ => return None,
    })
}

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    List {
        from: "projection.customer_meters m join projection.customers c on c.id = m.customer_id",
        item: "jsonb_build_object(
                 'id', m.item -> 'id',
                 'created_at', m.item -> 'created_at',
                 'modified_at', m.item -> 'modified_at',
                 'customer_id', m.customer_id,
                 'meter_id', m.item -> 'meter_id',
                 'consumed_units', m.item -> 'consumed_units',
                 'credited_units', m.item -> 'credited_units',
                 'balance', m.item -> 'balance',
                 'customer', c.snapshot,
                 'meter', null)",
        key: "m.customer_id, m.meter_id",
        filter: "
        where c.deleted_at is null
          and ($1::text[] is null or m.customer_id = any($1))
          and ($2::text[] is null or c.external_id = any($2))
          and ($3::text[] is null or m.meter_id = any($3))",
        order: params.sorting(&["-modified_at"], sort_column)?,
        args: vec![
            Arg::Texts(params.list("customer_id")),
            Arg::Texts(params.list("external_customer_id")),
            Arg::Texts(params.list("meter_id")),
        ],
    }
    .page(&state.pool, page)
    .await
}
