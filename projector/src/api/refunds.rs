//! `GET /v1/refunds/`: every refund, from its webhooks. `succeeded` means
//! the refund's status is `succeeded`.

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Listing, customer_filters, organization_matches};
use super::polar_query::PolarQuery;
use super::served::Served;
use super::version::ApiVersion;
use super::{ApiError, ApiState};

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Refunds, "r");
    customer_filters(&mut list, &mut query, "r.customer_id");
    for (name, column) in [
        ("id", "r.id"),
        ("order_id", "r.order_id"),
        ("subscription_id", "r.subscription_id"),
    ] {
        list.any_of(column, query.uuids(name));
    }
    if let Some(succeeded) = query.boolean("succeeded") {
        list.filter(format!(
            "(r.status = 'succeeded') = {}",
            if succeeded { "true" } else { "false" }
        ));
    }
    let sorting = query.sorting(&["created_at", "amount"], &["-created_at"]);
    list.sort(&sorting, |property| match property {
        "amount" => "r.amount".to_owned(),
        _ => "r.created_at".to_owned(),
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
