//! Polar's members of a customer, as polar-sdk 1.0.x asks for them:
//! `GET /v1/customers/{id}/members` and `/v1/customers/external/{id}/members`
//! (404 for an unknown or deleted customer; `role`; newest first), one member
//! by id (`/v1/customers/{id}/members/{member_id}`) or by external id
//! (`/v1/customers/external/{id}/members/{member_external_id}`), and the
//! organization-wide `GET /v1/members/` Polar has deprecated. Deleted members
//! are not served. An individual customer's owner member carries the
//! customer's current email, as Polar copies it (see [`super::served`]).

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse as _, Response};

use crate::projection::families::Table;

use super::customer_ref::CustomerRef;
use super::listing::{Bind, Listing, customer_filters, one_or_not_found};
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState};

const ROLES: &[&str] = &["owner", "billing_manager", "member"];

/// Members in a list, by `role` (one) and sorted by creation.
fn members(query: &mut PolarQuery) -> Listing {
    let mut list = Listing::of(Table::Members, "m");
    list.filter("m.deleted_at is null");
    if let Some(role) = query.enum_one("role", ROLES) {
        let p = list.bind(Bind::Text(role));
        list.filter(format!("m.role = {p}"));
    }
    let sorting = query.sorting(&["created_at"], &["-created_at"]);
    list.sort(&sorting, |_| "m.created_at".to_owned());
    list
}

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let mut list = members(&mut query);
    // Polar deletes a customer's members before the customer; a member
    // whose deletion is still on its way is not listed either.
    list.filter(
        "not exists (select 1 from projection.customers c
                     where c.id = m.customer_id and c.deleted_at is not null)",
    );
    customer_filters(&mut list, &mut query, "m.customer_id");
    query.finish()?;
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

pub async fn of_customer(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let id = query.path_uuid(&id, "id", false).unwrap_or_default();
    customer_members(&state, version, CustomerRef::Id(&id), query).await
}

pub async fn of_external_customer(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(external_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = PolarQuery::parse(raw.as_deref());
    customer_members(&state, version, CustomerRef::External(&external_id), query).await
}

async fn customer_members(
    state: &ApiState,
    version: ApiVersion,
    whose: CustomerRef<'_>,
    mut query: PolarQuery,
) -> Result<Response, ApiError> {
    let page = query.page();
    let mut list = members(&mut query);
    query.finish()?;
    let customer = live_customer(state, whose)
        .await?
        .ok_or(ApiError::NotFound)?;
    let p = list.bind(Bind::Text(customer));
    list.filter(format!("m.customer_id = {p}"));
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

/// The live customer's id.
async fn live_customer(
    state: &ApiState,
    whose: CustomerRef<'_>,
) -> Result<Option<String>, ApiError> {
    let (filter, value) = whose.condition();
    Ok(sqlx::query_scalar(&format!(
        "select c.id from projection.customers c
         where {filter} and c.deleted_at is null order by c.id limit 1"
    ))
    .bind(value)
    .fetch_optional(&state.pool)
    .await?)
}

/// Polar's 404 for a member.
fn member_not_found() -> Response {
    ApiError::NotFoundWith("Member not found").into_response()
}

/// A live member of a live customer: a deleted customer's members are gone
/// with it, whether or not their own deletion has been seen.
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path((customer_id, member_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let customer_id = query.path_uuid(&customer_id, "id", false);
    let member_id = query.path_uuid(&member_id, "member_id", true);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(
        "select m.id, m.v_at, m.snapshot::text as snapshot from projection.members m
         join projection.customers c on c.id = m.customer_id and c.deleted_at is null
         where m.id = $2 and m.customer_id = $1 and m.deleted_at is null",
    )
    .bind(customer_id)
    .bind(member_id)
    .fetch_optional(&state.pool)
    .await?;
    match (Served {
        pool: &state.pool,
        version,
    })
    .one(Table::Members, row)
    .await?
    {
        Some(member) => one_or_not_found(Some(member)),
        None => Ok(member_not_found()),
    }
}

pub async fn get_external(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path((external_id, member_external_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(customer) = live_customer(&state, CustomerRef::External(&external_id)).await? else {
        return Ok(member_not_found());
    };
    let row: Option<Stored> = sqlx::query_as(
        "select m.id, m.v_at, m.snapshot::text as snapshot from projection.members m
         where m.customer_id = $1 and m.external_id = $2 and m.deleted_at is null
         order by m.created_at, m.id limit 1",
    )
    .bind(customer)
    .bind(member_external_id)
    .fetch_optional(&state.pool)
    .await?;
    match (Served {
        pool: &state.pool,
        version,
    })
    .one(Table::Members, row)
    .await?
    {
        Some(member) => one_or_not_found(Some(member)),
        None => Ok(member_not_found()),
    }
}
