//! Polar's members of a customer, as polar-sdk 1.0.2 (API 2026-10) asks for
//! them: `GET /v1/customers/{id}/members`, `/v1/customers/external/{id}/members`
//! (404 for an unknown or deleted customer, `role` filter) and
//! `/v1/customers/{id}/members/{member_id}`; and `GET /v1/members/?customer_id=
//! &external_customer_id=`, the organization-wide list. Deleted members, and
//! the members of deleted customers, are not listed, as in Polar.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use super::customer_ref::CustomerRef;
use super::list::{Arg, List};
use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};

fn sort_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "created_at" => "m.created_at",
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
        from: "projection.members m",
        item: "m.snapshot",
        key: "m.id",
        filter: "
        where m.deleted_at is null
          and not exists (select 1 from projection.customers c
                          where c.id = m.customer_id and c.deleted_at is not null)
          and ($1::text[] is null or m.customer_id = any($1))
          and ($2::text[] is null or m.customer_id in (
                select c.id from projection.customers c where c.external_id = any($2)))",
        order: params.sorting(&["created_at"], sort_column)?,
        args: vec![
            Arg::Texts(params.list("customer_id")),
            Arg::Texts(params.list("external_customer_id")),
        ],
    }
    .page(&state.pool, page)
    .await
}

pub async fn of_customer(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    customer_members(&state, CustomerRef::Id(&id), query.as_deref()).await
}

pub async fn of_external_customer(
    State(state): State<ApiState>,
    Path(external_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    customer_members(
        &state,
        CustomerRef::External(&external_id),
        query.as_deref(),
    )
    .await
}

async fn customer_members(
    state: &ApiState,
    whose: CustomerRef<'_>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let page = params.page()?;
    let order = params.sorting(&["-created_at"], sort_column)?;
    let roles = params.list("role");
    let (filter, value) = whose.condition();
    let customer: Option<String> = sqlx::query_scalar(&format!(
        "select c.id from projection.customers c
         where {filter} and c.deleted_at is null order by c.id limit 1"
    ))
    .bind(value)
    .fetch_optional(&state.pool)
    .await?;
    let customer = customer.ok_or(ApiError::NotFound)?;
    List {
        from: "projection.members m",
        item: "m.snapshot",
        key: "m.id",
        filter: "
        where m.deleted_at is null and m.customer_id = any($1)
          and ($2::text[] is null or m.role = any($2))",
        order,
        args: vec![Arg::Texts(Some(vec![customer])), Arg::Texts(roles)],
    }
    .page(&state.pool, page)
    .await
}

pub async fn get_one(
    State(state): State<ApiState>,
    Path((customer_id, member_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let text: Option<String> = sqlx::query_scalar(
        "select m.snapshot::text from projection.members m
         join projection.customers c on c.id = m.customer_id and c.deleted_at is null
         where m.id = $2 and m.customer_id = $1 and m.deleted_at is null",
    )
    .bind(&customer_id)
    .bind(&member_id)
    .fetch_optional(&state.pool)
    .await?;
    text.map(json_text).ok_or(ApiError::NotFound)
}
