//! `GET /v1/entitlements/check`: the feature gate's hot path. Does this
//! customer hold this benefit right now? One index probe on the materialised
//! effective grants.
//!
//! Unknown and deleted customers are simply not entitled (200, `granted:
//! false`, `customer_id: null`): a gate should not need to tell the two apart.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};

pub async fn check(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let benefit_id = params
        .one("benefit_id")?
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::invalid("benefit_id", "is required"))?;
    let customer_id = params.one("customer_id")?.filter(|c| !c.is_empty());
    let external_id = params
        .one("external_customer_id")?
        .filter(|c| !c.is_empty());
    let row: Option<(String, bool)> = match (customer_id, external_id) {
        (Some(id), None) => {
            sqlx::query_as(
                "select c.id, exists (select 1 from projection.effective_grants e
                                      where e.customer_id = c.id and e.benefit_id = $2)
                 from projection.customers c
                 where c.id = $1 and c.deleted_at is null",
            )
            .bind(id)
            .bind(benefit_id)
            .fetch_optional(&state.pool)
            .await?
        }
        (None, Some(external_id)) => {
            sqlx::query_as(
                "select c.id, exists (select 1 from projection.effective_grants e
                                      where e.customer_id = c.id and e.benefit_id = $2)
                 from projection.customers c
                 where c.external_id = $1 and c.deleted_at is null
                 order by c.id limit 1",
            )
            .bind(external_id)
            .bind(benefit_id)
            .fetch_optional(&state.pool)
            .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "customer_id",
                "give exactly one of customer_id and external_customer_id",
            ));
        }
    };
    let answer = match row {
        Some((customer_id, granted)) => serde_json::json!({
            "granted": granted, "customer_id": customer_id, "benefit_id": benefit_id,
        }),
        None => {
            serde_json::json!({"granted": false, "customer_id": null, "benefit_id": benefit_id})
        }
    };
    Ok(json_text(answer.to_string()))
}
