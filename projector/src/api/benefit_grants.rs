//! `GET /v1/benefit-grants/` and `GET /v1/benefits/{id}/grants`: Polar's
//! `BenefitGrant`s (the webhook's object without `previous_properties`).
//!
//! The organization's list filters by customer, external customer id and
//! `is_granted`; hookstream adds `benefit_id` and `member_id` (a member's
//! grants), which Polar's list does not have. A benefit's grants filter by
//! `is_granted`, customer and member, newest first, and answer 404 for an
//! unknown benefit.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Bind, Listing, customer_filters, organization_matches};
use super::polar_query::{Criterion, PolarQuery};
use super::served::Served;
use super::version::ApiVersion;
use super::{ApiError, ApiState};

fn sort_key(property: &str) -> String {
    match property {
        "granted_at" => "g.granted_at",
        "revoked_at" => "g.revoked_at",
        _ => "g.created_at",
    }
    .to_owned()
}

fn is_granted(list: &mut Listing, query: &mut PolarQuery) {
    if let Some(granted) = query.boolean("is_granted") {
        let p = list.bind(Bind::Bool(granted));
        list.filter(format!("g.is_granted = {p}"));
    }
}

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::BenefitGrants, "g");
    customer_filters(&mut list, &mut query, "g.customer_id");
    is_granted(&mut list, &mut query);
    list.any_of("g.benefit_id", query.texts("benefit_id"));
    list.any_of("g.member_id", query.texts("member_id"));
    let sorting = query.sorting(
        &["created_at", "granted_at", "revoked_at"],
        &["-created_at"],
    );
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

pub async fn of_benefit(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let benefit = query.path_uuid(&id, "id", false);
    let page = query.page();
    let mut list = Listing::of(Table::BenefitGrants, "g");
    let p = list.bind(Bind::Text(benefit.clone().unwrap_or_default()));
    list.filter(format!("g.benefit_id = {p}"));
    is_granted(&mut list, &mut query);
    list.any_of("g.customer_id", query.uuids("customer_id"));
    list.any_of("g.member_id", query.uuids("member_id"));
    list.sort(
        &[Criterion {
            property: "created_at",
            descending: true,
        }],
        sort_key,
    );
    query.finish()?;
    let known: bool =
        sqlx::query_scalar("select exists (select 1 from projection.benefits where id = $1)")
            .bind(&benefit)
            .fetch_one(&state.pool)
            .await?;
    if !known {
        return Err(ApiError::NotFound);
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
