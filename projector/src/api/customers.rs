//! `GET /v1/customers/{id}/state` and `GET /v1/customers/external/{external_id}/state`:
//! Polar's CustomerState, the customer with its active subscriptions, granted
//! benefits and active meters. Unknown and deleted customers are 404.
//! `wait_for=active_subscription` makes it a waiting read (see
//! [`super::waiters`]).

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse as _, Response};

use super::customer_ref::CustomerRef;
use super::params::QueryParams;
use super::waiters::{Wait, Waited, wait_until};
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
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&state, CustomerRef::Id(&id), query.as_deref()).await
}

pub async fn state_by_external_id(
    State(state): State<ApiState>,
    Path(external_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(
        &state,
        CustomerRef::External(&external_id),
        query.as_deref(),
    )
    .await
}

/// The state, or with `wait_for=active_subscription&timeout_ms=` (for an
/// app's success page) the state as soon as it lists an active
/// subscription, or at the timeout as it is then (404 if the customer does
/// not exist yet).
async fn answer(
    state: &ApiState,
    whose: CustomerRef<'_>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let Some(wait) = Wait::parse(&params, &[("active_subscription", true)])? else {
        return read(state, whose)
            .await?
            .map(|(_, text, _)| json_text(text))
            .ok_or(ApiError::NotFound);
    };
    let own_key = whose.key();
    wait_until(state, wait, vec![own_key.clone()], || async {
        let found = read(state, whose).await?;
        let mut keys = vec![own_key.clone()];
        Ok(match found {
            Some((id, text, active)) => {
                if matches!(whose, CustomerRef::External(_)) {
                    keys.push(CustomerRef::Id(&id).key());
                }
                Waited {
                    done: active,
                    response: json_text(text),
                    keys,
                }
            }
            None => Waited {
                done: false,
                response: ApiError::NotFound.into_response(),
                keys,
            },
        })
    })
    .await
}

/// The live customer's id, its state, and whether the state lists an
/// active subscription. The console shows the state through this too.
pub(crate) async fn read(
    state: &ApiState,
    whose: CustomerRef<'_>,
) -> Result<Option<(String, String, bool)>, ApiError> {
    let (filter, value) = whose.condition();
    let sql = format!(
        "select c.id, {STATE_COLUMNS},
                exists (select 1 from projection.effective_subscriptions e where e.customer_id = c.id)
         from projection.customers c
         where {filter} and c.deleted_at is null
         order by c.id limit 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(value)
        .fetch_optional(&state.pool)
        .await?)
}
