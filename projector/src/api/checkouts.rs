//! `GET /v1/checkouts/` and `/v1/checkouts/{id}`. `external_customer_id`
//! goes through the checkout's customer; `query` matches the customer email
//! the checkout was given (a LIKE pattern, in any case).

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Bind, Listing, customer_filters, one_or_not_found, organization_matches};
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState};

const STATUSES: &[&str] = &["open", "expired", "confirmed", "succeeded", "failed"];

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Checkouts, "k");
    customer_filters(&mut list, &mut query, "k.customer_id");
    list.any_of("k.product_id", query.uuids("product_id"));
    list.any_of("k.status", query.enums("status", STATUSES));
    if let Some(text) = query.last("query") {
        let p = list.bind(Bind::Text(format!("%{text}%")));
        list.filter(format!("k.customer_email ilike {p}"));
    }
    let sorting = query.sorting(&["created_at", "expires_at", "status"], &["-created_at"]);
    list.sort(&sorting, |property| match property {
        "expires_at" => "k.expires_at".to_owned(),
        "status" => "k.status collate \"C\"".to_owned(),
        _ => "k.created_at".to_owned(),
    });
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

pub async fn get_one(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(&id, "id", false);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(
        "select id, v_at, snapshot::text as snapshot from projection.checkouts where id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(Table::Checkouts, row)
        .await?,
    )
}
