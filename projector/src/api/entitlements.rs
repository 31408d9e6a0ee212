//! `GET /v1/entitlements/check`: the feature gate's hot path. Does this
//! customer hold this benefit right now? Answered from the replica's
//! [`EntitlementCache`](super::EntitlementCache) when it can be, else by one
//! query for all of the customer's granted benefits, which is then cached.
//!
//! Unknown and deleted customers are simply not entitled (200, `granted:
//! false`, `customer_id: null`): a gate should not need to tell the two apart.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use std::sync::Arc;

use super::entitlement_cache::{Cached, CustomerEntitlements, Lookup};
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
    let lookup = match (customer_id, external_id) {
        (Some(id), None) => Key::Id(id),
        (None, Some(external_id)) => Key::External(external_id),
        _ => {
            return Err(ApiError::invalid(
                "customer_id",
                "give exactly one of customer_id and external_customer_id",
            ));
        }
    };
    let cached = match lookup {
        Key::Id(id) => state.cache.by_id(id),
        Key::External(external_id) => state.cache.by_external_id(external_id),
    };
    let customer = match cached {
        Lookup::Hit(customer) => {
            state.metrics.cache_hits.inc();
            customer
        }
        Lookup::Miss { epoch } => {
            state.metrics.cache_misses.inc();
            let customer = load(&state, lookup).await?;
            let (by_external, by_id) = match lookup {
                Key::Id(id) => (None, Some(id)),
                Key::External(external_id) => (Some(external_id), None),
            };
            state
                .cache
                .fill(epoch, by_external, by_id, customer.clone());
            customer
        }
    };
    let answer = match customer {
        Some(c) => serde_json::json!({
            "granted": c.benefits.contains(benefit_id), "customer_id": c.customer_id, "benefit_id": benefit_id,
        }),
        None => {
            serde_json::json!({"granted": false, "customer_id": null, "benefit_id": benefit_id})
        }
    };
    Ok(json_text(answer.to_string()))
}

#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Id(&'a str),
    External(&'a str),
}

/// Every benefit a live customer holds, in one query.
async fn load(state: &ApiState, key: Key<'_>) -> Result<Cached, ApiError> {
    const COLUMNS: &str = "select c.id,
            coalesce(array_agg(distinct e.benefit_id) filter (where e.benefit_id is not null), '{}')
         from projection.customers c
         left join projection.effective_grants e on e.customer_id = c.id";
    let row: Option<(String, Vec<String>)> = match key {
        Key::Id(id) => {
            sqlx::query_as(&format!("{COLUMNS} where c.id = $1 and c.deleted_at is null group by c.id"))
                .bind(id)
                .fetch_optional(&state.pool)
                .await?
        }
        // Polar keeps external ids unique among live customers; while events
        // are still arriving two may briefly share one, so pick deterministically.
        Key::External(external_id) => {
            sqlx::query_as(&format!(
                "{COLUMNS} where c.external_id = $1 and c.deleted_at is null group by c.id order by c.id limit 1"
            ))
            .bind(external_id)
            .fetch_optional(&state.pool)
            .await?
        }
    };
    Ok(row.map(|(customer_id, benefits)| {
        Arc::new(CustomerEntitlements {
            customer_id,
            benefits: benefits.into_iter().collect(),
        })
    }))
}
