//! `GET /v1/benefit-grants/`: Polar's paginated BenefitGrant list, filtered by
//! customer, external customer id, benefit and `is_granted`.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};

fn sort_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "created_at" => "g.created_at",
        "granted_at" => "(g.snapshot ->> 'granted_at')::timestamptz",
        "revoked_at" => "(g.snapshot ->> 'revoked_at')::timestamptz",
        _ => return None,
    })
}

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let page = params.page()?;
    let order = params.sorting(&["-created_at"], sort_column)?;
    let customer_ids = params.list("customer_id");
    let external_ids = params.list("external_customer_id");
    let benefit_ids = params.list("benefit_id");
    let is_granted = params.boolean("is_granted")?;

    let filter = "
        where ($1::text[] is null or g.customer_id = any($1))
          and ($2::text[] is null or g.customer_id in (
                select c.id from projection.customers c where c.external_id = any($2)))
          and ($3::text[] is null or g.benefit_id = any($3))
          and ($4::boolean is null or g.is_granted = $4)";
    let total: i64 = sqlx::query_scalar(&format!(
        "select count(*) from projection.benefit_grants g {filter}"
    ))
    .bind(&customer_ids)
    .bind(&external_ids)
    .bind(&benefit_ids)
    .bind(is_granted)
    .fetch_one(&state.pool)
    .await?;
    let items: String = sqlx::query_scalar(&format!(
        "select coalesce(jsonb_agg(snapshot order by position), '[]'::jsonb)::text from (
             select g.snapshot, row_number() over (order by {order}, g.id) as position
             from projection.benefit_grants g {filter}
             order by {order}, g.id
             limit $5 offset $6
         ) page"
    ))
    .bind(&customer_ids)
    .bind(&external_ids)
    .bind(&benefit_ids)
    .bind(is_granted)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_one(&state.pool)
    .await?;
    Ok(json_text(format!(
        r#"{{"items":{items},"pagination":{}}}"#,
        page.pagination_json(total)
    )))
}
