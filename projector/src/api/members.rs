//! `GET /v1/members/`: Polar's paginated Member list, filtered by customer or
//! external customer id. Deleted members, and the members of deleted
//! customers, are not listed, as in Polar.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::list::{Arg, List};
use super::params::QueryParams;
use super::{ApiError, ApiState};

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
