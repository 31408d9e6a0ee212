//! `GET /v1/benefit-grants/`: Polar's paginated BenefitGrant list, filtered by
//! customer, external customer id, benefit, member and `is_granted`.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::list::{Arg, List};
use super::params::QueryParams;
use super::{ApiError, ApiState};

fn sort_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "created_at" => "g.created_at",
        "granted_at" => "g.granted_at",
        "revoked_at" => "g.revoked_at",
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
    let member_ids = params.list("member_id");

    List {
        from: "projection.benefit_grants g",
        item: "g.snapshot",
        key: "g.id",
        filter: "
        where ($1::text[] is null or g.customer_id = any($1))
          and ($2::text[] is null or g.customer_id in (
                select c.id from projection.customers c where c.external_id = any($2)))
          and ($3::text[] is null or g.benefit_id = any($3))
          and ($4::boolean is null or g.is_granted = $4)
          and ($5::text[] is null or g.member_id = any($5))",
        order,
        args: vec![
            Arg::Texts(customer_ids),
            Arg::Texts(external_ids),
            Arg::Texts(benefit_ids),
            Arg::Flag(is_granted),
            Arg::Texts(member_ids),
        ],
    }
    .page(&state.pool, page)
    .await
}
