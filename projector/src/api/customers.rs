//! `GET /v1/customers/{id}/state` and `GET /v1/customers/external/{external_id}/state`:
//! Polar's CustomerState, the customer with its active subscriptions, granted
//! benefits and active meters. Unknown and deleted customers are 404.

use axum::extract::{Path, State};
use axum::response::Response;

use super::{ApiError, ApiState, json_text};

/// The customer snapshot with the three lists added, as one JSON text. The
/// lists come from the materialised effective rows, ordered by creation.
const STATE_COLUMNS: &str = "
    (c.snapshot || jsonb_build_object(
        'active_subscriptions', coalesce(
            (select jsonb_agg(e.item order by e.created_at, e.subscription_id)
             from projection.effective_subscriptions e where e.customer_id = c.id), '[]'::jsonb),
        'granted_benefits', coalesce(
            (select jsonb_agg(
                        -- the benefit as it is now, if we have it
                        e.item || jsonb_build_object(
                            'benefit_type', coalesce(b.snapshot -> 'type', e.item -> 'benefit_type'),
                            'benefit_metadata', coalesce(b.snapshot -> 'metadata', e.item -> 'benefit_metadata'))
                        order by e.created_at, e.grant_id)
             from projection.effective_grants e
             left join projection.benefits b on b.id = e.benefit_id
             where e.customer_id = c.id), '[]'::jsonb),
        'active_meters', coalesce(
            (select s.snapshot -> 'active_meters'
             from projection.customer_states s where s.customer_id = c.id), '[]'::jsonb)
    ))::text";

pub async fn state_by_id(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sql = format!(
        "select {STATE_COLUMNS} from projection.customers c where c.id = $1 and c.deleted_at is null"
    );
    let text: Option<String> = sqlx::query_scalar(&sql)
        .bind(&id)
        .fetch_optional(&state.pool)
        .await?;
    text.map(json_text).ok_or(ApiError::NotFound)
}

pub async fn state_by_external_id(
    State(state): State<ApiState>,
    Path(external_id): Path<String>,
) -> Result<Response, ApiError> {
    // Polar keeps external ids unique among live customers; while events are
    // still arriving two may briefly share one, so pick deterministically.
    let sql = format!(
        "select {STATE_COLUMNS} from projection.customers c
         where c.external_id = $1 and c.deleted_at is null
         order by c.id limit 1"
    );
    let text: Option<String> = sqlx::query_scalar(&sql)
        .bind(&external_id)
        .fetch_optional(&state.pool)
        .await?;
    text.map(json_text).ok_or(ApiError::NotFound)
}
